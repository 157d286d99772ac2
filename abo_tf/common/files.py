"""Files every command writes the same way: JSON written atomically, read with a named error."""

import json
import math
import os

from abo_tf.common.errors import UserInputError


def _without_nan(value):
    """NaN/inf -> None, recursively: JSON has no NaN, and `null` says "undefined" to every reader."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _without_nan(entry) for key, entry in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nan(entry) for entry in value]
    return value


def write_json(path, value, indent=2):
    """Writes `value` to `path` under a temporary name, then renames: a reader never sees half a file.

    Keys are sorted and NaN becomes null, so the same value always gives the same bytes.
    """
    temporary = f"{path}.tmp-{os.getpid()}"
    try:  # dumps, not dump: dump never uses the C encoder (10x slower on a shard's 20k-image result)
        text = json.dumps(value, indent=indent, sort_keys=True, allow_nan=False)
    except ValueError:  # a NaN somewhere: walk the value
        text = json.dumps(_without_nan(value), indent=indent, sort_keys=True, allow_nan=False)
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(temporary, path)
    return path


def read_json(path, what="file", missing=None, max_bytes=None, remedy="move it away or choose another folder"):
    """The JSON value in `path`; `missing` when there is no such file.

    Args:
      max_bytes: a larger file is refused before it is read (for a file a user gives: parsed JSON takes 4 times its
        size in memory for a sample's truth, 26 times for a list of empty objects).
      remedy: what the error tells the user to do about an invalid file (the default fits a file inside an output
        folder; a file given by a flag names what to give instead).

    Raises:
      UserInputError: the file is not JSON, or larger than `max_bytes` (it names the file and what it should be).
    """
    # Refused before opening: a FIFO blocks the open, and /dev/zero as --truth ran out of memory (issue 23 review).
    if os.path.exists(path) and not os.path.isfile(path) and not os.path.isdir(path):
        raise UserInputError(f"{path!r} is not a regular file (a FIFO or a device): give a JSON {what}")
    try:
        return json.loads(_text(path, what, max_bytes))
    except FileNotFoundError:
        return missing
    except UserInputError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError) as error:
        raise UserInputError(f"{path!r} is not a valid JSON {what} ({error}): {remedy}") from error
    except IsADirectoryError as error:
        raise UserInputError(f"{path!r} is a folder, expected a JSON {what}") from error


def _text(path, what, max_bytes):
    """The UTF-8 text of `path`, read up to `max_bytes` (refused beyond)."""
    if max_bytes is None:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    size = os.path.getsize(path)
    data = b""
    if size <= max_bytes:
        # Read up to the limit too: /proc/self/pagemap is a regular file of size 0 that reads on for hundreds of
        # GB, and a file may grow after it was sized.
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    if size > max_bytes or len(data) > max_bytes:
        shown = f"{size:,} bytes" if size > max_bytes else "longer than its size says"
        raise UserInputError(f"{path!r} is {shown}, more than the {max_bytes:,} a JSON {what} may have")
    return data.decode("utf-8")


# A cell a spreadsheet would run as a formula (`=HYPERLINK(...)`, `+cmd|...`, `@SUM(1)`; OWASP's CSV injection
# list): ids and product types come from the listings, so every CSV a user may open is written through write_csv.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
SPREADSHEET_QUOTE = "'"


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def spreadsheet_safe(value):
    """`value` with a ' before a text that starts a formula (a number such as "-0.5" is left alone).

    A text that starts with ' gets one more, so `from_spreadsheet_safe` gives every text back exactly.
    """
    if not isinstance(value, str):
        return value
    if value.startswith(SPREADSHEET_QUOTE) or (value.startswith(_FORMULA_STARTS) and not _is_number(value)):
        return SPREADSHEET_QUOTE + value
    return value


def from_spreadsheet_safe(text):
    """The text `spreadsheet_safe` was given, for readers of the CSVs the commands write."""
    return text[1:] if text.startswith(SPREADSHEET_QUOTE) else text


def write_csv(frame, path, index=False):
    """Writes a pandas DataFrame as CSV with every text cell, header and index label `spreadsheet_safe`."""
    import pandas as pd

    safe = frame.copy()
    for column in safe.columns:
        if pd.api.types.is_object_dtype(safe[column]) or pd.api.types.is_string_dtype(safe[column]):
            safe[column] = safe[column].map(spreadsheet_safe).astype(object)
    safe.columns = [spreadsheet_safe(column) for column in safe.columns]
    if index:
        safe.index = safe.index.map(spreadsheet_safe)
    safe.to_csv(path, index=index)
    return path
