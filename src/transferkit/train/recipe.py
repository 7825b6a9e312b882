"""How to fine-tune, decided from the data: the strategy, its depth, epochs, rates and augmentation.

`resolve` measures nothing itself: finetune hands it the facts (labelled
images per class, how well the frozen features already separate the classes,
what a left-right flip does to the head's val accuracy) and it returns the
Recipe, with the reason for each choice. Knobs set in params.yaml are used
as written; knobs left null are filled from the table below, for the case the
data falls in (the README shows the same table):

| case (per class, head val accuracy) | strategy | blocks      | epochs | rate | layer decay |
|-------------------------------------|----------|-------------|--------|------|-------------|
| small (< 1000) and similar (>= 0.95) | head     | none        | 0      |      |             |
| small and different (< 0.95)         | top      | 2/3 of them | 12     | 5e-4 | 0.80        |
| large (>= 1000) and similar          | top      | 1/3 of them | 4      | 2e-4 | 0.90        |
| large and different                  | full     | all         | 4      | 5e-4 | 0.85        |

The budget: the table's epochs are a floor. A fine-tune gets at least
`finetune.min_steps` optimizer steps whatever the dataset size: epochs =
max(table epochs, ceil(min_steps / steps per epoch)), so 500 images get
at least min_steps (the table's epochs alone give them a tenth of what
5,000 get). Sets large
enough for the table's epochs to pass the floor are not slowed: it is a
floor, never a cap. Left null, min_steps is MIN_STEPS by modality (800
image steps, 400 text steps); a number applies to both. An explicit
`finetune.epochs` wins over both. Early
stopping waits half the planned epochs (at least 3) unless
`finetune.patience` is set: with a patience of 3 the longer runs stopped
while the cosine schedule still had a high rate and published worse epochs.

Every case then gets: warmup over the first 10% of the steps, cosine decay
to zero, AdamW (weight decay 0.01), label smoothing 0.1, global gradient-norm
clip 1.0, random translation and zoom of 10%, no random erasing, and the
left-right flip only if it costs the head less than 3 points of val accuracy
on flipped val images.
Budgets are epochs, never wall time, so a run is the same on any machine.

Text (a text backbone: whole blocks are the embeddings and each transformer
layer, 7 for all-MiniLM-L6-v2) has its own rates, those that suit a
pretrained transformer (peak rates far below the CNN's; BERT fine-tuning
uses 2e-5..1e-4), and no augmentation at all: flip, translate, zoom and
erase are image transforms, never applied to text (set or not).

| text case                 | strategy | blocks      | epochs | rate | layer decay |
|---------------------------|----------|-------------|--------|------|-------------|
| small and similar         | head     | none        | 0      |      |             |
| small and different       | top      | 1/3 of them | 3      | 1e-4 | 0.80        |
| large and similar         | top      | 1/3 of them | 2      | 5e-5 | 0.90        |
| large and different       | full     | all         | 2      | 5e-5 | 0.85        |

Text's warmup, weight decay, label smoothing and clipping are the shared ones,
and the step floor applies as to images, its steps counted in text batches
(at most `finetune.batch_size` windows each: Facts.steps_per_epoch). Left
null, the floor is MIN_STEPS[modality]: 800 image steps, 400 text steps (a
text step costs 10-50x an image step on CPU; see MIN_STEPS).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

SMALL_PER_CLASS = 1000  # fewer labelled (train) images per class than this: "small"
# Head val accuracy on the frozen features at least this: "similar", and the head alone is published. Below
# it, fine-tuning has errors left to fix: Fashion-MNIST at 224 px scored 0.894 on val through the head, and
# fine-tuning still bought 3.7 points on test (benchmarks/README.md); "do no harm" keeps the head when a
# fine-tune does not pay, so a fine-tune too many costs epochs, a head-only call too many costs accuracy.
SIMILAR_ACCURACY = 0.95
FLIP_TOLERANCE = 0.03  # a flip that costs the head more val accuracy than this changes what images mean
# finetune.patience null: early stopping waits this share of the planned epochs, and at least MIN_PATIENCE.
# Measured with a step floor (issue 20, 2026-12-06): a fixed patience of 3 stopped 4 of 5 longer runs while
# the cosine rate was still high, and they published worse epochs (digits, 12 epochs: 0.964 stopped at epoch 8
# vs 0.983 run to the end; the sample, 30 epochs: 0.825 stopped at 8 vs 0.869 run to the end). The runs that
# paid waited for most of the decay. Half the schedule lets a run end early only after a long stall, and the
# best epoch is kept either way, so waiting costs epochs, never accuracy.
PATIENCE_SHARE = 0.5
MIN_PATIENCE = 3  # epochs: what the case table's 4-6 epoch budgets used before the step floor
# finetune.min_steps null: the step floor by modality. Images: 800, measured (issue 20: digits, the sample).
# Texts: half that. A text step (32 windows of up to 256 tokens through a transformer) costs several image
# steps on 2 CPU cores (sotu's 150-token passages: 2.6 s a step, the sample's 160 px images: 0.53 s; full
# 256-token windows cost more), and the 816-step run on AFINN published epoch 9 of 16 (about 460 steps).
# benchmarks/README.md "What auto costs on text" has the measurements.
MIN_STEPS = {"image": 800, "text": 400}

CASES = {
    # case: (strategy, share of blocks, epochs, learning rate, layer decay)
    "small_similar": ("head", 0.0, 0, 5e-4, 0.8),
    # 12 epochs, not 6 (issue 20, Fashion-MNIST 10%, 160 steps an epoch): the fine-tuned model +0.76 points on
    # test and the published ensemble +0.63 (paired intervals above zero), val at its best (tied) in the last
    # epoch. Up to 2,304 train images (72 steps an epoch at batch 32) the step floor of 800 already plans 12
    # epochs or more, so only larger sets see the change.
    "small_different": ("top", 2 / 3, 12, 5e-4, 0.8),
    "large_similar": ("top", 1 / 3, 4, 2e-4, 0.9),
    "large_different": ("full", 1.0, 4, 5e-4, 0.85),
}
# Text (rates for a pretrained transformer; its blocks are few and large, so a third is 3 of 7 layers).
TEXT_CASES = {
    "small_similar": ("head", 0.0, 0, 5e-5, 0.8),
    "small_different": ("top", 1 / 3, 3, 1e-4, 0.8),
    "large_similar": ("top", 1 / 3, 2, 5e-5, 0.9),
    "large_different": ("full", 1.0, 2, 5e-5, 0.85),
}
IMAGE_AUGMENTATIONS = ("flip", "translate", "zoom", "erase")
SHARED = {"warmup": 0.1, "weight_decay": 0.01, "label_smoothing": 0.1, "clip_norm": 1.0,
          "translate": 0.1, "zoom": 0.1, "erase": 0.0}


@dataclass(frozen=True)
class Facts:
    """What the decision is made from."""
    per_class: float  # median labelled train images per class
    head_val_accuracy: float | None  # the trained head on the val embeddings (None: no val split)
    n_blocks: int  # whole blocks in the backbone
    train_images: int  # labelled train images: with the batch size, the optimizer steps an epoch
    modality: str = "image"  # image | text: text has its own rates and no augmentation
    steps_per_epoch: int | None = None  # None: train_images / batch size (text counts its batches of windows)


@dataclass
class Recipe:
    strategy: str  # head | top | full | gradual
    blocks: int  # trainable blocks at the end (0 for head)
    epochs: int
    learning_rate: float
    layer_decay: float
    warmup: float
    weight_decay: float
    label_smoothing: float
    clip_norm: float
    flip: bool
    translate: float
    zoom: float
    erase: float
    case: str
    steps_per_epoch: int = 0  # optimizer steps an epoch (train images / batch size, rounded up)
    steps: int = 0  # planned optimizer steps: epochs x steps_per_epoch (early stopping may run fewer)
    patience: int = MIN_PATIENCE  # epochs without val improvement before early stopping
    budget: str = ""  # the decision line: how many steps, and why
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def blocks_at(self, epoch: int) -> int:
        """Trainable blocks during `epoch` (gradual adds blocks from the top, epoch by epoch)."""
        if self.strategy != "gradual":
            return self.blocks
        return min(self.blocks, math.ceil((epoch + 1) * self.blocks / self.epochs))

    def phase_end(self, epoch: int) -> int:
        """One past the last epoch of `epoch`'s phase: epochs with the same trainable blocks train in one fit(),
        which Keras numbers "Epoch n/<phase end>"."""
        end = epoch + 1
        while end < self.epochs and self.blocks_at(end) == self.blocks_at(epoch):
            end += 1
        return end


def classify(facts: Facts) -> tuple[str, list[str]]:
    size = "small" if facts.per_class < SMALL_PER_CLASS else "large"
    items = "texts" if facts.modality == "text" else "images"
    reasons = [f"{facts.per_class:g} labelled train {items} per class: {size} "
               f"({'<' if size == 'small' else '>='} {SMALL_PER_CLASS})"]
    if facts.head_val_accuracy is None:
        similarity = "different"
        reasons.append("no val split to measure the frozen features on: treated as different from ImageNet")
    else:
        similarity = "similar" if facts.head_val_accuracy >= SIMILAR_ACCURACY else "different"
        reasons.append(f"the head on the frozen features scores {facts.head_val_accuracy:.3f} on val: {similarity} "
                       f"to the pretraining data ({'>=' if similarity == 'similar' else '<'} {SIMILAR_ACCURACY})")
    return f"{size}_{similarity}", reasons


def resolve(params, facts: Facts, score_flip: Callable[[], tuple[float, float] | None]) -> Recipe:
    """The recipe for these params (config.FinetuneParams) and facts.

    `score_flip()` returns (val accuracy, val accuracy on flipped images) of the
    frozen backbone + head, or None when there is no val split; it is called
    only when the flip is left to the data."""
    case, reasons = classify(facts)
    text = facts.modality == "text"
    strategy, share, epochs, rate, decay = (TEXT_CASES if text else CASES)[case]
    if params.strategy == "auto":
        reasons.append(f"auto: case {case} -> strategy {strategy}")
    else:
        strategy = params.strategy
        reasons.append(f"strategy {strategy} set in params.yaml (the data's case is {case})")
    if strategy == "head":
        blocks = 0
    elif strategy == "full":
        blocks = facts.n_blocks
    elif params.blocks:
        blocks = min(params.blocks, facts.n_blocks)
    elif strategy == "gradual":
        blocks = facts.n_blocks
    else:  # top; a case whose own strategy is head unfreezes a third
        blocks = max(1, math.ceil((share or 1 / 3) * facts.n_blocks))
    steps_per_epoch = facts.steps_per_epoch or max(1, math.ceil(facts.train_images / params.batch_size))
    epochs, budget = _budget(strategy, params, epochs or 4, steps_per_epoch, facts.modality)
    chosen = {
        "epochs": epochs,
        "learning_rate": params.learning_rate or rate,
        "layer_decay": params.layer_decay or decay,
    }
    for key, value in SHARED.items():
        if text and key in IMAGE_AUGMENTATIONS:
            chosen[key] = 0.0
        else:
            chosen[key] = getattr(params, key) if getattr(params, key) is not None else value
    patience = params.patience or max(MIN_PATIENCE, math.ceil(PATIENCE_SHARE * epochs))
    recipe = Recipe(strategy=strategy, blocks=blocks, flip=False, case=case, steps_per_epoch=steps_per_epoch,
                    steps=epochs * steps_per_epoch, patience=patience, budget=budget, reasons=reasons, **chosen)
    if strategy != "head":
        reasons.append(f"{strategy}: {blocks} of {facts.n_blocks} blocks trainable, {recipe.epochs} epochs, "
                       f"peak rate {recipe.learning_rate:g}, x{recipe.layer_decay:g} per block further down")
        reasons.append(f"budget: {budget}")
        reasons.append(f"early stopping after {patience} epochs without val improvement: " + (
            "finetune.patience set in params.yaml" if params.patience else
            f"{PATIENCE_SHARE:.0%} of the {epochs} planned (at least {MIN_PATIENCE}), so the run sees most of "
            f"the cosine decay before it may stop"))
        if text:
            ignored = [key for key in IMAGE_AUGMENTATIONS if getattr(params, key)]
            reasons.append("no augmentation: text" + (f" (finetune.{', finetune.'.join(ignored)} set in params.yaml "
                                                      f"are image transforms, ignored)" if ignored else ""))
        else:
            recipe.flip = _decide_flip(params.flip, score_flip, reasons)
    return recipe


def _budget(strategy: str, params, table_epochs: int, steps_per_epoch: int, modality: str) -> tuple[int, str]:
    """(epochs, the decision line): the table's epochs, raised to reach finetune.min_steps; finetune.epochs wins."""
    min_steps = MIN_STEPS[modality] if params.min_steps is None else params.min_steps
    floor_name = f"finetune.min_steps {min_steps}" + (f" (the {modality} default)" if params.min_steps is None else "")
    if strategy == "head":
        return 0, "strategy head: no fine-tuning steps"
    if params.epochs:
        steps = params.epochs * steps_per_epoch
        return params.epochs, (f"{params.epochs} epochs x {steps_per_epoch} steps = {steps} steps: finetune.epochs "
                               f"set in params.yaml wins ({floor_name} not applied)")
    floor = math.ceil(min_steps / steps_per_epoch)
    table = f"the case table's {table_epochs} epochs would give {table_epochs * steps_per_epoch}"
    if floor <= table_epochs:
        return table_epochs, (f"{table_epochs} epochs x {steps_per_epoch} steps = {table_epochs * steps_per_epoch} "
                              f"steps: the case table's epochs already reach {floor_name}")
    return floor, (f"{floor} epochs x {steps_per_epoch} steps = {floor * steps_per_epoch} steps >= {floor_name}; "
                   f"{table}")


def _decide_flip(flip: bool | None, score_flip, reasons: list[str]) -> bool:
    if flip is not None:
        reasons.append(f"flip {'on' if flip else 'off'}: set in params.yaml")
        return flip
    scores = score_flip()
    if scores is None:
        reasons.append("flip off: no val split to check that a flip keeps the labels")
        return False
    plain, flipped = scores
    keep = flipped >= plain - FLIP_TOLERANCE
    reasons.append(f"flip {'on' if keep else 'off'}: the head scores {plain:.3f} on val and {flipped:.3f} on the "
                   f"same images flipped ({'within' if keep else 'more than'} {FLIP_TOLERANCE:g})")
    return keep
