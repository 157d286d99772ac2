"""The data-analysis report on the raw ABO files (the library of `python -m abo_tf.analyze`).

    python -m abo_tf.analyze --listings abo-listings.tar --images abo-images-small.tar \\
        --records tfrecords/abo/1.0.0 --report reports/data

Reads the downloads through the build's own reader (`abo_tf.records.archive`: folders
or tars, malformed lines counted) and writes `report.md` with PNG figures.
Every figure is drawn from a table written next to it as CSV:

    overview.csv            listings, images, items, conflicts, sharing: one number per row
    class_distribution.csv  listings and images per product type; with --records its training examples and stratum
    languages.csv           language tags per localised field
    image_sizes.csv         original image sides (images.csv.gz) and small file sizes, binned
    images_per_listing.csv  how many images a listing shows
    listings_per_image.csv  how many listings show an image (sharing)
    group_sizes.csv         connected groups of images (shared images, shared item ids)
    label_conflicts.csv     images shown by listings of different product types
    missing_fields.csv      listings without each key
    build_drops.csv, split_balance.csv   with --records: what the build kept and dropped

An image's product type is resolved by the build's rule (majority of its
listings, `abo_tf.records.labels`). The frequency strata are every report's: training
examples per class in the build's train split (`metrics.train_counts`), so they need --records.
"""

import collections
import dataclasses
import os

import numpy as np

from abo_tf.common import console, files, outputs
from abo_tf.common import options as options_lib
from abo_tf.records import archive, download, labels, shards
from abo_tf.records import split as split_lib
from abo_tf.reports import figures, markdown, metrics

# Localised text fields: lists of {"language_tag", "value"} (docs/abo-format.md).
LOCALISED_FIELDS = archive.LOCALISED_LISTING_KEYS
TOP_LANGUAGES = 8  # per field in the figure; the CSV has every tag
MAX_BARS = 2000  # product types drawn as bars; ABO has 576
UNTAGGED = "(no tag)"
NOT_A_CLASS = "not a class"  # the stratum of a product type the build did not keep


@dataclasses.dataclass(frozen=True)
class AnalyzeOptions:
    """Inputs of an analysis; `python -m abo_tf.analyze --help` documents each."""

    listings: str | None = options_lib.option(
        help=f"abo-listings.tar or the folder it was extracted into (default: looked for under {download.DATA_DIR}/)",
        group="inputs (folders or the .tar files as downloaded)",
    )
    images: str | None = options_lib.option(
        help=f"abo-images-small.tar or the folder it was extracted into (default: looked for under "
        f"{download.DATA_DIR}/)",
        group="inputs (folders or the .tar files as downloaded)",
    )
    records: str | None = options_lib.option(
        help="a build_records output, to report what the build kept and dropped",
        group="inputs (folders or the .tar files as downloaded)",
    )
    report: str = options_lib.option(
        help="folder for report.md, the CSV tables and the figures", group="report", required=True, config=False
    )
    head_min: int = metrics.head_min_option()
    tail_below: int = metrics.tail_below_option()
    progress: bool = options_lib.option(True, help="progress bars", group=options_lib.CONSOLE_GROUP, config=False)

    def __post_init__(self):
        options_lib.validate(self)
        metrics.check_strata_options(self.head_min, self.tail_below)


# --- one pass over the listings ------------------------------------------------


@dataclasses.dataclass
class ListingsTally:
    """What the listings say, accumulated line by line."""

    listings: list = dataclasses.field(default_factory=list)  # archive.Listing
    languages: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # (field, tag) -> values
    present_keys: collections.Counter = dataclasses.field(
        default_factory=collections.Counter
    )  # key -> listings with a value
    report: archive.ListingsReport = dataclasses.field(default_factory=archive.ListingsReport)


def _has_value(value):
    return value not in (None, "", [], {})


