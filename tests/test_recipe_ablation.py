"""The recipe ablation's variants differ from the old recipe by their part only, and its summary is over seeds."""

import importlib.util
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script(name):
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))  # the scripts import benchmarks/shared.py
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ablation():
    return _script("recipe_ablation")


def test_each_variant_is_the_old_recipe_with_its_part_only(ablation):
    old = ablation.variant_overrides("old")
    assert old == {**ablation.OLD, "keep": "best"}  # the best checkpoint is kept for the --keep best row
    for variant, part in {**ablation.PARTS, **ablation.EXTRAS}.items():
        changed = {key for key, value in ablation.variant_overrides(variant).items() if ablation.OLD.get(key) != value}
        assert changed == {key for key, value in part.items() if ablation.OLD.get(key) != value}, variant
    every_part = ablation.variant_overrides("all")
    assert every_part["loss"] == "logit_adjusted" and "sampling" not in every_part  # extras are alternatives


def test_every_variant_has_a_readme_row():
    assert set(_script("recipe_ablation").VARIANTS) <= set(_script("readme")._ABLATION_ROWS)


def test_summary_is_mean_and_sample_sd_over_seeds_and_derived_rows_read_the_old_runs(ablation):
    def record(f1, best_f1):
        figures = {"validation": {"macro_f1": f1}, "test": {"macro_f1": f1}}
        best = {"validation": {"macro_f1": best_f1}, "test": {"macro_f1": best_f1}}
        return {"figures": figures, "keep_best": best, "seconds": 10.0}

    runs = [record(0.5, 0.6), record(0.7, 0.6)]
    table = ablation.summarise({"old": runs, "keep_best": runs})
    assert table["old"]["validation"]["macro_f1"] == pytest.approx({"mean": 0.6, "sd": 0.1414213562})
    assert table["keep_best"]["test"]["macro_f1"] == {"mean": 0.6, "sd": 0.0}
    assert table["old"]["seeds"] == 2 and "seconds" not in table["keep_best"]


def test_the_old_recipe_runs_first_for_every_seed_then_each_seed_in_turn(ablation):
    order = ablation.run_order(("old", "ema", "keep_best", "all"), range(2))
    baseline = [(0, "old"), (0, "keep_best"), (1, "old"), (1, "keep_best")]
    assert order == baseline + [(0, "ema"), (0, "all"), (1, "ema"), (1, "all")]
