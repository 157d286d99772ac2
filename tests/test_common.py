"""abo_tf.common: options declared once, output folder claims, atomic JSON, the quiet console."""

import dataclasses
import io
import json
import os
import re
import subprocess
import sys
import time

import pytest

from abo_tf.common import console, files, options, outputs
from abo_tf.common.errors import UserInputError


@dataclasses.dataclass(frozen=True)
class ExampleOptions:
    records: str = options.option(help="records folder", group="inputs", required=True)
    output: str = options.option("out", help="where to write", group="output", config=False)
    batch_size: int = options.option(64, help="images per batch", minimum=1)
    rate: float = options.option(0.5, help="a rate", minimum=0.0, maximum=1.0)
    split: tuple[float, ...] = options.option((0.8, 0.1, 0.1), help="fractions", flag="--split", nargs=3)
    mode: str = options.option("fast", help="how", choices=("fast", "slow"))
    cache: bool = options.option(False, help="cache")
    limit: int | None = options.option(help="optional limit")


def _parse(argv):
    return options.parse(ExampleOptions, argv, prog="example", description="an example")[0]


def _write(tmp_path, text):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return str(path)


def test_flags_types_and_defaults():
    parsed = _parse(["--records", "r", "--batch-size", "8", "--split", "0.7", "0.2", "0.1", "--cache", "--limit", "3"])
    assert parsed == ExampleOptions(records="r", batch_size=8, split=(0.7, 0.2, 0.1), cache=True, limit=3)


def test_config_gives_defaults_and_flags_override(tmp_path):
    path = _write(tmp_path, '[data]\nrecords = "from-config"\nbatch_size = 16\nrate = 1\nsplit = [0.6, 0.2, 0.2]\n')
    parsed = _parse(["--config", path, "--batch-size", "4"])
    assert (parsed.records, parsed.batch_size, parsed.rate, parsed.split) == ("from-config", 4, 1.0, (0.6, 0.2, 0.2))
    assert isinstance(parsed.rate, float)