def _count_languages(record, tally):
    for field in LOCALISED_FIELDS:
        for entry in record.get(field) or []:
            if isinstance(entry, dict):
                tally.languages[(field, entry.get("language_tag") or UNTAGGED)] += 1


def read_tally(path, progress=True):
    """Streams the listings once, keeping the parsed listings and the per-key counts.

    Returns:
      A `ListingsTally`; `tally.report` counts lines read and malformed.
    """
    tally = ListingsTally()
    with console.progress_bar(desc="listings", unit=" listings", enabled=progress) as bar:
        for record, source in archive.read_listing_records(path, tally.report):
            tally.listings.append(archive.parse_listing(record, source))
            tally.present_keys.update(key for key, value in record.items() if _has_value(value))
            _count_languages(record, tally)
            bar.update()
    return tally


# --- tables ----------------------------------------------------------------------


def class_distribution(listings, manifest, head_min, tail_below):
    """Listings and images per product type (images by the build's conflict rule), most images first.

    With a build's `manifest`, also its training examples and stratum (`metrics.frequency_strata`, as every
    report counts them); a type the build did not keep as a class has stratum "not a class".
    """
    import pandas as pd

    listing_counts = collections.Counter(listing.product_type or "(none)" for listing in listings)
    image_types, _ = labels.resolve_image_types(_types_per_image(listings))
    image_counts = collections.Counter(image_types.values())
    names = sorted(
        set(listing_counts) | set(image_counts), key=lambda name: (-image_counts[name], -listing_counts[name], name)
    )
    table = pd.DataFrame(
        {
            "product_type": names,
            "listings": [listing_counts[name] for name in names],
            "images": [image_counts[name] for name in names],
        }
    )
    if manifest:
        classes = dict(zip(manifest["classes"], metrics.train_counts(manifest), strict=True))
        kept = table["product_type"].isin(list(classes))
        table["train_examples"] = [classes.get(name, 0) for name in names]
        strata = metrics.frequency_strata(table["train_examples"].to_numpy(), head_min, tail_below)
        table["stratum"] = np.where(kept, strata, NOT_A_CLASS) if names else []
    return table


def _types_per_image(listings):
    """Image id -> product types of the listings showing it (listings without a type left out)."""
    types = collections.defaultdict(list)
    for listing in listings:
        if listing.product_type:
            for image_id in listing.image_ids:
                types[image_id].append(listing.product_type)
    return types


def label_conflicts(listings):
    """Images shown by listings of more than one product type, with the type the build gives them."""
    import pandas as pd

    per_image = _types_per_image(listings)
    resolved, _ = labels.resolve_image_types(per_image)
    rows = []
    for image_id, types in sorted(per_image.items()):
        counts = collections.Counter(types)
        if len(counts) > 1:
            rows.append(
                {
                    "image_id": image_id,
                    "listing_types": "; ".join(f"{name}:{count}" for name, count in sorted(counts.items())),
                    "resolved_type": resolved[image_id],
                }
            )
    return pd.DataFrame(rows, columns=["image_id", "listing_types", "resolved_type"])


def languages_table(tally):
    """Values per (localised field, language tag), most frequent first within a field."""
    import pandas as pd

    rows = [{"field": field, "language_tag": tag, "values": count} for (field, tag), count in tally.languages.items()]
    frame = pd.DataFrame(rows, columns=["field", "language_tag", "values"])
    frame["share_of_field"] = frame["values"] / frame.groupby("field")["values"].transform("sum") if len(frame) else []
    return frame.sort_values(["field", "values", "language_tag"], ascending=[True, False, True], kind="stable")


def missing_fields(tally):
    """For every key seen or documented: listings with a non-empty value, and the share without."""
    import pandas as pd

    total = len(tally.listings)
    keys = sorted(archive.KNOWN_LISTING_KEYS | set(tally.present_keys))
    frame = pd.DataFrame({"key": keys, "listings_with_value": [tally.present_keys[key] for key in keys]})
    frame["missing_share"] = 1 - frame["listings_with_value"] / total if total else np.nan
    frame["documented"] = [key in archive.KNOWN_LISTING_KEYS for key in keys]
    return frame.sort_values(["missing_share", "key"], ascending=[False, True], kind="stable")


