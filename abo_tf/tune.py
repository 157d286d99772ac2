"""Hyperparameter search for the CNN with Optuna: `python -m abo_tf.tune`.

    python -m abo_tf.tune --config pipelines/demo.toml --records demo/records --output demo/tune --trials 8

The `[search]` table of --config names train options and their ranges or choices;
the rest of the file (and the flags) is the default config every trial starts
from, queued as the first trial. Each trial is an ordinary training run in
TUNE_DIR/trials/NNNN/, not exported (a search point: train best.toml for a
model); each epoch's validation metric goes to Optuna's pruner.
The study lives in TUNE_DIR/study.journal (or --storage URL), so the same
command after a kill continues it, and several processes (machines, with a
shared --storage database) can run it at once: the study ends with exactly
--trials finished trials. Then the --rerun-top best configs are trained again
with --rerun-seeds new seeds (TUNE_DIR/reruns/). TUNE_DIR gets trials.csv,
reruns.csv, best.toml (the train config of the best mean over the re-runs) and
report.md with Optuna's figures and each re-run config's mean ± sd.

On several machines: give every worker the same command with a shared database,

    python -m abo_tf.tune --config pipelines/resnet50_mirrored.toml --records /shared/records \
        --output /shared/tune --storage postgresql://user@db-host/abo --study resnet50

(one per machine; each trial uses every GPU of its machine). Trials are numbered by
the database, so no number is used twice; a worker that dies stops beating and its
trial is marked failed and queued again by the others. --output must be a folder
all workers see (trials/NNNN/ and the reports are written there).
"""

import sys

from abo_tf.common import options
from abo_tf.common.errors import cli_main
from abo_tf.tuning import report, reruns, search


@cli_main
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    tune_options, _ = options.parse(
        search.TuneOptions, argv, prog="python -m abo_tf.tune", description=__doc__.split("\n\n")[0]
    )
    study_flag_given = any(arg == "--study" or arg.startswith("--study=") for arg in argv)
    opened = search.open_search(tune_options, study_flag_given)
    search.run_trials(opened, progress=tune_options.progress)
    reruns.run_reruns(opened)
    print(report.write_all(opened, reruns.results(opened)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
