"""The README's measured figures are rendered from benchmarks/results/, never typed: a stale block fails here."""

import importlib.util
import json
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def readme_script():
    import sys

    sys.path.insert(0, os.path.join(REPO, "benchmarks"))  # the script imports benchmarks/shared.py
    spec = importlib.util.spec_from_file_location("readme", os.path.join(REPO, "benchmarks", "readme.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_readme_block_matches_its_results(readme_script):
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as handle:
        text = handle.read()
    blocks = readme_script._BLOCK.findall(text)
    assert blocks, "README.md has no rendered block"
    assert readme_script.stale_blocks(text) == [], "run `make readme`"


def test_a_hand_edited_figure_is_caught(readme_script):
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as handle:
        text = handle.read()
    match = next(match for match in readme_script._BLOCK.finditer(text) if "|" in match.group("body"))
    body = match.group("body")
    edited = text.replace(body, body.replace("|", "| 9", 1), 1)
    assert readme_script.stale_blocks(edited) == [match.group("name")]


def test_a_block_whose_results_were_never_recorded_says_how_to_record_them(readme_script):
    assert readme_script.render_test_suite(None).startswith("Not recorded yet: `make record-tests` writes")
    assert "make record-demo" in readme_script.render_demo_evaluation({"summary": {}})


def test_an_unknown_block_is_named(readme_script):
    with pytest.raises(readme_script.ResultsError, match="no_such_results"):
        readme_script.render("<!-- results:no_such_results -->\nx\n<!-- /results:no_such_results -->")


def _damaged(text):
    """Damages of a results file a crash, a hand edit or a merge can leave."""
    without_strata, wrong_type = json.loads(text), json.loads(text)
    del without_strata["evaluation"]["strata"]
    wrong_type["evaluation"]["macro_f1"] = "0.5"
    return {
        "truncated": text[: len(text) // 2],
        "empty": "",
        "a list": "[1, 2]",
        "missing key": json.dumps(without_strata),
        "wrong type": json.dumps(wrong_type),
    }


@pytest.mark.parametrize("damage", ["truncated", "empty", "a list", "missing key", "wrong type", "a folder"])
def test_a_damaged_results_file_is_one_line_naming_it(readme_script, tmp_path, monkeypatch, capsys, damage):
    with open(os.path.join(REPO, "benchmarks", "results", "demo.json"), encoding="utf-8") as handle:
        text = handle.read()
    results = tmp_path / "results"
    results.mkdir()
    if damage == "a folder":
        (results / "demo.json").mkdir()
    else:
        (results / "demo.json").write_text(_damaged(text)[damage], encoding="utf-8")
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:demo_evaluation -->\nold\n<!-- /results:demo_evaluation -->\n", encoding="utf-8")
    monkeypatch.setattr(readme_script.shared, "results_path", lambda name: str(results / name))
    monkeypatch.setattr(readme_script, "README", str(readme))
    assert readme_script.main(["--check"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: benchmarks/results/demo.json ") and error.count("\n") == 1, error
