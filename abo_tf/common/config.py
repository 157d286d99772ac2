"""TOML configs: read with their tables flattened, written as every command's resolved `config.toml`.

A TOML file may group keys in tables (`[model]`, `[training]`, ...) for reading;
the tables are flattened. Which keys a command accepts, and their types, is
checked by `abo_tf.common.options`.
"""

import os
import tomllib

import tomli_w

from abo_tf.common.errors import InputNotFoundError, UserInputError

RUN_CONFIG = "config.toml"
# A table kept whole, not flattened: `abo_tf.tune`'s search space (`learning_rate = { low = 1e-4, high = 3e-3 }`)
# names train options, so flattened it would clash with their values. Commands without a `search` option skip it.
WHOLE_TABLES = ("search",)


# Checked before tomllib reads a byte: its memory grows with the square of a dotted key's depth (a 129 KB key of
# 20,000 parts took a command past 2.3 GB) and nesting 3,000 deep raises RecursionError (issue 23). The
# project's configs are under 2 KB, 120 characters a line, keys 2 parts and values 2 levels deep.
MAX_CONFIG_BYTES = 1 << 20
MAX_LINE_CHARS = 10_000
MAX_DEPTH = 16  # brackets and braces open at once, and parts of a dotted key or table header


def _string_end(text, start):
    """Index after the TOML string opening at `start` (basic, literal, or their multi-line forms); len if unclosed."""
    quote = text[start : start + 3] if text[start : start + 3] in ('"""', "'''") else text[start]
    position = start + len(quote)
    while True:
        end = text.find(quote, position)
        if end < 0:
            return len(text)
        backslashes = end - len(text[:end].rstrip("\\"))
        if quote[0] == '"' and backslashes % 2:  # an escaped quote: not the end
            position = end + 1
            continue
        end += len(quote)
        if len(quote) == 3:  # up to two quotes of content may come before a closing triple quote
            extra = 0
            while end < len(text) and text[end] == quote[0] and extra < 2:
                end, extra = end + 1, extra + 1
        return end


def _depth_errors(text):
    """Yields the first (line, depth) where brackets, braces and a dotted key's parts nest past MAX_DEPTH.

    Strings and comments are skipped; a key (a table header's, a line's or an inline table's) counts one level a
    part, on top of the brackets and braces open around it.
    """
    open_brackets, key_parts, in_key, line, position = [], 1, True, 1, 0
    while position < len(text):
        character = text[position]
        if character in "\"'":
            position = _string_end(text, position)
            continue
        if character == "#":
            newline = text.find("\n", position)
            position = len(text) if newline < 0 else newline
            continue
        if character == "\n":
            line += 1
            if not open_brackets:
                in_key, key_parts = True, 1
        elif character in "[{":
            open_brackets.append(character)
            in_key = character == "{" or (in_key and set(open_brackets) == {"["})  # a table header is a key
            key_parts = 1
        elif character in "]}" and open_brackets:
            open_brackets.pop()
        elif character == "," and open_brackets[-1:] == ["{"]:
            in_key, key_parts = True, 1
        elif character == "=":
            in_key = False
        elif character == "." and in_key:
            key_parts += 1
        if len(open_brackets) + key_parts > MAX_DEPTH:
            yield line, len(open_brackets) + key_parts
            return
        position += 1


def _check_shape(path):
    """Refuses a config too large, with a line too long, or nested too deep, before it is parsed."""
    size = os.path.getsize(path)
    if size > MAX_CONFIG_BYTES:
        raise UserInputError(f"config {path!r} is {size:,} bytes, more than the {MAX_CONFIG_BYTES:,} a config may have")
    with open(path, "rb") as handle:
        data = handle.read(MAX_CONFIG_BYTES + 1)
    for number, line in enumerate(data.split(b"\n"), 1):
        if len(line) > MAX_LINE_CHARS:
            raise UserInputError(
                f"config {path!r} line {number} is {len(line):,} bytes long, more than the {MAX_LINE_CHARS:,} "
                "a config line may have"
            )
    for number, depth in _depth_errors(data.decode("utf-8", "replace")):
        raise UserInputError(
            f"config {path!r} line {number} nests keys, tables or arrays {depth} deep, more than the "
            f"{MAX_DEPTH} a config may (a dotted key's parts count as levels)"
        )


def read_document(path):
    """The TOML document at `path`, tables as they are (dicts).

    Raises:
      UserInputError: no regular file at `path`, a file over the limits above, or not TOML.
    """
    if not os.path.lexists(path):
        raise InputNotFoundError(f"config {path!r} does not exist (see pipelines/ for examples)")
    if not os.path.isfile(path):
        raise UserInputError(
            f"config {path!r} is not a regular file (a folder, a FIFO or a broken link): give a .toml file"
        )
    _check_shape(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
        # Windows Notepad starts UTF-8 with a byte order mark, which tomllib calls an "Invalid statement".
        return tomllib.loads(data.removeprefix(b"\xef\xbb\xbf").decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UserInputError(f"config {path!r} is not valid TOML (UTF-8 text): {error}") from error


def flattened(path, document):
    """A document's tables flattened into one dict of flag values (WHOLE_TABLES kept whole).

    Raises:
      UserInputError: a key set twice (in two tables, or in a table and at the top).
    """
    values = {}
    for key, value in document.items():
        entries = value.items() if isinstance(value, dict) and key not in WHOLE_TABLES else [(key, value)]
        for name, entry in entries:
            if name in values:
                raise UserInputError(f"config {path!r} sets {name!r} twice")
            values[name] = entry
    return values


def load_toml(path):
    """Reads a TOML config, tables flattened into one dict of flag values.

    Raises:
      UserInputError: as `read_document` and `flattened`.
    """
    return flattened(path, read_document(path))


def save_run_config(run_dir, values):
    """Writes a resolved config as `run_dir/config.toml`, atomically (None values are left out: TOML has no null)."""
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, RUN_CONFIG)
    with open(f"{path}.tmp-{os.getpid()}", "wb") as handle:
        tomli_w.dump({key: value for key, value in sorted(values.items()) if value is not None}, handle)
    os.replace(f"{path}.tmp-{os.getpid()}", path)
    return path


def load_run_config(run_dir):
    """The resolved config a run folder holds, or None."""
    path = os.path.join(run_dir, RUN_CONFIG)
    return load_toml(path) if os.path.isfile(path) else None


def differences(saved, current):
    """Keys whose values differ between a saved config and the current one."""
    current = {key: value for key, value in current.items() if value is not None}
    return sorted(key for key in set(saved) | set(current) if saved.get(key) != current.get(key))
