"""Markdown tables of the reports: cells formatted one way everywhere, a table that cannot be broken by a cell."""

import math

import pytest

from abo_tf.reports import markdown


@pytest.mark.parametrize(
    "cell, written",
    [
        (0.12345, "0.123"),  # floats: 3 decimals
        (2, "2"),  # ints as they are
        (None, "n/a"),
        (math.nan, "n/a"),
        ("12.3", "12.3"),  # a string is already formatted: kept
        ("a|b", "a\\|b"),  # an escaped pipe stays in its cell
        ("two\nlines", "two lines"),  # a newline would end the row
        ('<img src="http://x/a.png">', '&lt;img src="http://x/a.png"&gt;'),  # HTML is shown, not rendered
        ("![a](http://x/a.png)", "![a\\](http://x/a.png)"),  # nor a Markdown image
        ("a\\|b & c", "a\\\\\\|b &amp; c"),
    ],
)
def test_cells_are_formatted_and_escaped(cell, written):
    assert markdown.table([["x", cell]], ["name", "value"]).splitlines()[2] == f"| x | {written} |"


def test_table_has_a_header_a_separator_and_a_line_per_row():
    text = markdown.table([("logreg", 0.5), ("sgd", 0.25)], ["model", "macro F1"])
    assert text == "| model | macro F1 |\n|---|---|\n| logreg | 0.500 |\n| sgd | 0.250 |"
    assert markdown.table([], ["model"]) == "| model |\n|---|"


@pytest.mark.parametrize("row", [["only one"], ["one", "two", "three"]])
def test_a_row_of_the_wrong_width_is_refused(row):
    with pytest.raises(ValueError, match="cells under 2 columns"):
        markdown.table([row], ["a", "b"])
