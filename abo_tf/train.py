"""Train a Keras Applications classifier on the records: `python -m abo_tf.train`.

    python -m abo_tf.train --config pipelines/resnet50_mirrored.toml \\
        --records tfrecords/abo/1.0.0 --output runs/resnet50

A run folder (abo_tf.training.run_folder) gets config.toml (the resolved
config), checkpoints/, logs/ (TensorBoard), history.csv, training_curves.png,
metrics.json, labels.txt, model.keras and saved_model/, once parity.json says
the export computes what was trained (else a one-line error, and none of the
four). Started again with the same command, a killed run resumes from its last
checkpoint; `--resume` takes the config from the folder.
"""

import dataclasses
import os
import sys

from abo_tf.common import config as config_lib
from abo_tf.common import options, outputs
from abo_tf.common.errors import UserInputError, cli_main
from abo_tf.reports import metrics
from abo_tf.training import distribute, loop, models, run_folder


@dataclasses.dataclass(frozen=True)
class TrainOptions(loop.TrainConfig):
    """The train options, and whether to continue the run already in --output."""

    resume: bool = options.option(
        False, help="continue the run in --output with the config saved there", group="run folder", config=False
    )


def _saved_run(args):
    """With --resume, the config saved in --output: the defaults that flags may not change."""
    if not args.resume or not args.output:
        return None
    saved = run_folder.load_config(args.output)
    if saved is None:
        raise UserInputError(
            f"--resume: {args.output!r} holds no run ({run_folder.CONFIG} missing): start it without --resume"
        )
    return options.SavedValues(run_folder.path(args.output, run_folder.CONFIG), saved)


def resolve_config(argv):
    """Flags + TOML + the run folder -> a `TrainConfig`; refuses a folder holding another run."""
    parsed, _ = options.parse(
        TrainOptions,
        argv,
        prog="python -m abo_tf.train",
        description=__doc__.split("\n\n")[0],
        folder_defaults=_saved_run,
    )
    train_config = loop.TrainConfig(
        **{field.name: getattr(parsed, field.name) for field in dataclasses.fields(loop.TrainConfig)}
    )
    models.check_weights(train_config.weights)  # before the output folder is claimed
    # Another command's folder (a build, an evaluate report) has a config.toml too: it is refused when claimed,
    # without a note comparing it as a run's config first.
    outputs.check_apart(train_config.output, "--output", train_config.records)
    own = os.path.isdir(train_config.output) and outputs.owner(train_config.output) in (None, "train")
    saved = run_folder.load_config(train_config.output) if own else None
    changed = config_lib.differences(saved, options.config_values(train_config)) if saved is not None else []
    if changed and not run_folder.has_finished_step(train_config.output):
        print(
            f"note: {train_config.output!r} holds a run that never finished a step, with another config (differs "
            f"in {changed}): this run takes the folder over",
            file=sys.stderr,
        )
    elif changed:
        how = "drop those flags to continue it" if parsed.resume else "pass --resume to continue it"
        raise UserInputError(
            f"--output {train_config.output!r} holds a run with another config (differs in {changed}): "
            f"{how}, or choose another --output"
        )
    return train_config


@cli_main
def main(argv=None):
    train_config = resolve_config(argv)
    if distribute.is_chief_process():  # other workers of a multi-worker run write to temporary folders
        outputs.claim(
            train_config.output, "train", "--output", recognise=run_folder.is_started_run, records=train_config.records
        )
        options.save_config(train_config, train_config.output)
    results = loop.train(train_config)
    if results is not None:
        print("\n".join(metrics.format_summary(result, split) for split, result in results.items()))
        print(f"saved model: {run_folder.path(train_config.output, run_folder.SAVED_MODEL)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