def _count_table(counter, key, value):
    import pandas as pd

    items = sorted(counter.items())
    return pd.DataFrame({key: [item[0] for item in items], value: [item[1] for item in items]})


def sharing(listings):
    """Listings per image, images per listing and connected group sizes.

    Groups are those the split keeps together: images joined by a listing, an
    item id or (here, without reading bytes) nothing else.

    Returns:
      Dict of DataFrames ("images_per_listing", "listings_per_image",
      "group_sizes") and "largest_group" (images, listings).
    """
    listings_per_image = collections.Counter()
    ids_per_listing = []
    for listing in listings:
        ids = listing.image_ids
        listings_per_image.update(ids)
        ids_per_listing.append((listing.item_id, ids))
    group_of = split_lib.group_images(ids_per_listing, {image_id: image_id for image_id in listings_per_image})
    images_per_group = collections.Counter(group_of.values())
    listings_per_group = collections.Counter(group_of[ids[0]] for _, ids in ids_per_listing if ids)
    largest = max(images_per_group, key=lambda key: (images_per_group[key], listings_per_group[key], key), default=None)
    return {
        "images_per_listing": _count_table(
            collections.Counter(len(ids) for _, ids in ids_per_listing), "images", "listings"
        ),
        "listings_per_image": _count_table(collections.Counter(listings_per_image.values()), "listings", "images"),
        "group_sizes": _count_table(collections.Counter(images_per_group.values()), "images_in_group", "groups"),
        "largest_group": (images_per_group.get(largest, 0), listings_per_group.get(largest, 0)),
        "shared_images": sum(count > 1 for count in listings_per_image.values()),
        "referenced": set(listings_per_image),
    }


def _log_bins(values, bins_per_decade=8):
    values = np.asarray(values, dtype=np.float64)
    values = values[values > 0]
    if not len(values):
        return np.array([1.0, 10.0])
    low, high = np.floor(np.log10(values.min())), np.ceil(np.log10(values.max()) + 1e-9)
    return np.logspace(low, max(high, low + 1), int(max(high - low, 1) * bins_per_decade) + 1)


def image_sizes(store):
    """Binned original sides (height, width from images.csv.gz) and small file sizes (KB)."""
    import pandas as pd

    quantities = {
        "original_height_px": [row.height for row in store.rows.values()],
        "original_width_px": [row.width for row in store.rows.values()],
        "small_file_kb": [size / 1024 for _, size in store.locations.values()],
    }
    frames = []
    for name, values in quantities.items():
        edges = _log_bins(values)
        counts, _ = np.histogram(values, edges)
        frames.append(
            pd.DataFrame({"quantity": name, "bin_lower": edges[:-1], "bin_upper": edges[1:], "images": counts})
        )
    medians = {name: float(np.median(values)) if values else float("nan") for name, values in quantities.items()}
    return pd.concat(frames, ignore_index=True), medians


def build_tables(manifest):
    """From a build's manifest: drops by stage and reason, and images (and groups) per class and split.

    `NAME_groups` counts the split's groups with an image of the class (the split's unit: images joined by
    listing, item or bytes); a build from before the class-aware split has no such column.
    """
    import pandas as pd

    drops = [
        {"stage": stage, "reason": reason, "count": count}
        for stage in ("listings", "images")
        for reason, count in sorted(manifest[stage]["dropped"].items())
    ]
    drops = pd.DataFrame(drops, columns=["stage", "reason", "count"])
    splits = [name for name in split_lib.SPLITS if name in manifest["splits"]]
    balance = pd.DataFrame({"class": manifest["classes"]})
    for name in splits:
        balance[name] = shards.examples_per_class(manifest, name)
    totals = balance[splits].sum(axis=1).replace(0, np.nan)
    for name in splits:
        balance[f"{name}_share"] = balance[name] / totals
    for name in splits:
        groups = manifest["splits"][name].get("groups_per_class")
        if groups is not None:
            balance[f"{name}_groups"] = [groups.get(label, 0) for label in manifest["classes"]]
    return drops, balance


