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


def load_toml(path):
    """Reads a TOML config, tables flattened into one dict of flag values."""
    if not os.path.isfile(path):
        raise InputNotFoundError(f"config {path!r} does not exist (see pipelines/ for examples)")
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UserInputError(f"config {path!r} is not valid TOML (UTF-8 text): {error}") from error
    values = {}
    for key, value in document.items():
        entries = value.items() if isinstance(value, dict) and key not in WHOLE_TABLES else [(key, value)]
        for name, entry in entries:
            if name in values:
                raise UserInputError(f"config {path!r} sets {name!r} twice")
            values[name] = entry
    return values


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
