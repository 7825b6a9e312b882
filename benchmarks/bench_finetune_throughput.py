"""Fine-tuning throughput: training images/s with every block trainable over the bare forward's images/s.

Same network (efficientnet_lite0 + a linear head), same image size and batch,
the same in-memory batch (decoding excluded on both sides), float32, measured
side by side: the rounds interleave the sides and the medians are compared.
A backward pass costs about twice a forward, so about 0.33 is the physical
expectation.

Each round times every step on its own (a callback inside one fit() call for
training, each call for the forward) and keeps the median step: a fit() call
now and then pays a stall of several seconds (a retrace or a thread-pool
wake-up), which, spread over a whole call, halved some rounds' figures.

Sides:
- forward: the model's forward pass in a tf.function (training=False);
- before issue 9: the fine-tune trainer as main had it (every layer but
  BatchNorm trainable, Adam, random flip + translation + zoom in the model);
- recipe: today's trainer with every block trainable (blocks.py), AdamW with
  per-block rates, global clip, label smoothing, the same augmentation;
- recipe, no augmentation: the same without the random transforms (what
  the augmentation layers cost).

    python benchmarks/bench_finetune_throughput.py [--image-size 128] [--batch 32] [--steps 12] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time

import common


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12, help="timed steps (batches) per side and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    common.header("fine-tuning throughput: training images/s (every block trainable) / forward images/s")

    import keras
    import numpy as np
    import tensorflow as tf

    from transferkit.backbones.build import build_backbone
    from transferkit.config import FinetuneParams, HeadParams
    from transferkit.deliver.published import assemble
    from transferkit.seeding import seed_everything
    from transferkit.train.blocks import block_groups, depth_of_variables, set_trainable_blocks
    from transferkit.train.optimizers import compile_finetune, make_optimizer
    from transferkit.train.recipe import Facts, resolve
    from transferkit.train.train_head import build_head

    size, batch, n_classes = args.image_size, args.batch, 10
    seed_everything(0)
    rng = np.random.default_rng(0)
    images = tf.constant(rng.integers(0, 256, size=(batch, size, size, 3)).astype(np.float32))
    labels = rng.integers(0, n_classes, size=batch).astype(np.int32)
    print(f"efficientnet_lite0 at {size} px, batch {batch}, {args.steps} steps per measurement, float32", flush=True)

    def make_model():
        backbone = build_backbone("efficientnet_lite0", "imagenet", size)
        return backbone, assemble(backbone, build_head(1280, n_classes, HeadParams()), size)

    def with_augmentation(model, flip=True):
        inputs = keras.Input((size, size, 3), name="image")
        x = inputs
        if flip:
            x = keras.layers.RandomFlip("horizontal", seed=0)(x)
        x = keras.layers.RandomTranslation(0.1, 0.1, fill_mode="nearest", seed=1)(x)
        x = keras.layers.RandomZoom(0.1, fill_mode="nearest", seed=2)(x)
        return keras.Model(inputs, model(x))

    # forward
    _, forward_model = make_model()
    forward = tf.function(lambda x: forward_model(x, training=False))
    forward(images)

    def forward_rate() -> float:
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            forward(images).numpy()
            times.append(time.perf_counter() - start)
        return batch / common.median(times)

    # before issue 9: every layer but BatchNorm trainable, Adam, flip/translate/zoom
    old_backbone, old_model = make_model()
    old_backbone.trainable = True
    for layer in old_backbone.layers:
        layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
    old = with_augmentation(old_model)
    old.compile(keras.optimizers.Adam(1e-4), keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    old_data = tf.data.Dataset.from_tensors((images, labels)).repeat()

    # the recipe, every block trainable
    def recipe_trainer(augment: bool):
        backbone, model = make_model()
        n_blocks = len(block_groups(backbone))
        recipe = resolve(FinetuneParams(strategy="full", epochs=1, flip=augment, translate=0.1 if augment else 0.0,
                                        zoom=0.1 if augment else 0.0), Facts(100, 0.5, n_blocks, 300), lambda: None)
        set_trainable_blocks(backbone, n_blocks)
        trainer = with_augmentation(model) if augment else model
        compile_finetune(trainer, make_optimizer(recipe, 1000, depth_of_variables(backbone)), recipe.label_smoothing)
        return trainer

    new, bare = recipe_trainer(True), recipe_trainer(False)
    new_data = tf.data.Dataset.from_tensors((images, tf.one_hot(labels, n_classes))).repeat()

    class StepTimes(keras.callbacks.Callback):
        """The wall time of every step after the first (which includes starting the epoch)."""

        def on_epoch_begin(self, epoch, logs=None):
            self.ends = []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

    def train_rate(trainer, data):
        def run() -> float:
            timer = StepTimes()
            trainer.fit(data, steps_per_epoch=args.steps + 1, epochs=1, verbose=0, callbacks=[timer], shuffle=False)
            return batch / common.median(list(np.diff(timer.ends)))
        return run

    sides = {"forward": forward_rate, "before": train_rate(old, old_data), "recipe": train_rate(new, new_data),
             "recipe_noaug": train_rate(bare, new_data)}
    for fn in sides.values():  # warm-up: traces the graphs
        fn()
    figures = common.interleaved(sides, args.rounds)
    med = {name: common.median(values) for name, values in figures.items()}
    print(f"forward: {med['forward']:.1f} images/s")
    for name in ("before", "recipe", "recipe_noaug"):
        print(f"{name:13s} training {med[name]:.1f} images/s = {med[name] / med['forward']:.3f} of the forward")
    common.ratio_line("finetune_throughput", med["recipe"] / med["forward"], ">= 0.25",
                      med["recipe"] / med["forward"] >= 0.25)


if __name__ == "__main__":
    main()