# --- figures ---------------------------------------------------------------------


def plot_class_distribution(table, head_min, tail_below, path):
    """Images per type, log scale, coloured by the training-example stratum (grey without --records)."""
    plt = figures.pyplot()
    figure, axis = plt.subplots(figsize=(10, 4.5))
    counts = np.maximum(table["images"].to_numpy(), 0.8)  # a log axis cannot show zero: a sliver
    colours = {**metrics.STRATUM_COLOURS, NOT_A_CLASS: "lightgray"}
    stratum = table["stratum"] if "stratum" in table else table["product_type"].map(lambda _: NOT_A_CLASS)
    shown = [name for name in colours if (stratum == name).any()]
    if len(table) <= MAX_BARS:
        axis.bar(range(len(table)), counts, width=1.0, color=[colours[name] for name in stratum])
    else:  # a bar per type costs memory and time by the hundred thousand; one filled area per stratum does not
        for name in shown:
            inside = (stratum == name).to_numpy()
            axis.fill_between(
                np.arange(len(table)),
                counts,
                0.8,
                where=inside,
                step="mid",
                color=colours[name],
                linewidth=0,
            )
    axis.set_yscale("log")
    if len(table) <= 40:
        axis.set_xticks(range(len(table)), table["product_type"], rotation=90, fontsize=7)
    else:
        axis.set_xticks([])
    axis.set_xlabel(f"{len(table)} product types, most images first")
    axis.set_ylabel("images (log)")
    share = table["images"].iloc[0] / max(table["images"].sum(), 1) if len(table) else 0
    axis.set_title(f"class distribution: the largest type has {share:.0%} of the images")
    if "stratum" in table:  # the thresholds count training examples, not this axis's images: named, not drawn
        handles = [plt.Rectangle((0, 0), 1, 1, color=colours[name]) for name in shown]
        title = f"stratum (training examples:\nhead >= {head_min}, tail < {tail_below})"
        axis.legend(handles, shown, title=title, fontsize=8, title_fontsize=8, loc="upper right")
    return figures.save(figure, path)


def plot_languages(table, path):
    plt = figures.pyplot()
    fields = sorted(table["field"].unique())
    figure, axis = plt.subplots(figsize=(9, 0.5 * max(len(fields), 2) + 1.5))
    top = table.groupby("language_tag")["values"].sum().sort_values(ascending=False).index[:TOP_LANGUAGES].tolist()
    left = np.zeros(len(fields))
    colours = plt.get_cmap("tab10")
    for index, tag in enumerate(top + ["other"]):
        shares = []
        for field in fields:
            rows = table[table["field"] == field]
            chosen = rows["language_tag"].isin(top) if tag == "other" else rows["language_tag"] == tag
            shares.append(rows.loc[~chosen if tag == "other" else chosen, "share_of_field"].sum())
        axis.barh(fields, shares, left=left, color=colours(index % 10), label=tag)
        left += shares
    axis.set_xlim(0, 1)
    axis.set_xlabel("share of the field's values")
    axis.set_title("language tags per localised field")
    axis.legend(fontsize=7, ncol=min(5, len(top) + 1), loc="upper center", bbox_to_anchor=(0.5, -0.25))
    return figures.save(figure, path)


def plot_image_sizes(table, path):
    plt = figures.pyplot()
    names = list(dict.fromkeys(table["quantity"]))
    figure, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.5), squeeze=False)
    for axis, name in zip(axes[0], names):
        rows = table[table["quantity"] == name]
        axis.bar(
            rows["bin_lower"],
            rows["images"],
            width=rows["bin_upper"] - rows["bin_lower"],
            align="edge",
            edgecolor="black",
        )
        axis.set_xscale("log")
        axis.set_title(name.replace("_", " "))
        axis.set_ylabel("images")
    return figures.save(figure, path)


def plot_sharing(tables, path):
    plt = figures.pyplot()
    panels = (
        ("images_per_listing", "images", "listings", "images per listing", False),
        ("listings_per_image", "listings", "images", "listings showing one image", True),
        ("group_sizes", "images_in_group", "groups", "connected groups (images)", True),
    )
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for axis, (name, key, value, title, log) in zip(axes, panels):
        frame = tables[name]
        if log:
            axis.scatter(frame[key], frame[value], s=12)
            axis.set_xscale("log")
            axis.set_yscale("log")
        else:
            axis.bar(frame[key], frame[value])
        axis.set_xlabel(key.replace("_", " "))
        axis.set_ylabel(value)
        axis.set_title(title)
    return figures.save(figure, path)


def plot_missing_fields(table, path):
    plt = figures.pyplot()
    figure, axis = plt.subplots(figsize=(7, 0.22 * len(table) + 1.5))
    axis.barh(
        table["key"],
        table["missing_share"],
        color=["tab:blue" if documented else "tab:gray" for documented in table["documented"]],
    )
    axis.invert_yaxis()
    axis.set_xlim(0, 1)
    axis.set_xlabel("share of listings without a value (gray: undocumented key)")
    axis.tick_params(axis="y", labelsize=7)
    axis.set_title("missing fields")
    return figures.save(figure, path)


def plot_build(drops, balance, path):
    plt = figures.pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    labels_ = [f"{stage}: {reason}" for stage, reason in zip(drops["stage"], drops["reason"])]
    left.barh(labels_, drops["count"])
    left.set_xscale("log")
    left.set_xlim(0.5, max(drops["count"].max() if len(drops) else 1, 1) * 4)  # bars of 1 visible, room for counts
    left.set_xlabel("listings or images dropped (log scale)")
    for position, count in enumerate(drops["count"]):
        left.text(count, position, f" {count:,}", va="center", fontsize=7)
    left.invert_yaxis()
    left.tick_params(axis="y", labelsize=7)
    left.set_title("dropped by the build, by reason")
    shares = [column for column in balance.columns if column.endswith("_share")]
    bottom = np.zeros(len(balance))
    for column in shares:
        values = balance[column].fillna(0).to_numpy()
        right.bar(range(len(balance)), values, bottom=bottom, label=column.removesuffix("_share"), width=0.9)
        bottom += values
    if len(balance) <= 40:
        right.set_xticks(range(len(balance)), balance["class"], rotation=90, fontsize=7)
    else:
        right.set_xlabel(f"{len(balance)} classes, in label order")
    right.set_ylabel("share of the class's examples")
    right.set_title("split balance per class")
    right.legend(fontsize=8)
    return figures.save(figure, path)


# --- the report --------------------------------------------------------------------


def _overview(tally, store, share, conflicts, medians):
    listings = tally.listings
    referenced = share["referenced"]
    return [
        ("listing lines read", tally.report.lines_read),
        ("malformed lines (skipped, counted)", len(tally.report.malformed_lines)),
        ("listings", len(listings)),
        ("item ids", len({listing.item_id for listing in listings})),
        ("marketplaces (domain names)", len({listing.domain_name for listing in listings})),
        ("listings without a product type", sum(listing.product_type is None for listing in listings)),
        ("listings without a main image", sum(listing.main_image_id is None for listing in listings)),
        ("listings without any image", sum(not listing.image_ids for listing in listings)),
        ("product types", len({listing.product_type for listing in listings if listing.product_type})),
        ("images in images.csv.gz", len(store.rows)),
        ("image files in the archive", len(store.locations)),
        ("images referenced by listings", len(referenced)),
        ("referenced, not in images.csv.gz", len(referenced - set(store.rows))),
        (
            "referenced, file missing from the archive",
            sum(image_id in store.rows and store.rows[image_id].path not in store.locations for image_id in referenced),
        ),
        ("in images.csv.gz, referenced by no listing", len(set(store.rows) - referenced)),
        ("images shown by more than one listing", share["shared_images"]),
        ("largest connected group: images", share["largest_group"][0]),
        ("largest connected group: listings", share["largest_group"][1]),
        ("item ids under more than one product type", labels.count_conflicting_items(listings)),
        ("images shown by listings of different product types", len(conflicts)),
        ("median original height (px)", medians["original_height_px"]),
        ("median original width (px)", medians["original_width_px"]),
        ("median small file size (KB)", round(medians["small_file_kb"], 1)),
    ]


