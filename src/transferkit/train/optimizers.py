"""The fine-tuning optimizer: AdamW, warmup then cosine decay, a lower rate for each block further down.

Keras 3 optimizers take one learning rate for every variable. Scaling the
gradients would not give a group its own rate under Adam (its update divides
the gradient by its own running magnitude, so a scale cancels out); instead
LayerwiseAdamW multiplies the *rate* of each variable's update by its group's
factor: layer_decay ** depth, where depth is the block's place counted from
the top (the head and the top block 0, the block below 1, ...).
"""

from __future__ import annotations

import keras


class LayerwiseAdamW(keras.optimizers.AdamW):
    """AdamW whose rate is multiplied, per variable, by `multipliers[variable.path]` (default 1)."""

    def __init__(self, multipliers: dict[str, float] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.multipliers = dict(multipliers or {})
        self._scale_by_key: dict = {}

    def build(self, var_list):
        super().build(var_list)
        self._scale_by_key = {self._var_key(v): float(self.multipliers.get(v.path, 1.0)) for v in var_list}

    def update_step(self, gradient, variable, learning_rate):
        scale = self._scale_by_key.get(self._var_key(variable), 1.0)
        if scale != 1.0:
            learning_rate = keras.ops.multiply(keras.ops.cast(learning_rate, variable.dtype), scale)
        return super().update_step(gradient, variable, learning_rate)


class Shifted(keras.optimizers.schedules.LearningRateSchedule):
    """`schedule` from step `offset` on: a fresh optimizer (gradual unfreezing) continues the run's schedule."""

    def __init__(self, schedule, offset: int):
        self.schedule, self.offset = schedule, int(offset)

    def __call__(self, step):
        return self.schedule(keras.ops.add(step, self.offset))

    def get_config(self):
        return {"schedule": keras.optimizers.schedules.serialize(self.schedule), "offset": self.offset}


def warmup_cosine(peak: float, total_steps: int, warmup: float, offset: int = 0):
    """Linear warmup from 0 over `warmup` of the steps, then cosine decay to 0 at `total_steps`."""
    warmup_steps = int(round(total_steps * warmup))
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else peak, decay_steps=max(1, total_steps - warmup_steps),
        alpha=0.0, warmup_target=peak if warmup_steps else None, warmup_steps=warmup_steps)
    return Shifted(schedule, offset) if offset else schedule


def layer_multipliers(depths: dict[str, int], decay: float) -> dict[str, float]:
    """Variable path -> decay ** depth (depth from blocks.depth_of_variables)."""
    return {path: decay ** depth for path, depth in depths.items()}


def make_optimizer(recipe, total_steps: int, depths: dict[str, int], offset: int = 0) -> LayerwiseAdamW:
    """The recipe's optimizer; `offset`: steps already taken by an earlier optimizer of the same run."""
    return LayerwiseAdamW(
        multipliers=layer_multipliers(depths, recipe.layer_decay),
        learning_rate=warmup_cosine(recipe.learning_rate, total_steps, recipe.warmup, offset),
        weight_decay=recipe.weight_decay, global_clipnorm=recipe.clip_norm)


def compile_finetune(model, optimizer, label_smoothing: float) -> None:
    """One-hot labels (label smoothing needs them), accuracy as `accuracy` like the head's."""
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )
