"""One training loop for every tf.distribute strategy, with checkpoints that resume.

Keras 3 `Model.fit` fails under MultiWorkerMirroredStrategy with TF 2.21
(keras-team/keras#20585), so the loop is a custom one: `strategy.run` on
per-replica batches from `distribute_datasets_from_function`, a Keras 3 model
and Keras 3 optimizers. Transfer learning has two phases, each with its own
optimizer and warm-up + cosine schedule: the head with the backbone frozen,
then the unfrozen backbone at a lower learning rate.
"""

import contextlib
import dataclasses
import itertools
import math
import os
import shutil
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from abo_tf.common import console, files, options, outputs
from abo_tf.common.errors import UserInputError, first_line
from abo_tf.records import schema, shards
from abo_tf.reports import figures, metrics, model_card, predictions_file
from abo_tf.training import (
    averages,
    calibration,
    distribute,
    export,
    input_pipeline,
    models,
    parity,
    preprocess,
    run_folder,
)

CLASS_WEIGHTINGS = ("none", "balanced", "sqrt")
KEEPS = ("best", "last")
LOSSES = ("cross_entropy", "logit_adjusted", "balanced_softmax")
MAX_MIX_ALPHA = 100.0  # Beta(100, 100) already mixes every pair about half and half
MAX_TAU = 10.0  # Menon et al. sweep tau in [0, 3]; far beyond, the prior drowns the logits


class TrainingDiverged(UserInputError):
    """The loss became NaN or infinite; the last checkpoint is kept."""


class OutOfMemory(UserInputError):
    """A batch did not fit in the device's memory."""


_DATA, _MODEL, _SCHEDULE = "data", "model", "schedule"
# Far beyond any real run, far below the int64 step counter (epochs x steps must fit in it).
MAX_EPOCHS, MAX_STEPS = 100_000, 10**9
MAX_LAYERS = 10_000  # unfrozen backbone layers: above any Keras Application's count
MAX_LEARNING_RATE = 10.0  # AdamW diverges far below; 1e308 overflowed the schedule
_HARDWARE, _RUN = "distribution and hardware", "run folder"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on; `python -m abo_tf.train --help` documents each."""

    records: str = options.option(
        help="folder of a build_records output (with manifest.json)", group=_DATA, required=True
    )
    image_size: int = options.option(
        224,
        help="pixels of the square model input",
        group=_DATA,
        minimum=models.MIN_IMAGE_SIZE,
        maximum=options.MAX_IMAGE_SIZE,
    )
    eval_image_size: int = options.option(
        0,
        help="pixels of the square input for validation, the final metrics and the exports; 0 = --image-size "
        "(FixRes, Touvron et al. 2019: trained at 224 on random crops, a network gains at 256-320 on centre crops)",
        group=_DATA,
        minimum=0,
        maximum=options.MAX_IMAGE_SIZE,
    )
    crop_area_min: float = options.option(
        preprocess.CROP_AREA_MIN,
        help="the training crop's smallest share of the image area, in (0, 1] (Inception's 0.08 is for ImageNet "
        "from scratch)",
        group=_DATA,
        minimum=0.0,
        maximum=1.0,
    )
    randaugment: bool = options.option(
        False, help="RandAugment (keras.layers.RandAugment, 2 ops, factor 0.5) on training batches", group=_DATA
    )
    mixup_alpha: float = options.option(
        0.0,
        help="MixUp's Beta(alpha, alpha) (keras.layers.MixUp; recipes use 0.2-0.8); 0 = off",
        group=_DATA,
        minimum=0.0,
        maximum=MAX_MIX_ALPHA,
    )
    cutmix_alpha: float = options.option(
        0.0,
        help="CutMix's Beta factor (keras.layers.CutMix; recipes use 1.0); 0 = off; with MixUp, one of the two a batch",
        group=_DATA,
        minimum=0.0,
        maximum=1.0,  # keras.layers.CutMix refuses a factor above 1
    )
    sampling: str = options.option(
        "instance",
        choices=input_pipeline.SAMPLINGS,
        group=_DATA,
        help="how training draws examples: instance (each once a pass), class_balanced (each class equally often) "
        "or sqrt (classes by the square root of their count); an epoch stays train examples // batch steps",
    )
    cache: bool = options.option(False, help="cache the encoded records in memory", group=_DATA)
    model: str = options.option(
        "mobilenet_v3_small", choices=tuple(sorted(models.BACKBONES)), group=_MODEL, help="Keras Applications backbone"
    )
    weights: str = options.option("imagenet", help="imagenet | none | PATH to a Keras notop weights file", group=_MODEL)
    dropout: float = options.option(
        0.2, help="before the classification layer, in [0, 1)", group=_MODEL, minimum=0.0, maximum=1.0
    )
    epochs: int = options.option(
        10, help="epochs in all, the head epochs included", group=_SCHEDULE, minimum=1, maximum=MAX_EPOCHS
    )
    head_epochs: int = options.option(
        2, help="first epochs with the backbone frozen", group=_SCHEDULE, minimum=0, maximum=MAX_EPOCHS
    )
    fine_tune_layers: int = options.option(
        0,
        help="top backbone layers unfrozen after the head epochs; 0 = all",
        group=_SCHEDULE,
        minimum=0,
        maximum=MAX_LAYERS,
    )
    batch_size: int = options.option(
        64, help="global batch, split across replicas", group=_SCHEDULE, minimum=1, maximum=options.MAX_BATCH_SIZE
    )
    learning_rate: float = options.option(
        1e-3, help="peak rate of the head phase", group=_SCHEDULE, minimum=0.0, maximum=MAX_LEARNING_RATE
    )
    fine_tune_learning_rate: float = options.option(
        1e-4, help="peak rate once the backbone trains", group=_SCHEDULE, minimum=0.0, maximum=MAX_LEARNING_RATE
    )
    warmup_fraction: float = options.option(
        0.1, help="of each phase's steps, in [0, 1)", group=_SCHEDULE, minimum=0.0, maximum=1.0
    )
    weight_decay: float = options.option(
        0.05,
        help="AdamW's decoupled weight decay: each step shrinks a weight by this x the learning rate "
        "(0.05: DeiT's and ConvNeXt's AdamW recipes, timm's fine-tuning default)",
        group=_SCHEDULE,
        minimum=0.0,
        maximum=1.0,
    )
    decay_norm_and_bias: bool = options.option(
        False,
        help="decay normalisation scales/shifts and biases too (off: timm's rule, only weights of 2+ dimensions)",
        group=_SCHEDULE,
    )
    ema_momentum: float = options.option(
        0.0,
        help="keep an exponential moving average of the weights and BatchNorm statistics with this momentum, in "
        "[0, 1), warmed up as TF's ExponentialMovingAverage (momentum min(m, n / (n + 9)) after n steps: the first "
        "copies); "
        "validation, --keep and the export use the average; 0 = off",
        group=_SCHEDULE,
        minimum=0.0,
        maximum=1.0,
    )
    label_smoothing: float = options.option(0.1, help="in [0, 1)", group=_SCHEDULE, minimum=0.0, maximum=1.0)
    class_weights: str = options.option(
        "none", choices=CLASS_WEIGHTINGS, group=_SCHEDULE, help="loss weights against the long tail"
    )
    loss: str = options.option(
        "cross_entropy",
        choices=LOSSES,
        group=_SCHEDULE,
        help="logit_adjusted: cross-entropy on logits + tau x log(train prior) (Menon et al., ICLR 2021); "
        "balanced_softmax: the same at tau = 1 (Ren et al., NeurIPS 2020); served logits are never adjusted",
    )
    logit_adjustment_tau: float = options.option(
        1.0, help="tau of --loss logit_adjusted", group=_SCHEDULE, minimum=0.0, maximum=MAX_TAU
    )
    steps_per_epoch: int = options.option(
        0, help="0 = one pass over train", group=_SCHEDULE, minimum=0, maximum=MAX_STEPS
    )
    validation_steps: int = options.option(
        0, help="at most this many validation batches; 0 = all of them", group=_SCHEDULE, minimum=0, maximum=MAX_STEPS
    )
    seed: int = options.option(
        0, help="initial weights, shuffling, augmentation", group=_SCHEDULE, **options.SEED_BOUNDS
    )
    strategy: str = options.option(
        "default", choices=distribute.STRATEGIES, group=_HARDWARE, help="tf.distribute strategy"
    )
    tpu: str = options.option("", help="TPU name or address for --strategy tpu", group=_HARDWARE)
    mixed_precision: bool = options.option(False, help="float16 compute, float32 variables", group=_HARDWARE)
    jit_compile: bool = options.option(False, help="XLA; off on CPU", group=_HARDWARE)
    deterministic: bool = options.option(
        False,
        group=_HARDWARE,
        help="the same --seed gives the same run: input in a seeded order, deterministic ops "
        "(tf.config.experimental.enable_op_determinism, for the whole process); slower",
    )
    output: str = options.option(help="run folder", group=_RUN, required=True, config=False)
    checkpoint_every_steps: int = options.option(
        0, help="0 = every epoch only", group=_RUN, minimum=0, maximum=MAX_STEPS
    )
    top_k: int = options.option(
        5, help="labels returned by the SavedModel", group=_RUN, minimum=1, maximum=options.MAX_SHOWN
    )
    keep: str = options.option(
        "best",
        choices=KEEPS,
        group=_RUN,
        help="the weights exported: those of the epoch of best validation macro F1, or the last epoch's",
    )
    calibrate: bool = options.option(
        True,
        help="fit a temperature on validation (least NLL) after training and fold it into the exported logits",
        group=_RUN,
    )
    progress: bool = options.option(
        True,
        help="a progress bar per epoch on a terminal (a line per epoch in a log)",
        group=options.CONSOLE_GROUP,
        config=False,
    )

    def __post_init__(self):
        """Refuses options that would fail later or train nothing, for every entry point (CLI, TOML, notebook)."""
        options.validate(self)
        _check_ranges(self)

    @property
    def served_image_size(self):
        """The side of the images validated, evaluated and served: --eval-image-size, else --image-size."""
        return self.eval_image_size or self.image_size


def _flag(name, value):
    return f"--{name.replace('_', '-')} {value!r}"


def _check_ranges(config):
    """The rules the declared bounds cannot say (open intervals, one option against another): (holds, instead)."""
    rules = {
        "head_epochs": (
            config.head_epochs <= config.epochs,
            f"give 0 to --epochs {config.epochs} (the frozen-backbone epochs are part of them)",
        ),
        "learning_rate": (0 < config.learning_rate < math.inf, "give a positive number"),
        "fine_tune_learning_rate": (0 < config.fine_tune_learning_rate < math.inf, "give a positive number"),
        "crop_area_min": (config.crop_area_min > 0, "give a share of the image area in (0, 1]"),
        "eval_image_size": (
            config.eval_image_size == 0 or config.eval_image_size >= models.BACKBONES[config.model].min_image_size,
            f"give 0 (= --image-size) or at least {models.BACKBONES[config.model].min_image_size} pixels for "
            f"{config.model}",
        ),
    }
    rules.update(
        {
            name: (getattr(config, name) < 1, "give a fraction in [0, 1)")
            for name in ("warmup_fraction", "label_smoothing", "dropout", "ema_momentum")
        }
    )
    for name, (holds, instead) in rules.items():
        if not holds:
            raise UserInputError(f"{_flag(name, getattr(config, name))}: {instead}")


@dataclasses.dataclass
class _Phase:
    name: str  # the checkpoint's key for the phase's optimizer: "head" or "fine_tune"
    optimizer: keras.optimizers.Optimizer
    trainable: object  # False, True or a number of top backbone layers
    start: int  # first global step
    end: int
    label: str  # what the epoch lines and history.csv call it: "from_scratch" when the backbone was not pretrained
    averages: object = None  # averages.Averages of the variables the phase changes, with --ema-momentum


# --- set-up ------------------------------------------------------------------


def _class_weights(manifest, classes, weighting):
    counts = np.array(shards.examples_per_class(manifest, "train", classes), np.float64)
    if weighting == "none":
        return np.ones(len(classes), np.float32)
    weights = 1.0 / np.maximum(counts, 1) ** (1.0 if weighting == "balanced" else 0.5)
    # Normalised so the average example keeps weight 1 and the learning rate means the same.
    return (weights * counts.sum() / (weights * counts).sum()).astype(np.float32)


def logit_adjustment(manifest, classes, loss, tau):
    """What the training loss adds to the logits: tau x log(train prior) per class, zeros for plain cross-entropy.

    Adding log-prior offsets in training only (Menon et al. 2021, eq. 10) makes the unadjusted logits estimate the
    class-balanced posterior: rare classes are no longer argued away by their prior. A class without training
    images counts as one, so its offset is finite.
    """
    if loss == "cross_entropy":
        return np.zeros(len(classes), np.float32)
    counts = np.maximum(np.array(shards.examples_per_class(manifest, "train", classes), np.float64), 1)
    return ((1.0 if loss == "balanced_softmax" else tau) * np.log(counts / counts.sum())).astype(np.float32)


def _schedule(learning_rate, steps, warmup_fraction):
    warmup = int(steps * warmup_fraction)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=learning_rate * 0.01 if warmup else learning_rate,
        decay_steps=max(1, steps - warmup),
        warmup_target=learning_rate if warmup else None,
        warmup_steps=warmup,
    )


def make_optimizer(config, learning_rate, steps, variables=()):
    """AdamW with warm-up and cosine decay over `steps` (loss-scaled under mixed float16), to be built on `variables`.

    Keras' AdamW shrinks each decayed weight by `weight_decay x learning_rate` a step (the schedule's current rate):
    at the old default 1e-4 and a rate of 1e-3 that was 1e-7 a step, no decay at all.
    """
    optimizer = keras.optimizers.AdamW(
        _schedule(learning_rate, steps, config.warmup_fraction),
        weight_decay=config.weight_decay,
    )
    if not config.decay_norm_and_bias:
        # timm's param_groups_weight_decay: 1-D variables (BatchNorm/LayerNorm gamma and beta, biases, ConvNeXt's
        # layer scales) are not decayed; decaying them pulls normalisation towards zero output, not towards simplicity.
        optimizer.exclude_from_weight_decay(var_list=[variable for variable in variables if len(variable.shape) <= 1])
    if config.mixed_precision and keras.mixed_precision.global_policy().name == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def _make_phases(config, model, steps_per_epoch):
    """Builds each phase's optimizer on the variables it trains (inside the strategy scope).

    Under MirroredStrategy the optimizer must be built before the first step
    (keras-team/keras#23085), and every optimizer must exist before a
    checkpoint is restored into it.
    """
    head_steps = config.head_epochs * steps_per_epoch
    total = config.epochs * steps_per_epoch
    plans = [
        ("head", False, config.learning_rate, 0, head_steps),
        ("fine_tune", config.fine_tune_layers or True, config.fine_tune_learning_rate, head_steps, total),
    ]
    phases = []
    for name, trainable, learning_rate, start, end in plans:
        models.set_backbone_trainable(model, trainable)
        optimizer = make_optimizer(config, learning_rate, max(1, end - start), model.trainable_variables)
        optimizer.build(model.trainable_variables)
        # A backbone with random initial weights is trained, not fine-tuned.
        label = "from_scratch" if name == "fine_tune" and not model.pretrained_backbone else name
        averaged = averages.make_averages(model, config.ema_momentum)
        phases.append(_Phase(name, optimizer, trainable, start, end, label, averaged))
    return phases


def _check_batch(config, strategy):
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise UserInputError(
            f"--batch-size {config.batch_size} does not divide across {replicas} replicas: use a multiple of {replicas}"
        )


def _distributed(strategy, config, split, training, manifest, consumed_steps=0):
    """The split distributed over the replicas: training repeats and drops the remainder, past the
    `consumed_steps` global batches a resumed run already read; validation is one whole pass.

    A partial last validation batch is split unevenly (an empty batch on a replica without examples): the
    distributed iterator checks every replica for data before each step, so workers stop together.
    """

    def dataset_fn(input_context):
        batch = input_context.get_per_replica_batch_size(config.batch_size)
        # A pipeline feeds its worker's replicas: one batch per replica and step.
        local_replicas = input_context.num_replicas_in_sync // input_context.num_input_pipelines
        return input_pipeline.make_dataset(
            config.records,
            split,
            config.image_size if training else config.served_image_size,
            batch,
            training,
            input_context,
            config.seed,
            config.cache,
            manifest,
            repeat=training,
            drop_remainder=training,
            deterministic=config.deterministic,
            crop_area_min=config.crop_area_min,
            augmentation=input_pipeline.Augmentation(config.randaugment, config.mixup_alpha, config.cutmix_alpha),
            skip_batches=consumed_steps * local_replicas,
            sampling=config.sampling if training else "instance",
        )

    # Device prefetch through InputOptions: prefetch_to_device is still unreliable in TF.
    options = tf.distribute.InputOptions(experimental_fetch_to_device=True)
    dataset = strategy.distribute_datasets_from_function(dataset_fn, options)
    return iter(dataset) if training else dataset


# --- steps -------------------------------------------------------------------


def make_train_step(strategy, model, optimizer, config, class_weights, num_classes, adjustment=None, averaged=None):
    """The distributed training step: `step(iterator) -> (mean loss, number correct)` of one global batch.

    `adjustment` ([C], `logit_adjustment`) is added to the logits inside the loss only; `averaged`
    (`averages.Averages`) moves after each update of the weights.
    """
    variables = model.trainable_variables
    loss_fn = keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=config.label_smoothing, reduction="none"
    )
    weights = tf.constant(class_weights)
    offsets = tf.constant(np.zeros(num_classes, np.float32) if adjustment is None else adjustment)

    def replica_step(batch):
        labels = batch["label"]
        with tf.GradientTape() as tape:
            logits = model(batch["image"], training=True)
            # MixUp/CutMix's soft targets weigh each class's weight by its share (one-hot: the class's weight).
            targets = batch["target"] if "target" in batch else tf.one_hot(labels, num_classes)
            per_example = loss_fn(targets, logits + offsets) * tf.reduce_sum(targets * weights, axis=-1)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=config.batch_size)
            scaled_loss = optimizer.scale_loss(loss)
        optimizer.apply_gradients(zip(tape.gradient(scaled_loss, variables), variables))
        return loss, _num_correct(logits, labels)

    @tf.function(jit_compile=config.jit_compile)
    def step(iterator):
        loss, correct = strategy.run(replica_step, args=(next(iterator),))
        if averaged is not None:
            averaged.update(strategy)
        return strategy.reduce("SUM", loss, axis=None), strategy.reduce("SUM", correct, axis=None)

    return step


def _num_correct(logits, labels):
    return tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels), tf.float32))


def _make_eval_step(strategy, model, dataset, with_predictions=False):
    """A validation step on one distributed batch of `dataset`: (summed loss, correct, examples), plus (labels,
    predictions) of every replica when asked.

    The signature is the dataset's, batch dimension unknown: the partial last batch does not retrace.
    """
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")

    def replica_step(batch):
        labels = batch["label"]
        logits = model(batch["image"], training=False)
        predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
        examples = tf.cast(tf.shape(labels)[0], tf.float32)
        return loss_fn(labels, logits), _num_correct(logits, labels), examples, labels, predictions

    @tf.function(input_signature=[dataset.element_spec])
    def step(batch):
        *sums, labels, predictions = strategy.run(replica_step, args=(batch,))
        summed = tuple(strategy.reduce("SUM", value, axis=None) for value in sums)
        if not with_predictions:
            return summed
        return (*summed, strategy.gather(labels, axis=0), strategy.gather(predictions, axis=0))

    return step


# --- checkpoints and history -------------------------------------------------


def _checkpointing(strategy, config, model, phases, step):
    """Restores the latest checkpoint; returns a manager that saves new ones.

    The chief saves into RUN_DIR/checkpoints; other workers must take part in
    the save (it is collective) but write to a private temporary folder.
    """
    checkpoint = tf.train.Checkpoint(
        model=model,
        step=step,
        random_states=_random_states(model),
        **{f"{phase.name}_optimizer": phase.optimizer for phase in phases},
        **{f"{phase.name}_averages": phase.averages.averages for phase in phases if phase.averages is not None},
        **{f"{phase.name}_average_updates": phase.averages.updates for phase in phases if phase.averages is not None},
    )
    main_dir = run_folder.path(config.output, run_folder.CHECKPOINTS)
    latest = tf.train.latest_checkpoint(main_dir)
    if latest:
        try:
            checkpoint.restore(latest).expect_partial()
        except ValueError as error:  # a variable of another shape: the checkpoint's object graph is not this one's
            raise UserInputError(
                f"--output {config.output!r}: its checkpoint {latest!r} does not fit this run ({first_line(error)}): "
                "another model or an older abo_tf wrote it (older --ema-momentum runs kept their averages in the "
                "optimizer); finish it with the version that started it, or train again into a new --output"
            ) from error
    directory = (
        main_dir
        if distribute.is_chief(strategy)
        else tempfile.mkdtemp(prefix=f"abo_tf_{distribute.worker_id(strategy)}_")
    )
    return tf.train.CheckpointManager(checkpoint, directory, max_to_keep=3)


def _random_states(model):
    """The states of the model's Keras seed generators (Dropout's): a model checkpoint leaves them out, and a
    resumed run would draw the dropout masks of its first steps again."""
    return [variable for variable in model.non_trainable_variables if variable.path.endswith("seed_generator_state")]


def _best_checkpointing(strategy, config, model):
    """The manager of the best epoch's model (`--keep best`), or None; written like `_checkpointing`'s."""
    if config.keep != "best":
        return None
    directory = (
        run_folder.path(config.output, run_folder.BEST_CHECKPOINT)
        if distribute.is_chief(strategy)
        else tempfile.mkdtemp(prefix=f"abo_tf_best_{distribute.worker_id(strategy)}_")
    )
    return tf.train.CheckpointManager(tf.train.Checkpoint(model=model), directory, max_to_keep=1)


def _is_new_best(macro_f1, history):
    """Whether an epoch's F1 beats every earlier epoch's (strictly: the earliest of equals stays, as in `best_row`)."""
    best = best_row(history)
    return math.isfinite(macro_f1) and (best is None or macro_f1 > best.val_macro_f1)


def best_row(history):
    """The history row of highest val_macro_f1, the earliest on ties; None when no row has one."""
    scored = [row for row in history if math.isfinite(row.val_macro_f1)]
    return max(scored, key=lambda row: (row.val_macro_f1, -row.step)) if scored else None


@contextlib.contextmanager
def _averaged_weights(strategy, phase):
    """The phase's moving averages are the model's weights and BatchNorm statistics meanwhile; the trained values
    come back after.

    Checkpoints for resuming hold the trained values in the model (and the averages beside them); validation and
    the best epoch's checkpoint see the averages, which are what is exported.
    """
    if phase.averages is None:
        yield
        return
    phase.averages.swap(strategy)
    try:
        yield
    finally:
        phase.averages.swap(strategy)


def _use_averages(run):
    """With EMA and --keep last: the last trained phase's averages become the model's values, for the export."""
    trained = [phase for phase in run.phases if phase.end > phase.start]
    if trained and trained[-1].averages is not None:
        trained[-1].averages.swap(run.strategy)


def _learning_rate(optimizer):
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return float(inner.learning_rate)


# --- the loop ----------------------------------------------------------------


@dataclasses.dataclass
class _Run:
    """What the loop needs, built once."""

    config: TrainConfig
    strategy: tf.distribute.Strategy
    model: keras.Model
    phases: list
    step: tf.Variable
    manager: tf.train.CheckpointManager
    best_manager: object  # a CheckpointManager with --keep best, else None
    train_iterator: object
    validation_dataset: object  # distributed, one pass: iterated afresh each epoch
    steps_per_epoch: int
    validation_steps: int  # at most this many batches; 0 = the whole split
    class_weights: np.ndarray
    adjustment: np.ndarray  # `logit_adjustment`, added to the logits in the training loss
    num_classes: int
    writer: object
    chief: bool


def _run_epoch_steps(run, phase, train_step, epoch_end):
    """Trains from the current step to `epoch_end`; returns (mean loss, accuracy, images/s)."""
    progress = keras.utils.Progbar(
        epoch_end - int(run.step),
        verbose=1 if run.chief and run.config.progress and console.is_terminal(sys.stdout) else 0,
        stateful_metrics=["lr", "img/s"],
    )
    losses, correct, started = [], 0.0, time.perf_counter()
    while int(run.step) < epoch_end:
        loss, batch_correct = train_step(run.train_iterator)
        loss = float(loss)
        if not math.isfinite(loss):
            saved = tf.train.latest_checkpoint(run_folder.path(run.config.output, run_folder.CHECKPOINTS))
            raise TrainingDiverged(
                f"the loss became {loss} at step {int(run.step) + 1}; the last checkpoint ({saved}) is intact: "
                f"lower --learning-rate or check the records"
            )
        run.step.assign_add(1)
        losses.append(loss)
        correct += float(batch_correct)
        images_per_second = len(losses) * run.config.batch_size / (time.perf_counter() - started)
        learning_rate = _learning_rate(phase.optimizer)
        progress.add(1, [("loss", loss), ("lr", learning_rate), ("img/s", images_per_second)])
        _log_scalars(run, {"loss": loss, "learning_rate": learning_rate, "images_per_second": images_per_second})
        if run.config.checkpoint_every_steps and int(run.step) % run.config.checkpoint_every_steps == 0:
            run.manager.save(checkpoint_number=int(run.step))
    seconds = time.perf_counter() - started
    count = max(1, len(losses))
    return (
        float(np.mean(losses)) if losses else float("nan"),
        correct / (count * run.config.batch_size),
        count * run.config.batch_size / max(seconds, 1e-9),
    )


def _log_scalars(run, values, prefix="train"):
    if run.writer is None:
        return
    with run.writer.as_default(step=int(run.step)):
        for name, value in values.items():
            tf.summary.scalar(f"{prefix}/{name}", value)


def _validate(run, eval_step, with_predictions=False):
    """(loss, accuracy, {val_macro_f1, val_examples} or {}) of one validation pass; F1 only `with_predictions`.

    The pass covers every validation example, the partial last batch too (`--validation-steps` N: N batches).
    """
    loss, correct, count, labels, predictions = 0.0, 0.0, 0.0, [], []
    batches = itertools.islice(run.validation_dataset, run.validation_steps or None)
    for batch in batches:
        batch_loss, batch_correct, batch_count, *predicted = eval_step(batch)
        loss, correct, count = loss + float(batch_loss), correct + float(batch_correct), count + float(batch_count)
        if with_predictions:
            labels.append(predicted[0].numpy())
            predictions.append(predicted[1].numpy())
    count = max(count, 1.0)
    predicted = {}
    if with_predictions:
        labels, predictions = np.concatenate(labels), np.concatenate(predictions)
        predicted = {
            "val_macro_f1": metrics.classification_metrics(labels, predictions)["macro_f1"],
            "val_examples": len(labels),
        }
    return loss / count, correct / count, predicted


def _train_phases(run, on_epoch_end=None):
    with_predictions = on_epoch_end is not None or run.best_manager is not None
    eval_step = _make_eval_step(run.strategy, run.model, run.validation_dataset, with_predictions)
    history = run_folder.load_history(run.config.output, up_to_step=int(run.step))
    for phase in run.phases:
        if int(run.step) >= phase.end:
            continue
        models.set_backbone_trainable(run.model, phase.trainable)
        train_step = make_train_step(
            run.strategy,
            run.model,
            phase.optimizer,
            run.config,
            run.class_weights,
            run.num_classes,
            run.adjustment,
            phase.averages,
        )
        while int(run.step) < phase.end:
            epoch = int(run.step) // run.steps_per_epoch
            started = time.perf_counter()
            loss, accuracy, images_per_second = _run_epoch_steps(
                run, phase, train_step, min(phase.end, (epoch + 1) * run.steps_per_epoch)
            )
            with _averaged_weights(run.strategy, phase):
                val_loss, val_accuracy, predicted = _validate(run, eval_step, with_predictions)
                if run.best_manager is not None and _is_new_best(predicted.get("val_macro_f1", math.nan), history):
                    run.best_manager.save(checkpoint_number=int(run.step))
            row = run_folder.HistoryRow(
                epoch=epoch + 1,
                step=int(run.step),
                phase=phase.label,
                loss=loss,
                accuracy=accuracy,
                val_loss=val_loss,
                val_accuracy=val_accuracy,
                learning_rate=_learning_rate(phase.optimizer),
                images_per_second=images_per_second,
                seconds=time.perf_counter() - started,
                val_macro_f1=predicted.get("val_macro_f1", math.nan),
            )
            _log_scalars(run, {"epoch_loss": loss, "epoch_accuracy": accuracy})
            _log_scalars(run, {"loss": val_loss, "accuracy": val_accuracy}, prefix="validation")
            run.manager.save(checkpoint_number=int(run.step))
            history.append(row)
            if run.chief:
                run_folder.write_history(run.config.output, history)
                print(_epoch_line(run.config.epochs, row), flush=True)
            if on_epoch_end is not None:  # after the checkpoint and history: a pruned run's folder is complete
                on_epoch_end(epoch + 1, {"val_loss": val_loss, "val_accuracy": val_accuracy, **predicted})
    return history


def _epoch_line(epochs, row):
    """One epoch's log line; every figure named (validation macro_f1 only when the pass computed it)."""
    validation = f"validation loss {row.val_loss:.4f} accuracy {row.val_accuracy:.4f}"
    if math.isfinite(row.val_macro_f1):
        validation += f" macro_f1 {row.val_macro_f1:.4f}"
    train = f"train loss {row.loss:.4f} accuracy {row.accuracy:.4f}"
    return f"epoch {row.epoch}/{epochs} ({row.phase}): {train}, {validation}"


# --- after training: evaluation, export, figures -----------------------------


def predict_split(model, config, split, manifest, logits=False, inference=None):
    """Labels, softmax probabilities (`logits`: the logits) and {image_id, item_id: str arrays} of a split, in order.

    `inference`: the model's `export.inference_function` at `config.served_image_size`, shared by the caller's
    passes (one trace for all of them); None: traced for this pass.
    """
    if inference is None:
        inference = export.inference_function(model, config.served_image_size)
    keys = (schema.IMAGE_ID, schema.ITEM_ID)
    dataset = input_pipeline.make_dataset(
        config.records,
        split,
        config.served_image_size,
        config.batch_size,
        training=False,
        manifest=manifest,
        extra_keys=keys,
    )
    labels, probabilities, ids = [], [], {key: [] for key in keys}
    for batch in dataset:
        labels.append(batch["label"].numpy())
        outputs = inference(batch["image"])
        probabilities.append((outputs if logits else tf.nn.softmax(outputs)).numpy())
        for key in keys:
            ids[key].append(batch[key].numpy().astype(str))
    return np.concatenate(labels), np.concatenate(probabilities), {key: np.concatenate(ids[key]) for key in keys}


def _final_metrics(model, config, manifest, inference=None):
    """The figures `abo_tf.evaluate` reports (strata, ECE, 95% intervals by item), for validation and test.

    The test split's predictions go to test_predictions.csv, for the paired comparisons of baselines and tune.
    """
    train_counts = metrics.train_counts(manifest)
    results = {}
    for split in ("validation", "test"):
        if input_pipeline.num_examples(config.records, split, manifest) == 0:
            continue
        labels, probabilities, ids = predict_split(model, config, split, manifest, inference=inference)
        predicted = probabilities.argmax(axis=1)
        results[split] = metrics.evaluation_metrics(
            labels, predicted, probabilities, train_counts, groups=ids[schema.ITEM_ID], seed=config.seed
        )
        if split == "test":
            hits = metrics.top_k_hits(labels, probabilities, 5)
            ids_and_labels = (ids[schema.IMAGE_ID], ids[schema.ITEM_ID], labels, predicted, hits)
            predictions_file.write(config.output, *ids_and_labels, manifest["classes"])
    return results


def _plain_copy(model, image_size=None):
    """The trained model rebuilt outside the strategy, in float32 (at `image_size`: --eval-image-size), for export.

    Rebuilt from the model's own config, not from `build_model(weights=None)`:
    EfficientNet's graph depends on the weights it was built with (a Rescaling
    layer only for weights="imagenet"), and a graph rebuilt without it loads
    the same weights and computes something else.
    """
    config = _float32_config(model.get_config())
    if image_size is not None and image_size != model.input.shape[1]:
        config = models.config_at_image_size(config, image_size)
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        with tf.distribute.get_strategy().scope():
            plain = keras.Model.from_config(config)
        plain.set_weights(model.get_weights())
    finally:
        keras.mixed_precision.set_global_policy(policy)
    # Normalization computes with tensors derived from its weights when they load; set_weights skips that
    # (the copy of an ImageNet EfficientNet normalised with mean 0, variance 1).
    for layer in models.backbone_of(plain).layers:
        if isinstance(layer, keras.layers.Normalization):
            layer.finalize_state()
    plain.pretrained_backbone = getattr(model, "pretrained_backbone", True)
    return plain


def _float32_config(value):
    """A model config with every mixed-precision dtype policy replaced by float32 (layers store theirs)."""

    def on_dict(entry, recurse):
        if entry.get("class_name") == "DTypePolicy" and str(entry.get("config", {}).get("name")).startswith("mixed_"):
            return {**entry, "config": {**entry["config"], "name": "float32"}}
        return {key: recurse(item) for key, item in entry.items()}

    return models.map_config(value, on_dict)


def plot_history(history, path):
    """Saves loss and accuracy curves (train and validation) as a PNG."""
    plt = figures.pyplot()
    steps = [row.step for row in history]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, name in zip(axes, ("loss", "accuracy")):
        axis.plot(steps, [getattr(row, name) for row in history], marker="o", label="train")
        axis.plot(steps, [getattr(row, "val_" + name) for row in history], marker="o", label="validation")
        axis.set_xlabel("step")
        axis.set_title(name)
        axis.legend()
        axis.grid(alpha=0.3)
    figures.save(figure, path, dpi=100)


@contextlib.contextmanager
def _computing_in_float32(model):
    """The model's own layers compute in float32 meanwhile (under mixed precision its variables are float32 already).

    The parity check compares float32 functions: a float16 forward pass of a
    ResNet50 with random weights moved probabilities by up to 0.27 against the same
    weights in float32 (128 images of 64 px, batch statistics), which would hide a real difference.
    """
    changed = [layer for layer in models.all_layers(model) if layer.dtype_policy.name.startswith("mixed_")]
    policies = [layer.dtype_policy for layer in changed]
    for layer in changed:
        layer.dtype_policy = "float32"
    try:
        yield model
    finally:
        for layer, policy in zip(changed, policies):
            layer.dtype_policy = policy