def _markdown_table(frame, columns, limit=None, csv_name=None):
    """The first `limit` rows of a DataFrame's `columns` as a Markdown table (`reports.markdown`); a cut table says
    how many rows it left out and which CSV holds them all."""
    shown = frame if limit is None else frame.head(limit)
    table = markdown.table(shown[columns].itertuples(index=False, name=None), columns)
    if len(shown) == len(frame):
        return table
    where = f": all {len(frame)} in [{csv_name}]({csv_name})" if csv_name else ""
    return f"{table}\n\nThe first {len(shown)} rows; {len(frame) - len(shown)} more are left out here{where}."


def _strata_lines(options, distribution):
    """The Classes section's strata: their definition and a table, or why there are none (no --records)."""
    if "stratum" not in distribution:
        return [
            "No frequency strata: they count training examples per class (as `evaluate` does), which needs "
            "`--records`.",
        ]
    strata = (
        distribution.groupby("stratum")[["images", "train_examples"]]
        .agg({"images": ["count", "sum"], "train_examples": "sum"})
        .reindex([*metrics.STRATA, NOT_A_CLASS])
        .fillna(0)
        .astype(int)
    )
    rows = [(name, *row) for name, row in zip(strata.index, strata.itertuples(index=False), strict=True) if row[0]]
    return [
        f"Strata by training examples per class (the build's train split, as `evaluate` counts them): head >= "
        f'{options.head_min}, tail < {options.tail_below}; "{NOT_A_CLASS}": a type the build did not keep.',
        "",
        markdown.table(rows, ["stratum", "product types", "images", "training examples"]),
    ]


def _report(options, overview, tables, has_build):
    distribution = tables["class_distribution"]
    columns = ["product_type", "listings", "images"]
    columns += ["train_examples", "stratum"] if "stratum" in distribution else []
    lines = [
        "# ABO data analysis",
        "",
        f"Listings: `{options.listings}`; images: `{options.images}`"
        + (f"; records: `{options.records}`" if options.records else "")
        + ".",
        "Every figure is drawn from the CSV of the same name in this folder.",
        "",
        "## Overview",
        "",
        "| | |",
        "|---|---|",
    ]
    lines += [f"| {name} | {value} |" for name, value in overview]
    lines += [
        "",
        "## Classes",
        "",
        "Images per product type on a log scale. Plain accuracy is dominated by the largest types: report macro "
        "averages.",
        "",
        "![class distribution](class_distribution.png)",
        "",
        *_strata_lines(options, distribution),
        "",
        _markdown_table(distribution, columns, 15, "class_distribution.csv"),
        "",
        "## Languages",
        "",
        "![languages](languages.png)",
        "",
        "## Images",
        "",
        "Original sides come from images.csv.gz (the small files are at most 256 px); file sizes are those of the "
        "images archive.",
        "",
        "![image sizes](image_sizes.png)",
        "",
        "## Sharing and groups",
        "",
        "Images shown by several listings, and the connected groups (listings sharing an image or an item id) that "
        "the split keeps whole. "
        "A few boilerplate images shown by very many listings join most of the data into one group; the build "
        "drops images shown by more than "
        "`--max-listings-per-image` listings (default 50), which breaks it.",
        "",
        "![sharing](sharing.png)",
        "",
        "## Label conflicts",
        "",
        f"{len(tables['label_conflicts'])} images are shown by listings of different product types; the build "
        f"gives each the type of most of its listings "
        "(ties: alphabetically first). First rows of `label_conflicts.csv`:",
        "",
        _markdown_table(
            tables["label_conflicts"], ["image_id", "listing_types", "resolved_type"], 10, "label_conflicts.csv"
        ),
        "",
        "## Missing fields",
        "",
        "![missing fields](missing_fields.png)",
        "",
    ]
    if has_build:
        lines += [
            "## What the build kept",
            "",
            "![build](build.png)",
            "",
            _markdown_table(tables["build_drops"], ["stage", "reason", "count"]),
            "",
            _split_coverage(tables["split_balance"]),
            "",
        ]
    return "\n".join(lines)