@pytest.mark.parametrize(
    "text, message",
    [
        ("records = 5", "records = 5 must be a string"),
        ("batch_size = 1.5", "batch_size = 1.5 must be an integer"),
        ("batch_size = true", "batch_size = True must be an integer"),
        ('rate = "high"', "rate = 'high' must be a number"),
        ("split = 0.5", "split = 0.5 must be a list of numbers"),
        ("cache = 1", "cache = 1 must be true or false"),
        ("batchsize = 3", "unknown keys ['batchsize']"),
        ('output = "elsewhere"', "unknown keys ['output']"),
        ("cache = {a = 1}", "cache = {'a': 1} must be true or false"),  # not "unknown keys ['a']"
        ("[rate]\nlow = 0.1", "rate = {'low': 0.1} must be a number"),
        ("[rate]\nrate = 0.1\nlimt = 1", "unknown keys ['limt']"),  # a group named after an option, with a typo
        ("[a]\nrate = 0.1\n[b]\nrate = 0.2", "sets 'rate' twice"),
        ("records = ", "not valid TOML"),
    ],
)
def test_bad_config_values_are_named(tmp_path, text, message):
    with pytest.raises(UserInputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _parse(["--config", _write(tmp_path, text), "--records", "r"])


@pytest.mark.parametrize(
    "text, message",
    [
        # `split` is the field `split_fractions` of build_records; `model` the field `models` of baselines
        ("split = 0.5", "config '{path}': split = 0.5 must be a list of numbers (like --split)"),
        ("[data]\nsplit = [0.5, 2, 0.1]", "config '{path}': split = [0.5, 2, 0.1]: 2.0 must be at most 1.0"),
        ("batch_size = 0", "config '{path}': batch_size = 0 must be at least 1"),
        ('mode = "quick"', "config '{path}': mode = 'quick': choose one of ('fast', 'slow')"),
        ("split = [0.5]", "config '{path}': split = [0.5]: give 3 values"),
    ],
)
def test_config_errors_name_the_key_as_typed(tmp_path, text, message):
    @dataclasses.dataclass(frozen=True)
    class Renamed(ExampleOptions):
        split_fractions: tuple[float, ...] = options.option(
            (0.8, 0.1, 0.1), help="fractions", flag="--split", nargs=3, minimum=0.0, maximum=1.0
        )
        split: int = options.option(0, help="hidden", cli=False)

    path = _write(tmp_path, text)
    with pytest.raises(UserInputError) as error:
        options.parse(Renamed, ["--config", path, "--records", "r"], prog="example", description="an example")
    assert str(error.value) == message.format(path=path)


@pytest.mark.parametrize(
    "split, message", [((), "--split: give 3 values"), ((0.5, 0.5), "--split 0.5 0.5: give 3 values")]
)
def test_a_list_of_another_length_is_refused(split, message):
    with pytest.raises(UserInputError, match=message):
        options.validate(ExampleOptions(records="r", split=split))


def test_a_config_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "config.toml"
    path.write_bytes(b"\xef\xbb\xbfbatch_size = 16\n")
    assert _parse(["--config", str(path), "--records", "r"]).batch_size == 16


def test_a_table_named_after_an_option_that_holds_options_is_a_group(tmp_path):
    assert _parse(["--config", _write(tmp_path, "[rate]\nrate = 0.25\nlimit = 3"), "--records", "r"]).limit == 3


COMMANDS = (
    "analyze",
    "audit",
    "baselines",
    "build_records",
    "evaluate",
    "export",
    "features",
    "predict",
    "sample",
    "summarize",
    "train",
    "tune",
)


@pytest.mark.parametrize("command", COMMANDS)
def test_flag_errors_are_one_line_with_a_hint_for_every_command(command, capsys):
    """argparse printed its whole usage block before the error (25 lines for train)."""
    import importlib

    module = importlib.import_module(f"abo_tf.{command}")
    with pytest.raises(SystemExit) as caught:
        module.main(["--no-such-flag", "--output", "x"])
    error = capsys.readouterr().err
    assert caught.value.code == 2 and error.count("\n") == 1, error
    assert error.startswith(f"python -m abo_tf.{command}: error: ") and "--help)" in error, error


@pytest.mark.parametrize(
    "text, message",
    [
        ("k" + ".k" * 4_000 + " = 1\n", "line 1 nests keys, tables or arrays 17 deep, more than the 16"),
        ("k" + ".k" * 20_000 + " = 1\n", "line 1 is 40,005 bytes long"),
        ("rate = " + "[\n" * 3000 + "]" * 3000 + "\n", "line 16 nests keys, tables or arrays 17 deep"),
        ("rate = " + "{a=" * 2000 + "1" + "}" * 2000 + "\n", "line 1 nests keys, tables or arrays 17 deep"),
        ("[data]\nrate = " + "{a=" * 2000 + "1" + "}" * 2000 + "\n", "line 2 nests keys"),
        ("[data" + ".a" * 2000 + "]\nrate = 1\n", "line 1 nests keys"),
        ("# " + "x" * 20_000 + "\n", "line 1 is 20,002 bytes long, more than the 10,000"),
        (("# " + "x" * 98 + "\n") * 11_000, "is 1,111,000 bytes, more than the 1,048,576"),
    ],
    ids=["dotted-key", "dotted-key-long", "arrays", "inline-tables", "known-key-table", "header", "long-line", "large"],
)
def test_hostile_config_is_refused_before_parsing(tmp_path, text, message):
    with pytest.raises(UserInputError, match=message) as error:
        _parse(["--config", _write(tmp_path, text), "--records", "r"])
    assert len(str(error.value).splitlines()) == 1


@pytest.mark.parametrize("kind", ["folder", "fifo", "link-loop"])
def test_config_that_is_no_regular_file_is_named_so(tmp_path, kind):
    path = tmp_path / "config.toml"
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        os.symlink(path, path)
    with pytest.raises(UserInputError, match="is not a regular file"):
        _parse(["--config", str(path), "--records", "r"])


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "--records is required"),
        (["--records", "r", "--batch-size", "0"], "--batch-size 0 must be at least 1"),
        (["--records", "r", "--rate", "1.5"], "--rate 1.5 must be at most 1.0"),
        (["--records", "r", "--config", "/nonexistent.toml"], "does not exist"),
    ],
)
def test_bad_flags_are_named(argv, message):
    with pytest.raises(UserInputError, match=message):
        _parse(argv)


