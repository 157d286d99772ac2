"""The search space: a `[search]` table of train options, each a range (low, high, log) or a list of choices.

    [search]
    learning_rate = { low = 1e-4, high = 3e-3, log = true }
    batch_size = { choices = [32, 64, 128] }

Each bound and choice is checked the way train checks the option (a `TrainConfig`
built with it), so a bad value is refused before any trial runs.
"""

import dataclasses
import math
import typing

from abo_tf.common import options
from abo_tf.common.errors import UserInputError
from abo_tf.training import loop

MAX_CHOICES = 1000  # choices of one [search] option
_RANGE_KEYS, _CHOICE_KEYS = {"low", "high", "log"}, {"choices"}
# Where a trial writes and what it reads are the tuner's to set, not the search's. The others change how a
# trial runs or is measured, not what the model learns: validation_steps would score trials on different
# validation images, mixed_precision sets Keras' global policy, which the next trial in the process would
# inherit, and a strategy, a TPU, XLA, determinism, a cache, checkpoints or the SavedModel's top_k cannot win on merit.
_NOT_SEARCHABLE = (
    "records",
    "output",
    "progress",
    "validation_steps",
    "strategy",
    "tpu",
    "mixed_precision",
    "jit_compile",
    "deterministic",
    "cache",
    "checkpoint_every_steps",
    "top_k",
)


class SearchSpaceError(UserInputError):
    """A `[search]` table that cannot be searched."""


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One searched train option: `choices`, or a `low`..`high` range (log-uniform when `log`)."""

    name: str
    kind: type  # int, float, str or bool: the train option's type
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None


def searchable_options():
    """The train options a `[search]` key may name, sorted."""
    return sorted(
        spec.name
        for spec in options.specs(loop.TrainConfig)
        if spec.metadata["config"] and spec.name not in _NOT_SEARCHABLE
    )


def _fail(name, entry, instead):
    raise SearchSpaceError(f"[search] {name} = {entry!r}: {instead}")


def _range(name, kind, entry):
    low, high, log = entry.get("low"), entry.get("high"), entry.get("log", False)
    numbers = (int,) if kind is int else (int, float)
    if kind not in (int, float):
        _fail(name, entry, f"{name} is not a number: give {{ choices = [...] }}")
    if not all(isinstance(value, numbers) and not isinstance(value, bool) for value in (low, high)):
        _fail(name, entry, f"give both low and high as {'integers' if kind is int else 'numbers'}")
    if not isinstance(log, bool):
        _fail(name, entry, "log must be true or false")
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        _fail(name, entry, "low must not be above high (both finite)")
    if log and low <= 0:
        _fail(name, entry, "a log range must lie above 0: raise low or drop log")
    return Parameter(name, kind, low=kind(low), high=kind(high), log=log)


def _choices(name, kind, entry):
    choices = entry["choices"]
    if not isinstance(choices, list) or not choices:
        _fail(name, entry, "choices must be a non-empty list")
    if len(choices) > MAX_CHOICES:
        # Each trial records the list: 10**6 choices made an 11.9 MB config.toml and 7.9 MB of journal a trial.
        raise SearchSpaceError(f"[search] {name}: {len(choices):,} choices, more than {MAX_CHOICES}: give a range")
    converted = tuple(
        float(choice) if kind is float and isinstance(choice, int) and not isinstance(choice, bool) else choice
        for choice in choices
    )
    # Compared as converted: [0, 0.0] of a float option is one value twice (Optuna would draw it twice as often).
    if len(set(map(repr, converted))) != len(converted):
        _fail(name, entry, "choices must differ from each other")
    return Parameter(name, kind, choices=converted)


def _parameter(name, entry, kinds):
    if name in _NOT_SEARCHABLE:
        raise SearchSpaceError(
            f"[search] {name!r} changes how a trial runs or is measured, not what it learns: set it outside "
            f"[search]; searchable are {searchable_options()}"
        )
    if name not in kinds:
        raise SearchSpaceError(f"[search] {name!r} is not a train option: allowed are {searchable_options()}")
    if not isinstance(entry, dict):
        _fail(name, entry, "give a table: { low = ..., high = ... } or { choices = [...] }")
    keys = set(entry)
    if keys <= _RANGE_KEYS and {"low", "high"} <= keys:
        return _range(name, kinds[name], entry)
    if keys == _CHOICE_KEYS:
        return _choices(name, kinds[name], entry)
    _fail(name, entry, "give either low and high (and optionally log) or choices")


def _values_to_check(parameter):
    return parameter.choices if parameter.choices is not None else (parameter.low, parameter.high)


def _check_against_train(parameter, base_config):
    """Each choice and bound must make a valid train config with the rest of the base config."""
    for value in _values_to_check(parameter):
        try:
            dataclasses.replace(base_config, **{parameter.name: value})
        except UserInputError as error:
            raise SearchSpaceError(f"[search] {parameter.name}: the value {value!r} is refused: {error}") from error


def parse_space(table, base_config):
    """A `[search]` table -> the `Parameter`s, in the table's order.

    Args:
      table: the `[search]` table (dict of option name -> dict).
      base_config: the `TrainConfig` the trials start from (for each value's check).

    Raises:
      SearchSpaceError: an empty table, an unknown key, a bad range or choice.
    """
    if not table:
        raise SearchSpaceError(
            f"the search space is empty: give a [search] table in --config naming some of {searchable_options()}"
        )
    hints = typing.get_type_hints(loop.TrainConfig)
    kinds = {name: hints[name] for name in searchable_options()}
    space = [_parameter(name, entry, kinds) for name, entry in table.items()]
    for parameter in space:
        _check_against_train(parameter, base_config)
    return space


def suggest(trial, space):
    """The values an Optuna trial draws from `space` (dict option -> value)."""
    values = {}
    for parameter in space:
        if parameter.choices is not None:
            values[parameter.name] = trial.suggest_categorical(parameter.name, list(parameter.choices))
        elif parameter.kind is int:
            values[parameter.name] = trial.suggest_int(parameter.name, parameter.low, parameter.high, log=parameter.log)
        else:
            values[parameter.name] = trial.suggest_float(
                parameter.name, parameter.low, parameter.high, log=parameter.log
            )
    return values


def contains(parameter, value):
    """True when `value` is one the search could draw for `parameter`."""
    if parameter.choices is not None:
        return value in parameter.choices
    return parameter.low <= value <= parameter.high


def default_point(space, base_config):
    """The base config's own values of the searched options, or None when one lies outside the space."""
    values = {parameter.name: getattr(base_config, parameter.name) for parameter in space}
    return values if all(contains(parameter, values[parameter.name]) for parameter in space) else None