def _split_coverage(balance):
    """One sentence: per split, the classes without an image and the fewest groups of a class."""
    parts = []
    for name in split_lib.SPLITS:
        if name in balance:
            fewest = (
                f", fewest groups of a class {balance[f'{name}_groups'].min()}" if f"{name}_groups" in balance else ""
            )
            parts.append(f"{name}: {int((balance[name] == 0).sum())} classes without an image{fewest}")
    return f"Per split (all of it in `split_balance.csv`): {'; '.join(parts)}."


def analyze(options):
    """Reads the raw files (and a build's manifest) and writes the report.

    Args:
      options: an `AnalyzeOptions`.

    Returns:
      Dict name -> DataFrame of every table written (as `name`.csv).

    Raises:
      UserInputError: unreadable inputs, an unwritable report folder, bad thresholds.
    """
    import pandas as pd

    listings_path, images_path = download.locate(options.listings, options.images)
    options = dataclasses.replace(options, listings=listings_path, images=images_path)
    manifest = shards.read_manifest(options.records) if options.records else None
    outputs.claim(options.report, "analyze", "--report")
    options_lib.save_config(options, options.report)
    tally = read_tally(options.listings, options.progress)
    store = archive.open_images(options.images)
    share = sharing(tally.listings)
    tables = {
        "class_distribution": class_distribution(tally.listings, manifest, options.head_min, options.tail_below),
        "languages": languages_table(tally),
        "images_per_listing": share["images_per_listing"],
        "listings_per_image": share["listings_per_image"],
        "group_sizes": share["group_sizes"],
        "label_conflicts": label_conflicts(tally.listings),
        "missing_fields": missing_fields(tally),
    }
    tables["image_sizes"], medians = image_sizes(store)
    overview = _overview(tally, store, share, tables["label_conflicts"], medians)
    tables["overview"] = pd.DataFrame(overview, columns=["quantity", "value"], dtype=object)  # counts stay ints
    if manifest:
        tables["build_drops"], tables["split_balance"] = build_tables(manifest)
    for name, frame in tables.items():
        files.write_csv(frame, os.path.join(options.report, f"{name}.csv"))
    report = options.report
    plot_class_distribution(
        tables["class_distribution"],
        options.head_min,
        options.tail_below,
        os.path.join(report, "class_distribution.png"),
    )
    plot_languages(tables["languages"], os.path.join(report, "languages.png"))
    plot_image_sizes(tables["image_sizes"], os.path.join(report, "image_sizes.png"))
    plot_sharing(tables, os.path.join(report, "sharing.png"))
    plot_missing_fields(tables["missing_fields"], os.path.join(report, "missing_fields.png"))
    if manifest:
        plot_build(tables["build_drops"], tables["split_balance"], os.path.join(report, "build.png"))
    with open(os.path.join(report, "report.md"), "w", encoding="utf-8") as handle:
        handle.write(_report(options, overview, tables, manifest is not None))
    return tables
