"""Files of image ids that commands read back (`abo_tf.audit`'s CSVs, or a user's): one reader for all of them.

`build_records --join-near-duplicates` and `--exclude-images`, `evaluate --exclude` and `baselines --exclude`
read their file here, so each refuses the same broken file with the same one line: the flag, the file, the row.
"""

import csv
import os

from abo_tf.common import files
from abo_tf.common.errors import InputNotFoundError, UserInputError

# An ABO image id has 11 characters: a field far longer is not an id, and is refused before it is held.
MAX_FIELD_CHARS = 1000
# A line is refused before the csv module splits it: a 40 MB row of 20 million empty fields took 412 MB as field
# strings (issue 23 review). The audit's widest file (label_issues.csv) has 7 columns.
MAX_LINE_CHARS = 64 * MAX_FIELD_CHARS
SPLITS = ("train", "validation", "test")  # abo_tf.records.split.SPLITS, without importing the build
SPLIT_COLUMNS = ("split", "split_a", "split_b")


def id_file_path(path, flag, default_name):
    """`path`, or `path/default_name` for an audit report folder; a one-line error naming `flag` if there is none."""
    if os.path.isdir(path):
        path = os.path.join(path, default_name)
    if os.path.lexists(path) and not os.path.isfile(path):
        raise UserInputError(
            f"{flag} {path!r} is not a regular file (a FIFO, a device or a broken link): give the {default_name} "
            "of `python -m abo_tf.audit` or its --report folder"
        )
    if not os.path.isfile(path):
        raise InputNotFoundError(
            f"{flag} {path!r} does not exist: give the {default_name} of `python -m abo_tf.audit` "
            "or its --report folder"
        )
    return path


def _checked(row, line, columns, where):
    values = []
    for column in columns:
        value = row.get(column)
        if value is None:
            raise UserInputError(f"{where} line {line} has no {column} value (a short row): fix or remove the row")
        if column in SPLIT_COLUMNS and value not in SPLITS:
            raise UserInputError(f"{where} line {line}: {column} {value!r} is not one of {', '.join(SPLITS)}")
        if not value:
            raise UserInputError(f"{where} line {line}: {column} is empty: every row needs one (fix or remove the row)")
        if len(value) > MAX_FIELD_CHARS:
            raise UserInputError(
                f"{where} line {line}: {column} {value[:40]!r}... is {len(value):,} characters long, more than the "
                f"{MAX_FIELD_CHARS:,} a field of an id file may have"
            )
        values.append(files.from_spreadsheet_safe(value))
    return tuple(values)


def _bounded_lines(handle, where):
    for number, line in enumerate(handle, 1):
        if len(line) > MAX_LINE_CHARS:
            raise UserInputError(
                f"{where} line {number} is {len(line):,} characters long, more than the {MAX_LINE_CHARS:,} a line of "
                "an id file may have"
            )
        yield line


def read_id_rows(path, flag, columns, default_name):
    """The rows of an id CSV as tuples of `columns`.

    The file is UTF-8 (a byte-order mark is skipped), its cells as `files.write_csv` writes them (a leading '
    dropped); every named column must be there, every row must hold a
    value in each, at most MAX_FIELD_CHARS long, and a split column one of SPLITS as written (lower case).

    Args:
      path: the CSV, or a folder holding `default_name`.
      flag: the option that named it, for the errors.
      columns: the column names read.
      default_name: the file looked for in a folder, and named in the errors.

    Raises:
      UserInputError: no such file, or any of the above broken; the message names the flag, file and line.
    """
    path = id_file_path(path, flag, default_name)
    where = f"{flag} {path!r}"
    line = 0  # the last line read: the header's, then a row's
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(_bounded_lines(handle, where))
            missing = [column for column in columns if column not in (reader.fieldnames or ())]
            line = reader.line_num
            if missing:
                raise UserInputError(
                    f"{where} has no {missing[0]} column: give the {default_name} of `python -m abo_tf.audit`"
                )
            rows = []
            for row in reader:
                line = reader.line_num
                rows.append(_checked(row, line, columns, where))
            return rows
    except UnicodeDecodeError as error:  # lines are decoded in chunks: the byte is after the last row read
        raise UserInputError(f"{where} is not UTF-8 ({error.reason} after line {line}): save it as UTF-8") from error
    except csv.Error as error:  # the row being read when it failed follows the last one read
        raise UserInputError(f"{where} line {line + 1} is not CSV ({error}): an id file holds short ids") from error
