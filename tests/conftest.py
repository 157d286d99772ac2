"""Shared fixtures: one generated ABO sample and one build of it, reused across test modules."""

import os

# Before NumPy loads OpenBLAS. The tests' matrices are tiny, and two xdist workers with two BLAS threads
# each spin against each other on 2 cores: a logistic regression that fits in 0.09 s took 3.6 s.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest  # noqa: E402

from abo_tf.records import build as records_build  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SAMPLE_LISTINGS = 240
# A run that exercises the loop, not the model: small backbone, 32 px, a few steps.
TINY_TRAIN_ARGS = [
    "--model",
    "mobilenet_v3_small",
    "--weights",
    "none",
    "--image-size",
    "32",
    "--batch-size",
    "8",
    "--steps-per-epoch",
    "2",
    "--validation-steps",
    "1",
    "--no-progress",
]
# What `trained_run` trains beyond TINY_TRAIN_ARGS.
TRAINED_RUN_ARGS = ("--epochs", "2", "--head-epochs", "1", "--class-weights", "sqrt")


@pytest.fixture(scope="session")
def abo_sample(tmp_path_factory):
    """A generated ABO download (both .tar files) and the generator's truth."""
    from abo_tf.testing import synthetic_abo as sample

    root = tmp_path_factory.mktemp("abo_tar")
    truth = sample.generate_sample(str(root / "abo"), num_listings=SAMPLE_LISTINGS, seed=0, tar=True, max_side=128)
    return {
        "root": str(root / "abo"),
        "listings": str(root / "abo" / "abo-listings.tar"),
        "images": str(root / "abo" / "abo-images-small.tar"),
        "truth": truth,
    }


@pytest.fixture(scope="session")
def abo_folder_sample(tmp_path_factory):
    """The same sample, extracted: the folders a user gets from `tar xf`."""
    from abo_tf.testing import synthetic_abo as sample

    root = tmp_path_factory.mktemp("abo_folder")
    truth = sample.generate_sample(str(root / "abo"), num_listings=SAMPLE_LISTINGS, seed=0, tar=False, max_side=128)
    return {"root": str(root / "abo"), "truth": truth}


def build_options(abo, output, **overrides):
    values = dict(
        listings=abo["listings"],
        images=abo["images"],
        output=str(output),
        image_selection="all",
        min_examples_per_class=3,
        workers=2,
        progress=False,
    )
    values.update(overrides)
    return records_build.BuildOptions(**values)


@pytest.fixture(scope="session")
def built_records(abo_sample, tmp_path_factory):
    """The sample built with every image of every listing; returns (output folder, manifest)."""
    output = tmp_path_factory.mktemp("records") / "abo"
    manifest = records_build.build(build_options(abo_sample, output))
    return str(output), manifest


@pytest.fixture(scope="session")
def trained_run(built_records, tmp_path_factory):
    """A finished tiny training run on `built_records` (two phases, sqrt class weights)."""
    from abo_tf import train

    output = str(tmp_path_factory.mktemp("run") / "run")
    args = [
        "--records",
        built_records[0],
        "--output",
        output,
        *TINY_TRAIN_ARGS,
        *TRAINED_RUN_ARGS,
    ]
    assert train.main(args) == 0
    return output


# Fixtures that train: the tiny CNN run (about 20 s) and test_baselines' four searched baselines (about 15 s).
SLOW_FIXTURES = frozenset({"trained_run", "trained"})


# Under `-n 2` the tests of each fixture here run on one worker, which makes it once: dealt test by test, both workers
# made each (the tiny run is 26 CPU s). One group a test, the first of its fixtures here (a test in two groups would
# be a third unit, and both workers would make the fixtures again). xdist's `--dist loadgroup` groups tests by their
# xdist_group mark by renaming them (item._nodeid), which pytest 9's item.nodeid no longer reads: every test stayed
# a group of its own. So each worker writes {test id: group} once it has collected, and the scheduler below reads it.
SHARED_FIXTURES = ("trained_run", "averaged_run", "trained")
GROUPS_FILE = "fixture_groups.json"

