"""Run configs: `pipelines/*.toml` give defaults, flags override, the run folder keeps the result.

A TOML file may group keys in tables (`[model]`, `[training]`, ...) for reading;
the tables are flattened and every key must be the name of a flag
(`batch_size` for `--batch-size`), so a typo is an error, not a silent default.
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
    except tomllib.TOMLDecodeError as error:
        raise UserInputError(f"config {path!r} is not valid TOML: {error}") from error
    values = {}
    for key, value in document.items():
        entries = value.items() if isinstance(value, dict) and key not in WHOLE_TABLES else [(key, value)]
        for name, entry in entries:
            if name in values:
                raise UserInputError(f"config {path!r} sets {name!r} twice")
            values[name] = entry
    return values


def parse_with_config(parser, argv, config_flag="config"):
    """Parses `argv`; a `--config FILE` given there supplies the defaults.

    Returns:
      The argparse namespace.
    """
    args = parser.parse_args(argv)
    path = getattr(args, config_flag)
    if path:
        values = load_toml(path)
        known = {action.dest for action in parser._actions}  # argparse offers no public list
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserInputError(f"config {path!r} has unknown keys {unknown}: use the flag names of --help, with _ for -")
        parser.set_defaults(**values)
        args = parser.parse_args(argv)
    return args


def save_run_config(run_dir, values):
    """Writes the resolved config into the run folder (None values are left out: TOML has no null)."""
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, RUN_CONFIG), "wb") as handle:
        tomli_w.dump({key: value for key, value in sorted(values.items()) if value is not None}, handle)


def load_run_config(run_dir):
    """The resolved config a run folder holds, or None."""
    path = os.path.join(run_dir, RUN_CONFIG)
    return load_toml(path) if os.path.isfile(path) else None


def differences(saved, current):
    """Keys whose values differ between a saved config and the current one."""
    current = {key: value for key, value in current.items() if value is not None}
    return sorted(key for key in set(saved) | set(current) if saved.get(key) != current.get(key))