def test_every_flag_has_help_and_the_help_shows_defaults(capsys):
    parser = options.build_parser(ExampleOptions, "example", "an example")
    assert all(action.help for action in parser._actions)  # argparse offers no public list
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "inputs:" in text and "(default: 64)" in text and "(required)" in text and "default: None" not in text


def test_saved_config_reproduces_the_options(tmp_path):
    parsed = _parse(["--records", "r", "--rate", "0.25", "--split", "0.5", "0.25", "0.25"])
    path = options.save_config(parsed, str(tmp_path))
    assert "output" not in open(path).read() and "limit" not in open(path).read()
    assert _parse(["--config", path]) == dataclasses.replace(parsed)


@dataclasses.dataclass(frozen=True)
class _RenamedFlag:
    split_fractions: tuple[float, ...] = options.option((0.8, 0.1, 0.1), help="fractions", flag="--split", nargs=3)


def test_saved_config_keys_are_the_flags_names_and_old_keys_still_read(tmp_path):
    parsed = options.parse(_RenamedFlag, ["--split", "0.5", "0.25", "0.25"], prog="x", description="")[0]
    path = options.save_config(parsed, str(tmp_path))
    assert open(path).read().startswith("split = [")  # as --split and the README name it
    assert options.parse(_RenamedFlag, ["--config", path], prog="x", description="")[0] == parsed
    old = _write(tmp_path, "split_fractions = [0.6, 0.2, 0.2]\n")  # a config.toml written before
    read = options.parse(_RenamedFlag, ["--config", old], prog="x", description="")[0]
    assert read.split_fractions == (0.6, 0.2, 0.2)
    both = _write(tmp_path, "split = [0.8, 0.1, 0.1]\nsplit_fractions = [0.6, 0.2, 0.2]\n")  # one of them was dropped
    with pytest.raises(UserInputError, match=r"two keys \['split', 'split_fractions'\]: keep only 'split'"):
        options.parse(_RenamedFlag, ["--config", both], prog="x", description="")


# --- output folders -------------------------------------------------------------


def test_claim_accepts_new_empty_and_own_folders(tmp_path):
    new = outputs.claim(str(tmp_path / "new"), "train")
    assert not new.earlier and os.path.isdir(tmp_path / "new")
    (tmp_path / "new" / "metrics.json").write_text("{}")
    outputs.release(new.path)
    assert outputs.claim(new.path, "train").earlier
    outputs.release(new.path)


@pytest.mark.parametrize(
    "layout, message",
    [
        ({"notes.txt": "mine"}, "not empty and was not written by `abo_tf.train`"),
        ({outputs.MARKER: json.dumps({"command": "evaluate"})}, "holds the output of `abo_tf.evaluate`"),
        ({outputs.MARKER: "not json"}, "is not a valid JSON"),
    ],
)
def test_claim_refuses_other_folders_and_changes_nothing(tmp_path, layout, message):
    folder = tmp_path / "folder"
    folder.mkdir()
    for name, text in layout.items():
        (folder / name).write_text(text)
    with pytest.raises(UserInputError, match=message):
        outputs.claim(str(folder), "train")
    assert {name: (folder / name).read_text() for name in os.listdir(folder)} == layout