def _checked_export(run, plain, manifest, classes, temperature=None, inference=None):
    """Exports `plain` into the staging folder and checks it against the trained model on validation.

    Returns:
      The staging folder, once the check passed (parity.json written either way).

    Raises:
      ParityError: the export differs from the trained model; the staging folder is removed.
    """
    config = run.config
    staging = run_folder.path(config.output, run_folder.SAVED_MODEL_STAGING)
    export.export_saved_model(plain, classes, config.served_image_size, staging, config.top_k, temperature, inference)
    # The validation split as stored: the bytes go through serving_default, their decoded pixels
    # through serve_pixels and the trained model (outside strategy.run: one device reads the variables).
    batches = input_pipeline.make_dataset(
        config.records,
        "validation",
        config.served_image_size,
        config.batch_size,
        training=False,
        manifest=manifest,
        extra_keys=(schema.IMAGE,),
    )
    with _computing_in_float32(run.model):
        record = parity.to_json(export.saved_model_parity(run.model, export.load_exported(staging), batches))
    files.write_json(run_folder.path(config.output, run_folder.PARITY), record)
    print(parity.summary(record), flush=True)
    if not record["passed"]:
        shutil.rmtree(staging)
    parity.check(record, what=f"the export of {config.output!r}")
    return staging


def _restore_best(run, history):
    """With --keep best, loads the best epoch's model into the trained model; {epoch, step, val_macro_f1} or None."""
    if run.best_manager is None or run.best_manager.latest_checkpoint is None:
        return None
    tf.train.Checkpoint(model=run.model).restore(run.best_manager.latest_checkpoint).expect_partial()
    step = int(run.best_manager.latest_checkpoint.rsplit("-", 1)[1])
    # A run killed between the best checkpoint and its history row has no row for it (rare): F1 unknown.
    row = next((row for row in history if row.step == step), None)
    f1 = None if row is None else row.val_macro_f1
    epoch = -(-step // run.steps_per_epoch)
    print(f"keeping epoch {epoch} (validation macro F1 {'unknown' if f1 is None else format(f1, '.4f')})", flush=True)
    return {"epoch": epoch, "step": step, "val_macro_f1": f1}


def _calibrate(run, plain, manifest, inference=None):
    """Fits the temperature on validation and folds it into the trained model and its copy; its record, or None.

    Folded into both before the parity check: the check then compares the trained network, with the one scalar
    applied the same way, against its export, and the export's `probabilities` are the calibrated ones.
    """
    config = run.config
    if not config.calibrate or input_pipeline.num_examples(config.records, "validation", manifest) == 0:
        return None
    labels, logits, _ = predict_split(plain, config, "validation", manifest, logits=True, inference=inference)
    temperature = calibration.fit_temperature(logits, labels)
    for model in (run.model, plain):
        calibration.fold_temperature(model, temperature)
    record = calibration.calibration_record(logits, labels, temperature)
    print(
        f"calibration: temperature {temperature:.3f}, validation NLL {record['nll_before']:.4f} -> "
        f"{record['nll_after']:.4f}, ECE {record['ece_before']:.4f} -> {record['ece_after']:.4f}",
        flush=True,
    )
    return record


def _export(run, plain, manifest, classes, calibrated, export_model, inference=None):
    """The checked export's staging folder, and model.keras; without `export_model`, not_exported.txt and None."""
    output = run.config.output
    if not export_model:
        run_folder.mark_not_exported(output)
        return None
    temperature = None if calibrated is None else calibrated["temperature"]
    staging = _checked_export(run, plain, manifest, classes, temperature, inference)
    plain.save(run_folder.path(output, run_folder.KERAS_MODEL))  # the Keras object, for Grad-CAM and fine-tuning
    return staging


def _finish(run, manifest, classes, history, export_model=True):
    output = run.config.output
    # A run finishing again (resumed after its last epoch) exports anew: nothing stale may survive a failed check.
    outputs.remove_owned(outputs.OutputFolder(output, "train", earlier=True), run_folder.EXPORTS)
    kept = keep_weights(run, history)
    plain = _plain_copy(run.model, run.config.served_image_size)
    # One trace of the copy for its three passes and both endpoints; the folded temperature is an assignment of
    # the logits layer's variables, which the traced graph reads.
    inference = export.inference_function(plain, run.config.served_image_size)
    calibrated = _calibrate(run, plain, manifest, inference)
    staging = _export(run, plain, manifest, classes, calibrated, export_model, inference)
    results = _final_metrics(plain, run.config, manifest, inference)
    if calibrated is not None:
        results["validation"]["calibration"] = calibrated
    if kept is not None:
        results["validation"]["kept_epoch"] = kept
    for split_metrics in results.values():
        split_metrics["image_size"] = {"train": run.config.image_size, "evaluated": run.config.served_image_size}
    run_folder.write_class_names(output, classes)
    if staging is not None:
        os.replace(staging, run_folder.path(output, run_folder.SAVED_MODEL))
    files.write_json(run_folder.path(output, run_folder.METRICS), results)
    model_card.write(output, output, manifest, run.config.records)
    if history:
        plot_history(history, run_folder.path(output, run_folder.CURVES))
    return results


def _steps_per_epoch(config, manifest):
    return config.steps_per_epoch or max(
        1, input_pipeline.num_examples(config.records, "train", manifest) // config.batch_size
    )


def _set_up(config, strategy, manifest):
    classes = manifest["classes"]
    _check_batch(config, strategy)
    input_pipeline.split_files(config.records, "train", manifest)
    input_pipeline.split_files(config.records, "validation", manifest)
    steps_per_epoch = _steps_per_epoch(config, manifest)
    with strategy.scope():
        model = models.build_model(
            config.model,
            len(classes),
            config.image_size,
            weights=None if config.weights == "none" else config.weights,
            dropout=config.dropout,
        )
        if config.served_image_size != config.image_size:
            models.accept_any_image_size(model)  # validated at --eval-image-size, trained at --image-size
        phases = _make_phases(config, model, steps_per_epoch)
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    chief = distribute.is_chief(strategy)
    manager = _checkpointing(strategy, config, model, phases, step)  # restores `step` when resuming
    # A resumed run continues the training stream where the checkpoint left it (validation is a fresh pass).
    return _Run(
        config=config,
        strategy=strategy,
        model=model,
        phases=phases,
        step=step,
        manager=manager,
        best_manager=_best_checkpointing(strategy, config, model),
        train_iterator=_distributed(strategy, config, "train", True, manifest, int(step)),
        validation_dataset=_distributed(strategy, config, "validation", False, manifest),
        steps_per_epoch=steps_per_epoch,
        validation_steps=config.validation_steps,
        class_weights=_class_weights(manifest, classes, config.class_weights),
        adjustment=logit_adjustment(manifest, classes, config.loss, config.logit_adjustment_tau),
        num_classes=len(classes),
        writer=tf.summary.create_file_writer(run_folder.path(config.output, run_folder.LOGS)) if chief else None,
        chief=chief,
    )


def _splits_read(manifest):
    """Train and validation always; test too when it has examples (for the final metrics)."""
    has_test = manifest.get("splits", {}).get("test", {}).get("num_examples")
    return ["train", "validation"] + (["test"] if has_test else [])


def out_of_memory(error, batch_size, image_size, flags="--batch-size or --image-size"):
    """The one-line error for a batch that did not fit (`tf.errors.ResourceExhaustedError`)."""
    reason = input_pipeline.tf_error_line(error)
    return OutOfMemory(
        f"a batch of {batch_size} images of {image_size} px does not fit in memory ({reason}): lower {flags}"
    )


def _start(config):
    """Seeds, determinism, precision, the strategy; (strategy, manifest, splits read) once the records check out."""
    # --seed seeds the initial weights and the augmentation too: a tuned trial is reproduced by its config.
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        # Also runs tf.data's stateful map functions (the augmentation's random ops) one element at a time.
        tf.config.experimental.enable_op_determinism()
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_bfloat16" if config.strategy == "tpu" else "mixed_float16")
    strategy = distribute.make_strategy(config.strategy, config.tpu)
    manifest = shards.read_manifest(config.records)
    splits = _splits_read(manifest)
    input_pipeline.check_records(config.records, manifest, splits)
    return strategy, manifest, splits


def train(config, on_epoch_end=None, export_model=True):
    """Trains, checkpoints, evaluates and exports one run (resuming if checkpoints exist).

    Args:
      config: a `TrainConfig`; `config.output` must exist.
      on_epoch_end: optional `f(epoch, validation_metrics)` called after each epoch is saved, with
        `val_loss`, `val_accuracy`, `val_macro_f1` and `val_examples` of that epoch's validation pass
        (abo_tf.tune's pruning hook); an exception it raises (optuna.TrialPruned) ends the run there.
      export_model: False for a search point (a tune trial): metrics and test predictions, but no SavedModel,
        model.keras nor parity check (a third of a tiny run), and not_exported.txt says so.

    Returns:
      The final metrics (dict split -> metrics) on the chief, None on other workers.

    Raises:
      UserInputError: records that are missing, damaged or do not match their
        manifest (the shard named), a batch too large for memory, a diverged loss.
    """
    strategy, manifest, splits = _start(config)
    try:
        with input_pipeline.explain_read_errors(config.records, manifest, splits):
            run = _set_up(config, strategy, manifest)
            history = _train_phases(run, on_epoch_end)
            if not run.chief:
                return None
            return _finish(run, manifest, manifest["classes"], history, export_model)
    except tf.errors.ResourceExhaustedError as error:
        raise out_of_memory(error, config.batch_size, config.image_size) from error


def train_weights(config):
    """Trains like `train` (same set-up, loop and checkpoints) but evaluates and exports nothing: (run, history).

    For the recipe ablation, where the export and its parity check would double each small run. `run.model` holds
    the last epoch's trained weights (with EMA, not yet the averages); `keep_weights` then applies --keep.
    """
    strategy, manifest, splits = _start(config)
    with input_pipeline.explain_read_errors(config.records, manifest, splits):
        run = _set_up(config, strategy, manifest)
        return run, _train_phases(run)


def keep_weights(run, history):
    """What `train` exports, into `run.model`: the best epoch's weights (--keep best) or the last's (averages with
    EMA); the kept epoch's {epoch, step, val_macro_f1} or None."""
    kept = _restore_best(run, history)
    if kept is None:  # --keep last, or no best checkpoint (checkpoints/best removed): the last epoch's averages
        _use_averages(run)
    return kept
