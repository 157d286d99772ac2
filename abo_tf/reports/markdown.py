"""Markdown tables for the reports."""

from abo_tf.reports import metrics


def _line(cells):
    # A "|" would end the cell early and a newline the row: both are common in product names and file paths.
    return (
        "| " + " | ".join(metrics.format_figure(cell).replace("|", "\\|").replace("\n", " ") for cell in cells) + " |"
    )


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