@pytest.mark.parametrize(
    "path, message",
    [("{file}", "is a file"), ("{file}/below", "cannot create"), ("/proc/abo_tf_test", "cannot create")],
)
def test_claim_refuses_what_cannot_be_a_folder(tmp_path, path, message):
    (tmp_path / "file").write_text("x")
    with pytest.raises(outputs.OutputFolderError, match=message):
        outputs.claim(path.format(file=tmp_path / "file"), "train")


@pytest.mark.slow
def test_a_second_process_cannot_claim_a_busy_folder(tmp_path):
    folder = outputs.claim(str(tmp_path / "busy"), "train")
    script = f"from abo_tf.common import outputs; outputs.claim({folder.path!r}, 'train')"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode != 0 and "being written by another abo_tf process" in result.stderr
    outputs.release(folder.path)
    assert subprocess.run([sys.executable, "-c", script]).returncode == 0


def test_remove_owned_deletes_only_what_the_command_wrote(tmp_path):
    folder = outputs.claim(str(tmp_path / "records"), "build_records")
    for name in ("abo-train.tfrecord-00000-of-00001", "manifest.json", "notes.txt"):
        (tmp_path / "records" / name).write_text("x")
    (tmp_path / "records" / ".build").mkdir()
    assert outputs.remove_owned(folder, ["abo-*.tfrecord-*", "manifest.json", ".build"]) == ["notes.txt"]
    outputs.release(folder.path)


# --- files ----------------------------------------------------------------------


def test_json_is_written_atomically_with_nan_as_null(tmp_path):
    path = files.write_json(str(tmp_path / "m.json"), {"b": float("nan"), "a": [1.0, float("inf")]})
    assert open(path).read() == '{\n  "a": [\n    1.0,\n    null\n  ],\n  "b": null\n}'
    assert os.listdir(tmp_path) == ["m.json"]
    assert files.read_json(str(tmp_path / "missing.json"), missing="none") == "none"
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UserInputError, match="bad.json.*is not a valid JSON manifest"):
        files.read_json(str(tmp_path / "bad.json"), what="manifest")


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_json_path_that_is_not_a_file_is_refused_before_it_is_opened(tmp_path, kind):
    """--truth /dev/zero ran out of memory; a FIFO blocked the open."""
    path = "/dev/zero" if kind == "device" else str(tmp_path / "fifo")
    if kind == "fifo":
        os.mkfifo(path)
    with pytest.raises(UserInputError, match="is not a regular file"):
        files.read_json(path, what="sample truth")


@pytest.mark.skipif(not os.path.isfile("/proc/self/pagemap"), reason="Linux /proc")
def test_a_json_file_of_size_0_that_reads_on_is_refused_at_the_limit(tmp_path):
    # /proc/self/pagemap says 0 bytes and reads on for hundreds of GB: sized first, it was read whole.
    with pytest.raises(UserInputError, match="longer than its size says, more than the 1,000 a JSON sample truth"):
        files.read_json("/proc/self/pagemap", what="sample truth", max_bytes=1000)
    (tmp_path / "at.json").write_text('["' + "x" * 996 + '"]')  # exactly the limit: read
    assert len(files.read_json(str(tmp_path / "at.json"), max_bytes=1000)[0]) == 996


# --- console --------------------------------------------------------------------


@pytest.mark.slow
def test_tensorflow_start_up_is_silent_unless_verbose():
    script = "import abo_tf, tensorflow as tf; print(int(tf.constant(1) + 1))"
    environment = {
        key: value for key, value in os.environ.items() if key not in ("TF_CPP_MIN_LOG_LEVEL", console.VERBOSE_ENV)
    }
    quiet = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "2\n", "")
    loud = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env={**environment, console.VERBOSE_ENV: "1"}
    )
    assert loud.returncode == 0 and loud.stderr  # the banner this hides exists on this machine


