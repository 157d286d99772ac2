"""`python -m abo_tf.analyze` on the generated sample: the report counts what the generator planted."""

import os

import pandas as pd
import pytest

from abo_tf import analyze
from abo_tf.reports import data_report


@pytest.fixture(scope="module")
def analysis(abo_sample, built_records, tmp_path_factory):
    records_dir, _ = built_records
    report = str(tmp_path_factory.mktemp("analysis") / "report")
    args = ["--listings", abo_sample["listings"], "--images", abo_sample["images"], "--records", records_dir, "--report", report, "--no-progress"]
    assert analyze.main(args) == 0
    overview = pd.read_csv(os.path.join(report, "overview.csv"))
    return report, dict(zip(overview["quantity"], overview["value"]))


def test_every_figure_has_its_table(analysis):
    report, _ = analysis
    figures = [name for name in os.listdir(report) if name.endswith(".png")]
    assert sorted(figures) == sorted(["class_distribution.png", "languages.png", "image_sizes.png", "sharing.png", "missing_fields.png", "build.png"])
    markdown = open(os.path.join(report, "report.md")).read()
    for name in figures:
        assert os.path.getsize(os.path.join(report, name)) > 5000 and f"({name})" in markdown
    for table in ("overview", "class_distribution", "languages", "image_sizes", "images_per_listing", "listings_per_image",
                  "group_sizes", "label_conflicts", "missing_fields", "build_drops", "split_balance"):
        assert os.path.getsize(os.path.join(report, f"{table}.csv")) > 0, table


def test_counts_match_what_the_generator_planted(analysis, abo_sample):
    report, overview = analysis
    truth = abo_sample["truth"]
    assert overview["listing lines read"] == truth["num_lines"]
    assert overview["malformed lines (skipped, counted)"] == len(truth["malformed_lines"])
    assert overview["listings"] == truth["num_listings"]
    assert overview["listings without a main image"] == len(truth["no_main_image"])
    assert overview["item ids"] == truth["num_items"]
    assert overview["item ids under more than one product type"] == len(truth["conflicting_items"])
    assert overview["referenced, not in images.csv.gz"] == len(truth["missing_from_csv"])
    assert overview["referenced, file missing from the archive"] == len(truth["missing_from_archive"])
    conflicts = pd.read_csv(os.path.join(report, "label_conflicts.csv"))
    assert set(truth["conflicting_images"]) <= set(conflicts["image_id"])
    distribution = pd.read_csv(os.path.join(report, "class_distribution.csv"))
    assert dict(zip(distribution["product_type"], distribution["listings"])) == truth["listings_per_type"]
    sharing = pd.read_csv(os.path.join(report, "listings_per_image.csv"))
    boilerplate, listings = next(iter(truth["boilerplate_images"].items()))
    assert sharing["listings"].max() == listings
    assert overview["largest connected group: images"] >= 1


def test_tables_are_consistent(analysis, built_records):
    report, overview = analysis
    _, manifest = built_records
    per_listing = pd.read_csv(os.path.join(report, "images_per_listing.csv"))
    assert per_listing["listings"].sum() == overview["listings"]
    languages = pd.read_csv(os.path.join(report, "languages.csv"))
    assert set(languages["field"]) <= set(data_report.LOCALISED_FIELDS)
    assert languages.groupby("field")["share_of_field"].sum().round(6).eq(1).all()
    missing = pd.read_csv(os.path.join(report, "missing_fields.csv")).set_index("key")
    assert missing.loc["item_id", "missing_share"] == 0 and not missing.loc["extra_field_v2", "documented"]
    balance = pd.read_csv(os.path.join(report, "split_balance.csv"))
    assert balance["class"].tolist() == manifest["classes"]
    assert balance["train"].sum() == manifest["splits"]["train"]["num_examples"]
    drops = pd.read_csv(os.path.join(report, "build_drops.csv"))
    assert drops[drops["stage"] == "images"]["count"].sum() == sum(manifest["images"]["dropped"].values())


def test_missing_input_is_a_one_line_error(tmp_path, capsys):
    code = analyze.main(["--listings", str(tmp_path / "nope"), "--images", str(tmp_path / "nope"), "--report", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "does not exist" in err and "\n" not in err