# The longest tests start first (tests/longest.json: "file::test" -> its seconds in a profile, per parameter): under
# `-n 2` one of them started last is a long tail with one core idle. The scheduler sends a worker one group (most are
# a single test) at a time, in this order.
LONGEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "longest.json")


def _longest_first(items):
    import json

    with open(LONGEST, encoding="utf-8") as handle:
        seconds = json.load(handle)

    def expected(item):
        return seconds.get(item.nodeid.split("[")[0], 0)

    longest = sorted((item for item in items if expected(item)), key=expected, reverse=True)
    items[:] = longest + [item for item in items if not expected(item)]  # the rest in collection order


def _write_groups(config, items):
    """On an xdist worker: {test id: shared fixture} into the session's folder, for the controller's scheduler."""
    import json

    if not hasattr(config, "workerinput"):
        return
    groups = {}
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        group = next((name for name in SHARED_FIXTURES if name in fixtures), None)
        if group is not None:
            groups[item.nodeid] = group
    session = os.path.dirname(config.option.basetemp)  # each worker's is <session>/popen-gwN, made when first used
    # Both workers write the same groups: each into a file of its own, renamed at once (the controller reads whole).
    staging = os.path.join(session, f"{GROUPS_FILE}.{config.workerinput['workerid']}")
    with open(staging, "w", encoding="utf-8") as handle:
        json.dump(groups, handle)
    os.replace(staging, os.path.join(session, GROUPS_FILE))


def pytest_collection_modifyitems(config, items):
    """A test that needs a trained model is slow (`make test-fast` leaves it out); the tests of a shared fixture go to
    one worker; the longest tests go first."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    _longest_first(items)
    _write_groups(config, items)


def pytest_xdist_make_scheduler(config, log):
    """Under `-n` (--dist load): units of one test, or of every test of a shared fixture, in collection order."""
    if config.getvalue("dist") != "load":
        return None
    import json

    from xdist.scheduler import LoadScopeScheduling

    class FixtureGroupScheduling(LoadScopeScheduling):
        groups = {}

        def schedule(self):
            if self.collection is None:  # every worker has collected, so written the groups
                path = config._tmp_path_factory.getbasetemp() / GROUPS_FILE
                self.groups = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
            super().schedule()

        def _split_scope(self, nodeid):
            return self.groups.get(nodeid, nodeid)

    config.option.loadscopereorder = False  # the units in collection order (longest first), not largest first
    return FixtureGroupScheduling(config, log)


# `make record-tests`: the suite's size and time go to a JSON file that benchmarks/readme.py renders into the README.
SUITE_REPORT_ENV = "ABO_TF_SUITE_REPORT"


def pytest_sessionstart(session):
    import time

    session.config._abo_tf_started = time.monotonic()


def _slowest_tests(stats, count=5):
    """The `count` tests of longest setup + call (a session fixture's cost lands on its first test)."""
    seconds = {}
    for reports in stats.values():
        for report in reports:
            if getattr(report, "when", None) in ("setup", "call"):
                seconds[report.nodeid] = seconds.get(report.nodeid, 0.0) + report.duration
    ranked = sorted(seconds.items(), key=lambda item: -item[1])[:count]
    return [{"test": nodeid, "seconds": round(duration, 1)} for nodeid, duration in ranked]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Writes {collected, passed, failed, skipped, seconds, machine} where ABO_TF_SUITE_REPORT says (controller)."""
    path = os.environ.get(SUITE_REPORT_ENV)
    if not path or hasattr(config, "workerinput"):
        return
    import json
    import time

    from abo_tf.testing import measure

    stats = terminalreporter.stats
    outcomes = {name: len(stats.get(name, [])) for name in ("passed", "failed", "error", "skipped", "deselected")}
    report = {
        # Under xdist the controller collects nothing itself (_numcollected is 0): every test ends in one outcome.
        "collected": sum(outcomes.values()),
        "passed": outcomes["passed"],
        "failed": outcomes["failed"] + outcomes["error"],
        "skipped": outcomes["skipped"],
        "deselected": outcomes["deselected"],
        "seconds": time.monotonic() - config._abo_tf_started,
        "machine": measure.machine(),
        "slowest": _slowest_tests(stats),
    }
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2, sort_keys=True)
