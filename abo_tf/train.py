"""Train a Keras Applications classifier on the records: `python -m abo_tf.train`.

    python -m abo_tf.train --config pipelines/resnet50_mirrored.toml \\
        --records tfrecords/abo/1.0.0 --output runs/resnet50

A run folder gets config.toml (the resolved config), checkpoints/, logs/
(TensorBoard), history.csv, training_curves.png, metrics.json, labels.txt,
model.keras and saved_model/. Started again with the same command, a killed
run resumes from its last checkpoint; `--resume` takes the config from the folder.
"""

import argparse
import dataclasses
import os
import sys

from abo_tf.common import config as config_lib
from abo_tf.reports import metrics
from abo_tf.training import distribute, models, loop as training
from abo_tf.common.errors import UserInputError, cli_main


def _parser():
    defaults = training.TrainConfig(records="", output="")
    parser = argparse.ArgumentParser(prog="python -m abo_tf.train", description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", help="TOML file of defaults (pipelines/*.toml); flags override it")
    data = parser.add_argument_group("data")
    data.add_argument("--records", help="folder of a build_records output (with manifest.json)")
    data.add_argument("--image-size", type=int, default=defaults.image_size)
    data.add_argument("--cache", action=argparse.BooleanOptionalAction, default=defaults.cache, help="cache the encoded records in memory")
    model = parser.add_argument_group("model")
    model.add_argument("--model", choices=sorted(models.BACKBONES), default=defaults.model)
    model.add_argument("--weights", default=defaults.weights, help="imagenet | none | PATH to a Keras notop weights file")
    model.add_argument("--dropout", type=float, default=defaults.dropout)
    schedule = parser.add_argument_group("schedule")
    schedule.add_argument("--epochs", type=int, default=defaults.epochs)
    schedule.add_argument("--head-epochs", type=int, default=defaults.head_epochs, help="first epochs with the backbone frozen")
    schedule.add_argument("--fine-tune-layers", type=int, default=defaults.fine_tune_layers, help="top backbone layers unfrozen after the head epochs; 0 = all")
    schedule.add_argument("--batch-size", type=int, default=defaults.batch_size, help="global batch, split across replicas")
    schedule.add_argument("--learning-rate", type=float, default=defaults.learning_rate, help="peak rate of the head phase")
    schedule.add_argument("--fine-tune-learning-rate", type=float, default=defaults.fine_tune_learning_rate)
    schedule.add_argument("--warmup-fraction", type=float, default=defaults.warmup_fraction, help="of each phase's steps")
    schedule.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    schedule.add_argument("--label-smoothing", type=float, default=defaults.label_smoothing)
    schedule.add_argument("--class-weights", choices=("none", "balanced", "sqrt"), default=defaults.class_weights, help="loss weights against the long tail")
    schedule.add_argument("--steps-per-epoch", type=int, default=defaults.steps_per_epoch, help="0 = one pass over train")
    schedule.add_argument("--validation-steps", type=int, default=defaults.validation_steps, help="0 = one pass over validation")
    schedule.add_argument("--seed", type=int, default=defaults.seed)
    hardware = parser.add_argument_group("distribution and hardware")
    hardware.add_argument("--strategy", choices=distribute.STRATEGIES, default=defaults.strategy)
    hardware.add_argument("--tpu", default=defaults.tpu, help="TPU name or address for --strategy tpu")
    hardware.add_argument("--mixed-precision", action=argparse.BooleanOptionalAction, default=defaults.mixed_precision)
    hardware.add_argument("--jit-compile", action=argparse.BooleanOptionalAction, default=defaults.jit_compile, help="XLA; off on CPU")
    run = parser.add_argument_group("run folder")
    run.add_argument("--output", help="run folder")
    run.add_argument("--resume", action="store_true", help="continue the run in --output with the config saved there")
    run.add_argument("--checkpoint-every-steps", type=int, default=defaults.checkpoint_every_steps, help="0 = every epoch only")
    run.add_argument("--top-k", type=int, default=defaults.top_k, help="labels returned by the SavedModel")
    run.add_argument("--verbose", type=int, choices=(0, 1, 2), default=defaults.verbose)
    return parser


_NOT_CONFIG = ("config", "resume", "output", "verbose")


def resolve_config(argv):
    """Flags + TOML + the run folder -> a `TrainConfig`; refuses a folder holding another run."""
    args = config_lib.parse_with_config(_parser(), argv)
    if not args.output:
        raise UserInputError("--output RUN_DIR is required")
    values = {key: value for key, value in vars(args).items() if key not in _NOT_CONFIG}
    saved = config_lib.load_run_config(args.output)
    if saved is not None and args.resume:
        values = saved
    elif saved is not None and config_lib.differences(saved, values):
        raise UserInputError(f"{args.output!r} holds a run with another config (differs in {config_lib.differences(saved, values)}): pass --resume to continue it, or choose another --output")
    elif saved is None and args.resume:
        raise UserInputError(f"--resume: {args.output!r} holds no run ({config_lib.RUN_CONFIG} missing)")
    if not values.get("records"):
        raise UserInputError("--records DIR is required (a build_records output)")
    return training.TrainConfig(output=args.output, verbose=args.verbose, **values)


@cli_main
def main(argv=None):
    train_config = resolve_config(argv)
    os.makedirs(train_config.output, exist_ok=True)
    values = {key: value for key, value in dataclasses.asdict(train_config).items() if key not in _NOT_CONFIG}
    config_lib.save_run_config(train_config.output, values)
    results = training.train(train_config)
    if results is not None:
        print("\n".join(metrics.format_summary(result, split) for split, result in results.items()))
        print(f"saved model: {os.path.join(train_config.output, 'saved_model')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