def test_progress_in_a_log_is_plain_lines(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    for _ in console.progress_bar(range(1000), desc="work"):
        pass
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text and text.endswith("\n") and "1000/1000" in text


def _command_options():
    from abo_tf import build_records, features, predict, sample, summarize, train
    from abo_tf.auditing import audit
    from abo_tf.classical import baseline
    from abo_tf.conversion import exporting
    from abo_tf.reports import data_report, evaluation
    from abo_tf.tuning import search

    return [
        data_report.AnalyzeOptions,
        audit.AuditOptions,
        baseline.BaselineConfig,
        build_records.BuildCommandOptions,
        evaluation.EvaluateOptions,
        features.ExtractOptions,
        predict.PredictOptions,
        sample.SampleOptions,
        train.TrainOptions,
        search.TuneOptions,
        exporting.ExportOptions,
        summarize.SummarizeOptions,
    ]


def test_help_shows_one_default_per_option_as_typed():
    """`--workers` showed two defaults, `--split` a Python tuple, an empty string `(default: )` (issue 22)."""
    for options_class in _command_options():
        text = " ".join(options.build_parser(options_class, "prog", "").format_help().split())
        for fragment in ("(default: ()", "(default: )", "(default: None)", "(default: [", "(default: False)"):
            assert fragment not in text, (options_class.__name__, fragment)
        for spec in options.specs(options_class):
            flag_help = text.split(spec.flag, 1)[1].split(" --", 1)[0] if spec.flag in text else ""
            assert flag_help.count("(default") <= 1, (options_class.__name__, spec.flag, flag_help)


def test_every_number_option_of_every_command_is_bounded_at_both_ends():
    """A number without a bound reached NumPy or memory first: a seed of -1, a batch of 2**40 (issue 23)."""
    unbounded = [
        f"{options_class.__name__} {spec.flag}"
        for options_class in _command_options()
        for spec in options.specs(options_class)
        if spec.kind in (int, float) and None in (spec.metadata["minimum"], spec.metadata["maximum"])
    ]
    assert not unbounded


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seed", "-1"], "--seed -1 must be at least 0"),
        (["--seed", str(2**64)], f"--seed {2**64} must be at most 4294967295"),
        (["--batch-size", str(2**40)], f"--batch-size {2**40} must be at most 8192"),
        (["--image-size", "100000"], "--image-size 100000 must be at most 1024"),
        (["--learning-rate", "1e308"], "--learning-rate 1e+308 must be at most 10.0"),
    ],
)
def test_train_numbers_past_their_bounds_are_one_line(tmp_path, argv, message):
    from abo_tf import train

    with pytest.raises(UserInputError, match=re.escape(message)):
        options.parse(train.TrainOptions, ["--records", "r", "--output", str(tmp_path), *argv], "train", "")


def test_search_ranges_and_other_commands_share_the_bounds(tmp_path):
    from abo_tf.reports import evaluation
    from abo_tf.tuning import search, space

    with pytest.raises(UserInputError, match="--calibration-bins 100000000 must be at most 1000"):
        evaluation.EvaluateOptions(model="m", records="r", report="x", calibration_bins=10**8)
    base = search.base_train_config(search.TuneOptions(records="r", output=str(tmp_path), search={"dropout": {}}))
    for name in ("image_size", "batch_size"):
        with pytest.raises(space.SearchSpaceError, match=f"{name}: the value 100000 is refused: .* at most"):
            space.parse_space({name: {"low": 64, "high": 100_000}}, base)


@pytest.mark.parametrize(
    "cell, written",
    [
        ('=HYPERLINK("http://x","y")', "'=HYPERLINK"),
        ("+cmd|' /C calc'!A0", "'+cmd"),
        ("@SUM(1)", "'@SUM(1)"),
        ("-2+3", "'-2+3"),
        ("'quoted", "''quoted"),
        ("-0.5", "-0.5"),  # a number is harmless
        ("CELLULAR_PHONE_CASE", "CELLULAR_PHONE_CASE"),
    ],
)
def test_csv_cells_a_spreadsheet_would_run_are_quoted_and_read_back(tmp_path, cell, written):
    import pandas as pd

    from abo_tf.common import id_files

    path = files.write_csv(pd.DataFrame({"image_id": [cell], "n": [-1]}), str(tmp_path / "ids.csv"))
    assert open(path).read().splitlines()[1].lstrip('"').startswith(written)
    assert id_files.read_id_rows(path, "--exclude-images", ("image_id",), "ids.csv") == [(cell,)]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--records", "r", "--rate", "-inf"], "--rate -inf must be a finite number"),  # a number, not a flag
    ],
)
def test_negative_numbers_are_numbers(argv, message):
    with pytest.raises(UserInputError, match=re.escape(message)):
        _parse(argv)


