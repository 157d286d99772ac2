"""Markdown tables for the reports."""

import html

from abo_tf.reports import metrics


def cell(value):
    """A table cell's text: formatted as `metrics.format_figure` does, and inert.

    A "|" would end the cell early and a newline the row (both common in product names and file paths); HTML
    and Markdown links in an id or a product type are shown as text, never rendered: `<img src=...>` or
    `![](...)` in report.md fetched a remote URL when viewed (issue 23).
    """
    text = html.escape(metrics.format_figure(value), quote=False).replace("\\", "\\\\").replace("|", "\\|")
    # A link or image needs "](": escaping that bracket is enough, and keeps intervals "[0.70, 0.77]" readable.
    return text.replace("](", "\\](").replace("\r", " ").replace("\n", " ")


def _line(cells):
    return "| " + " | ".join(cell(value) for value in cells) + " |"


def table(rows, columns):
    """A GitHub-flavoured Markdown table.

    Args:
      rows: sequences of cells, one per column. Floats are written with 3
        decimals, None and NaN as "n/a" (`metrics.format_figure`); format a
        cell first for another precision.
      columns: the header cells.

    Returns:
      The table's lines joined by newlines, without a final newline.

    Raises:
      ValueError: a row has another number of cells than `columns` (a bug of the caller).
    """
    lines = [_line(columns), "|" + "---|" * len(columns)]
    for row in rows:
        row = list(row)
        if len(row) != len(columns):
            raise ValueError(f"a Markdown row of {len(row)} cells under {len(columns)} columns: {row}")
        lines.append(_line(row))
    return "\n".join(lines)
