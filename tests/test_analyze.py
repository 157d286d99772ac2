"""`python -m abo_tf.analyze` on the generated sample: the report counts what the generator planted."""

import os

import pandas as pd
import pytest

from abo_tf import analyze
from abo_tf.reports import data_report, metrics


@pytest.fixture(scope="module")
def analysis(abo_sample, built_records, tmp_path_factory):
    records_dir, _ = built_records
    report = str(tmp_path_factory.mktemp("analysis") / "report")
    args = [
        "--listings",
        abo_sample["listings"],
        "--images",
        abo_sample["images"],
        "--records",
        records_dir,
        "--report",
        report,
        "--no-progress",
    ]
    assert analyze.main(args) == 0
    overview = pd.read_csv(os.path.join(report, "overview.csv"))
    return report, dict(zip(overview["quantity"], overview["value"]))


def test_every_figure_has_its_table(analysis):
    report, _ = analysis
    figures = [name for name in os.listdir(report) if name.endswith(".png")]
    assert sorted(figures) == sorted(
        ["class_distribution.png", "languages.png", "image_sizes.png", "sharing.png", "missing_fields.png", "build.png"]
    )
    markdown = open(os.path.join(report, "report.md")).read()
    for name in figures:
        assert os.path.getsize(os.path.join(report, name)) > 5000 and f"({name})" in markdown
    for table in (
        "overview",
        "class_distribution",
        "languages",
        "image_sizes",
        "images_per_listing",
        "listings_per_image",
        "group_sizes",
        "label_conflicts",
        "missing_fields",
        "build_drops",
        "split_balance",
    ):
        assert os.path.getsize(os.path.join(report, f"{table}.csv")) > 0, table


def test_the_class_table_lists_every_type_or_says_how_many_it_left_out(analysis):
    report, _ = analysis
    markdown = open(os.path.join(report, "report.md")).read()
    types = len(pd.read_csv(os.path.join(report, "class_distribution.csv")))
    section = markdown.split("## Classes", 1)[1].split("## Languages", 1)[0]
    class_table = next(block for block in section.split("\n\n") if block.startswith("| product_type"))
    listed = len(class_table.splitlines()) - 2  # the header and its rule
    if types > listed:
        assert f"{types - listed} more are left out here: all {types} in [class_distribution.csv]" in section
    else:
        assert "left out" not in section


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
    # The boilerplate image joins every listing that shows it into one group.
    assert overview["largest connected group: listings"] >= listings


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
    assert (balance[["train_groups", "validation_groups", "test_groups"]] >= 1).all().all()
    assert (balance["test_groups"] <= balance["test"]).all()
    markdown = open(os.path.join(report, "report.md")).read()
    assert "test: 0 classes without an image, fewest groups of a class 1" in markdown
    # The strata are evaluate's: training examples per class, the same thresholds.
    distribution = pd.read_csv(os.path.join(report, "class_distribution.csv"), keep_default_na=False)
    classes = distribution.set_index("product_type").loc[manifest["classes"]]
    assert classes["train_examples"].tolist() == metrics.train_counts(manifest).tolist()
    assert classes["stratum"].tolist() == metrics.frequency_strata(classes["train_examples"]).tolist()
    others = distribution[~distribution["product_type"].isin(manifest["classes"])]
    assert (others["stratum"] == data_report.NOT_A_CLASS).all()
    drops = pd.read_csv(os.path.join(report, "build_drops.csv"))
    assert drops[drops["stage"] == "images"]["count"].sum() == sum(manifest["images"]["dropped"].values())


def test_missing_input_is_a_one_line_error(tmp_path, capsys):
    code = analyze.main(
        [
            "--listings",
            str(tmp_path / "nope"),
            "--images",
            str(tmp_path / "nope"),
            "--report",
            str(tmp_path / "r"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "does not exist" in err and "\n" not in err


def test_without_inputs_the_download_is_looked_for_in_data(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert analyze.main(["--report", str(tmp_path / "r")]) == 2
    error = capsys.readouterr().err.strip()
    assert "data/abo-listings.tar" in error and "data/listings/metadata" in error and len(error.splitlines()) == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "layout, expected",
    [
        (
            ["data/abo-listings.tar", "data/abo-images-small.tar"],
            ("data/abo-listings.tar", "data/abo-images-small.tar"),
        ),
        (["data/listings/metadata/", "data/images/metadata/images.csv.gz"], ("data", "data")),
    ],
)
def test_download_forms_under_data(tmp_path, monkeypatch, layout, expected):
    from abo_tf.records import download

    monkeypatch.chdir(tmp_path)
    for path in layout:
        os.makedirs(os.path.dirname(path) if not path.endswith("/") else path, exist_ok=True)
        if not path.endswith("/"):
            open(path, "wb").close()
    assert download.locate() == expected
    assert download.locate("mine.tar", None) == ("mine.tar", expected[1])


def test_config_file_and_resolved_config(analysis, abo_sample, tmp_path):
    report, _ = analysis
    saved = open(os.path.join(report, "config.toml")).read()
    assert f'listings = "{abo_sample["listings"]}"' in saved and "head_min = 1000" in saved and "report" not in saved


def test_a_config_value_of_the_wrong_type_is_one_line(tmp_path, capsys):
    config = tmp_path / "analyze.toml"
    config.write_text('[report]\nhead_min = "many"\n')
    assert analyze.main(["--config", str(config), "--report", str(tmp_path / "r")]) == 2
    error = capsys.readouterr().err.strip()
    assert "head_min = 'many' must be an integer" in error and len(error.splitlines()) == 1


@pytest.mark.slow
def test_a_hundred_thousand_product_types_stay_within_the_memory_budget(tmp_path):
    """One listing per product type (2 MB of gzip): the report must not draw a bar per type (it took 2 GB)."""
    import gzip
    import json
    import sys

    from abo_tf.testing import measure

    root, count = tmp_path / "abo", 100_000
    for folder in ("listings/metadata", "images/metadata", "images/small"):
        (root / folder).mkdir(parents=True)
    with gzip.open(root / "listings/metadata/listings_0.json.gz", "wt") as handle:
        for index in range(count):
            handle.write(
                json.dumps(
                    {
                        "item_id": f"I{index}",
                        "domain_name": "amazon.com",
                        "main_image_id": f"M{index}",
                        "product_type": [{"value": f"T{index}"}],
                    }
                )
                + "\n"
            )
    with gzip.open(root / "images/metadata/images.csv.gz", "wt") as handle:
        handle.write(
            "image_id,height,width,path\n" + "".join(f"M{index},9,9,00/{index:08x}.jpg\n" for index in range(count))
        )
    code, _, stderr, peak = measure.run_measured(
        [
            sys.executable,
            "-m",
            "abo_tf.analyze",
            "--listings",
            str(root),
            "--images",
            str(root),
            "--report",
            str(tmp_path / "report"),
            "--no-progress",
        ],
        timeout=300,
    )
    assert code == 0, stderr[-2000:]
    assert peak < 1.5e9, f"peak RSS {peak / 2**20:.0f} MB"
    assert len(pd.read_csv(tmp_path / "report" / "class_distribution.csv")) == count