def test_repeated_flags_join_lists_keep_the_last_scalar_and_configs_override_in_order(tmp_path):
    first = _write(tmp_path, 'records = "a"\nbatch_size = 16\nrate = 0.1\n')
    second = tmp_path / "second.toml"
    second.write_text("batch_size = 32\n")
    argv = ["--config", first, "--config", str(second), "--limit", "1", "--limit", "2"]
    parsed = options.parse(ListOptions, [*argv, "--models", "a", "b", "--models", "c"], "example", "")[0]
    assert (parsed.records, parsed.batch_size, parsed.rate, parsed.limit) == ("a", 32, 0.1, 2)
    assert parsed.models == ("a", "b", "c")
    assert options.parse(ListOptions, argv, "example", "")[0].models == ("x",)  # the default, not extended


@dataclasses.dataclass(frozen=True)
class ListOptions(ExampleOptions):
    models: tuple[str, ...] = options.option(("x",), help="models")


def test_a_config_of_many_unknown_keys_is_a_short_line(tmp_path):
    text = "".join(f"k{index}=1\n" for index in range(100_000))  # 888,890 bytes: under the size limit
    with pytest.raises(UserInputError, match=r"and 99980 more: allowed are") as error:
        _parse(["--config", _write(tmp_path, text), "--records", "r"])
    assert len(str(error.value)) < 2000


def test_a_dangling_link_as_output_is_named_so(tmp_path):
    (tmp_path / "out").symlink_to(tmp_path / "nowhere")
    with pytest.raises(outputs.OutputFolderError, match="is a link to nothing"):
        outputs.claim(str(tmp_path / "out"), "train")


def test_measured_peak_counts_a_child_in_its_parents_address_space_once(tmp_path):
    """A child between vfork and exec shows its parent's RSS in /proc: summed, an audit of 860 MB read 2.05 GB.

    The child waits on a FIFO in posix_spawn's file actions, inside the parent's address space, until released.
    """
    import threading

    from abo_tf.testing import measure

    fifo, pid_file = tmp_path / "fifo", tmp_path / "pid"
    os.mkfifo(fifo)
    script = (
        "import os, sys\n"
        "held = bytearray(200 << 20)\n"
        "held[::4096] = bytes(len(held[::4096]))  # resident\n"
        "open(sys.argv[2] + '.tmp', 'w').write(str(os.getpid()))\n"
        "os.rename(sys.argv[2] + '.tmp', sys.argv[2])\n"
        "wait = [(os.POSIX_SPAWN_OPEN, 0, sys.argv[1], os.O_RDONLY, 0)]\n"
        "os.posix_spawn('/bin/true', ['true'], {}, file_actions=wait)\n"
    )

    def release():  # 0.5 s (50 samples) after the child is there, open the FIFO's other end
        while not pid_file.exists():
            time.sleep(0.01)
        children = f"/proc/{pid_file.read_text()}/task/{pid_file.read_text()}/children"
        while os.path.exists(children) and not open(children).read().strip():
            time.sleep(0.01)
        time.sleep(0.5)
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    threading.Thread(target=release, daemon=True).start()
    code, _, stderr, peak = measure.run_measured([sys.executable, "-c", script, str(fifo), str(pid_file)], timeout=60)
    assert code == 0, stderr
    assert 200 * 2**20 < peak < 300 * 2**20, peak  # 421 MB when the child was counted with the parent's RSS
