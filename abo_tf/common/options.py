"""Command options declared once: a dataclass whose fields carry type, default, help and group.

    @dataclasses.dataclass(frozen=True)
    class EvaluateOptions:
        records: str = options.option(help="folder of a build_records output", group="inputs", required=True)
        batch_size: int = options.option(64, help="images per call", group="runtime", minimum=1)

    evaluate_options = options.parse(EvaluateOptions, argv, prog="python -m abo_tf.evaluate", description=...)

From the fields `build_parser` makes the argparse parser (groups, `--help` with
defaults, `--flag/--no-flag` for booleans, choices), and `parse` applies the
rules every command shares, the ones `train` had first (timm's habit):
`--config FILE.toml` gives defaults, its tables are flattened, every key must
name an option (a typo is an error, not a silent default), values must have the
option's type, and flags given on the command line override the file.
`save_config` writes the resolved options into the command's output folder, so
every number can be traced back to a command.
"""

import argparse
import dataclasses
import math
import re
import types
import typing

from abo_tf.common import config as config_lib
from abo_tf.common import console
from abo_tf.common.errors import UserInputError

CONFIG_FILE = config_lib.RUN_CONFIG
# Bounds that several commands' numbers share: every number option declares both ends (tests/test_common.py checks
# it), so a flag, a config value and a [search] range of one are refused alike (issue 23: a seed of -1, a batch of
# 2**40, an image side of 100,000 or 10**8 calibration bins were tracebacks or ran out of memory).
SEED_BOUNDS = {"minimum": 0, "maximum": 2**32 - 1}  # what NumPy, TensorFlow and scikit-learn accept
MAX_IMAGE_SIZE = 1024  # a model input side: a batch of 64 is then 800 MB of float32 pixels
MAX_BATCH_SIZE = 8192
MAX_COUNT = 10**9  # examples, rows or steps: past any build (ABO has 398,212 images)
MAX_SHOWN = 1000  # images drawn or rows listed in a report, labels returned per image
MAX_LISTED = 20  # names an error lists (100,000 unknown config keys made a 1.29 MB line)
_GIVEN = "_abo_tf_given"  # the flags `_Repeatable` has seen, in the namespace while parsing
# argparse reads "-inf" or "-1e-3" as a flag, then reports the option's value as missing: these are numbers.
_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)


def _listed(names):
    """The first MAX_LISTED names (each cut at 40 characters), and how many more."""
    shown = [name if len(name) <= 40 else name[:40] + "..." for name in names[:MAX_LISTED]]
    return f"{shown}" + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


class _Repeatable(argparse.Action):
    """A flag given twice: the values of a list flag (`--model logreg --model sgd`) are joined in order; a flag of
    one value (or of a fixed number) keeps the last, as argparse does (--config's help says so). argparse's own
    "extend" would add them to the default instead.
    """

    def __call__(self, parser, namespace, values, option_string=None):
        given = namespace.__dict__.setdefault(_GIVEN, set())
        joined = self.nargs == "+" and self.dest in given
        setattr(namespace, self.dest, [*getattr(namespace, self.dest), *values] if joined else values)
        given.add(self.dest)


_HELP_GROUP = "settings"
CONSOLE_GROUP = "config and console"


def option(
    default=dataclasses.MISSING,
    *,
    help,
    group=_HELP_GROUP,
    flag=None,
    choices=None,
    metavar=None,
    nargs=None,
    minimum=None,
    maximum=None,
    required=False,
    config=True,
    cli=True,
    positional=False,
    default_factory=dataclasses.MISSING,
):
    """A dataclass field that is also a command-line option.

    Args:
      default: the default value (omit for a required option).
      help: the `--help` text; the default is appended to it.
      group: the `--help` section the option is listed under.
      flag: the flag when it is not `--field-name` (e.g. `--split` for `split_fractions`).
      choices, metavar, nargs: as in argparse.
      minimum, maximum: inclusive bounds for numbers (every element of a list).
      required: the option must be given, on the command line or in the config.
      config: the option may be set in a `--config` file and is saved with the
        resolved config (False for what says where to write, or how to show it).
      cli: False for a field that is set by code only.
      positional: an argument without a flag (implies required, not in configs).
    """
    required, config = required or positional, config and not positional
    metadata = {
        "help": help,
        "group": group,
        "flag": flag,
        "choices": choices,
        "metavar": metavar,
        "nargs": nargs,
        "minimum": minimum,
        "maximum": maximum,
        "required": required,
        "config": config,
        "cli": cli,
        "positional": positional,
    }
    if default is dataclasses.MISSING and default_factory is dataclasses.MISSING:
        default = None  # no default; a required one is checked by `parse`, so that a config file may supply it
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class _Spec:
    """What `parse` needs to know of one field."""

    name: str
    flag: str
    kind: type  # int, float, str or bool
    is_list: bool
    optional: bool
    metadata: dict


def _base_type(annotation):
    """(element type, is a list, may be None) of an annotation like `int`, `float | None`, `tuple[float, ...]`."""
    args = typing.get_args(annotation)
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        optional = type(None) in args
        (annotation,) = [arg for arg in args if arg is not type(None)]
        args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (tuple, list):
        return args[0], True, optional
    return annotation, False, optional


def specs(options_class):
    """The `_Spec` of every command-line field of `options_class`, in declaration order."""
    hints = typing.get_type_hints(options_class)
    result = []
    for field in dataclasses.fields(options_class):
        if not field.metadata.get("cli"):
            continue
        kind, is_list, optional = _base_type(hints[field.name])
        flag = field.metadata["flag"] or "--" + field.name.replace("_", "-")
        result.append(_Spec(field.name, flag, kind, is_list, optional, dict(field.metadata)))
    return result


def _default_of(field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _typed(value):
    """A default as a user would type it: `0.8 0.1 0.1`, not `(0.8, 0.1, 0.1)`; a string in quotes when empty."""
    if isinstance(value, tuple | list):
        return " ".join(map(str, value))
    return "''" if value == "" else str(value)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows one default, as typed, where there is one: none for an option without a default or whose help already
    says it ("(default: ...)"), and none for a boolean flag that is off."""

    def _get_help_string(self, action):
        help_text = action.help or ""
        if "(default" in help_text or action.default is None or action.default is argparse.SUPPRESS:
            return help_text
        if action.default is False and action.nargs == 0 or action.option_strings == []:
            return help_text
        if isinstance(action, argparse.BooleanOptionalAction):
            return f"{help_text} (default: --{action.dest.replace('_', '-')})" if action.default else help_text
        return f"{help_text} (default: {_typed(action.default)})"


class _Parser(argparse.ArgumentParser):
    """argparse's parser whose errors are one line, as every other user error is: argparse prints the whole usage
    block first (25 lines for train) and the error scrolls past."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(options_class, prog, description):
    """The argparse parser of `options_class`'s fields, plus `--config`."""
    parser = _Parser(prog=prog, description=description, formatter_class=_HelpFormatter)
    parser._negative_number_matcher = _NEGATIVE_NUMBER  # noqa: SLF001 (argparse's own rule has no public setter)
    groups = {}
    defaults = {field.name: _default_of(field) for field in dataclasses.fields(options_class)}
    for spec in specs(options_class):
        metadata = spec.metadata
        group = groups.get(metadata["group"]) or groups.setdefault(
            metadata["group"], parser.add_argument_group(metadata["group"])
        )
        help_text = metadata["help"] + (" (required)" if metadata["required"] else "")
        keywords = {"dest": spec.name, "help": help_text, "default": defaults[spec.name]}
        if metadata["positional"]:
            parser.add_argument(
                spec.name,
                metavar=metadata["metavar"],
                help=metadata["help"],
                type=spec.kind,
                nargs=(metadata["nargs"] or "+") if spec.is_list else None,
            )
            continue
        if spec.kind is dict:  # a table (`[search]`): set in a config file only, no flag
            parser.set_defaults(**{spec.name: defaults[spec.name]})
            continue
        if spec.kind is bool:
            keywords["action"] = argparse.BooleanOptionalAction
        else:
            # Choices are checked by `validate`, for a one-line error like every other bad value; --help lists them.
            choices = metadata["choices"]
            metavar = metadata["metavar"] or ("{" + ",".join(map(str, choices)) + "}" if choices else None)
            keywords.update(type=spec.kind, metavar=metavar, action=_Repeatable)
            if spec.is_list:
                keywords["nargs"] = metadata["nargs"] or "+"
        group.add_argument(spec.flag, **keywords)
    common = groups.get(CONSOLE_GROUP) or parser.add_argument_group(CONSOLE_GROUP)
    common.add_argument(
        "--config",
        action="append",
        metavar="FILE.toml",
        help="TOML file of option values (tables are flattened; keys "
        "are the flag names with _ for -); flags on the command line override it; a [search] table "
        "is abo_tf.tune's search space, which other commands ignore. Several files: a later one overrides an "
        "earlier one's keys. A flag given twice: a list flag (--model) gets both values, another keeps the last",
    )
    common.add_argument(
        "--verbose",
        action="store_true",
        dest="abo_tf_verbose",
        help=f"let TensorFlow print its start-up and runtime messages (or set {console.VERBOSE_ENV}=1)",
    )
    return parser


def _type_name(spec):
    name = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a table"}[spec.kind]
    return f"a list of {name.split(' ', 1)[1]}s" if spec.is_list else name


def _fits(value, kind):
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


def _check_config_value(path, key, spec, value):
    """The config's `value` for `spec`, converted; a one-line error naming the `key` as the file has it (`model`,
    not the field `models`) when its type, choice or bounds are wrong."""
    elements = value if spec.is_list and isinstance(value, list) else [value]
    shown = repr(value) if len(repr(value)) <= 200 else repr(value)[:200] + "..."
    if (spec.is_list and not isinstance(value, list)) or not all(_fits(element, spec.kind) for element in elements):
        like = "a table such as { low = 1, high = 2 }" if spec.kind is dict else f"like {spec.flag}"
        raise UserInputError(f"config {path!r}: {key} = {shown} must be {_type_name(spec)} ({like})")
    if spec.kind is float:
        elements = [float(element) for element in elements]
    _check_choices_and_bounds(spec, elements, f"config {path!r}: {key} = {shown}")
    return tuple(elements) if spec.is_list else elements[0]


class SavedValues(typing.NamedTuple):
    """Option values a command wrote earlier, and the file they came from (for messages)."""

    path: str
    values: dict


def _config_keys(options_class):
    """Config key -> `_Spec`: the flag's name (`model` for --model) and the field's (`models`) of each option."""
    by_key = {}
    for spec in specs(options_class):
        if spec.metadata["config"]:
            by_key[config_key(spec)] = by_key[spec.name] = spec
    return by_key


def _config_defaults(path, options_class):
    """The option values of a config file, checked against the options' names and types."""
    document, by_key = config_lib.read_document(path), _config_keys(options_class)
    for name, value in document.items():
        spec = by_key.get(name)
        # A table named after an option is a group of options (`[model]` holds `model = ...`) only when it holds
        # one; holding none, it is that option's value of the wrong type (`deterministic = {a = 1}` was reported
        # as an unknown key `a`).
        if spec is not None and spec.kind is not dict and isinstance(value, dict) and not set(value) & set(by_key):
            _check_config_value(path, name, spec, value)
    return _checked_values(path, config_lib.flattened(path, document), options_class)


def config_key(spec):
    """An option's key in config files: its flag's name (`model` for --model, `split` for --split), as the README
    and --help name it."""
    return spec.flag.removeprefix("--").replace("-", "_")


def _checked_values(path, values, options_class):
    by_key = _config_keys(options_class)
    # A search table is tune's (config.WHOLE_TABLES): a command without the option reads the rest of the file.
    unknown = sorted(set(values) - set(by_key) - set(config_lib.WHOLE_TABLES))
    if unknown:
        raise UserInputError(f"config {path!r} has unknown keys {_listed(unknown)}: allowed are {sorted(by_key)}")
    # The flag's name and the field's (`split` and `split_fractions`) are one option: given both, one silently won.
    keys_of = {}
    for key in values:
        if key in by_key:
            keys_of.setdefault(by_key[key].name, []).append(key)
    both = sorted(sorted(keys) for keys in keys_of.values() if len(keys) > 1)
    if both:
        keep = config_key(by_key[both[0][0]])
        raise UserInputError(f"config {path!r} sets one option under two keys {both[0]}: keep only {keep!r}")
    return {
        by_key[key].name: _check_config_value(path, key, by_key[key], value)
        for key, value in values.items()
        if key in by_key
    }


def _check_choices_and_bounds(spec, elements, label):
    """Raises naming `label` (a flag and its value, or a config file's key and value) when an element of a value is
    not one of the option's choices or outside its bounds, or when a list has not the number of values it takes."""
    choices = spec.metadata["choices"]
    count = spec.metadata["nargs"] or "+"
    if spec.is_list and (len(elements) != count if isinstance(count, int) else not elements):
        wanted = f"{count} values" if isinstance(count, int) else "at least one value"  # `models = []` trained none
        raise UserInputError(f"{label}: give {wanted}" + (f", from {tuple(choices)}" if choices else ""))
    if choices is not None and any(item not in choices for item in elements):
        raise UserInputError(f"{label}: choose one of {tuple(choices)}")
    if spec.kind not in (int, float):
        return
    minimum, maximum = spec.metadata["minimum"], spec.metadata["maximum"]
    for element in elements:
        shown = label if not spec.is_list else f"{label}: {element}"
        if not math.isfinite(element):  # NaN passes every comparison
            raise UserInputError(f"{shown} must be a finite number")
        if minimum is not None and element < minimum:
            raise UserInputError(f"{shown} must be at least {minimum}")
        if maximum is not None and element > maximum:
            raise UserInputError(f"{shown} must be at most {maximum}")


def _check_required(options_class, values):
    for spec in specs(options_class):
        if values.get(spec.name) is None and spec.metadata["required"]:
            raise UserInputError(f"{spec.flag} is required (on the command line or in --config)")
        if spec.is_list and values.get(spec.name) is not None:
            values[spec.name] = tuple(values[spec.name])


def validate(options):
    """Checks each value of `options` against its declared type, choices and bounds.

    `parse` checks what comes from the command line and config files; dataclasses
    call this from `__post_init__` so that library callers (tests, the notebook)
    get the same one-line errors.

    Raises:
      UserInputError: naming the flag, e.g. "--batch-size 0 must be at least 1".
    """
    for spec in specs(type(options)):
        value = getattr(options, spec.name)
        if value is None:
            continue
        elements = list(value) if spec.is_list and isinstance(value, (list, tuple)) else [value]
        if (spec.is_list and not isinstance(value, (list, tuple))) or not all(
            _fits(item, spec.kind) for item in elements
        ):
            raise UserInputError(f"{spec.flag} {value!r} must be {_type_name(spec)}")
        # A list as it is typed on the command line ("--split -0.5 1.0 0.5"), not as a Python tuple.
        shown = " ".join(map(str, elements)) if spec.is_list else repr(value)
        _check_choices_and_bounds(spec, elements, f"{spec.flag} {shown}" if elements else spec.flag)
    return options


def parse(options_class, argv, prog, description, config_defaults=None, folder_defaults=None):
    """Command line (+ `--config` file) -> an `options_class` instance.

    Args:
      options_class: a dataclass whose fields are declared with `option`.
      argv: the arguments (None: sys.argv[1:]).
      prog, description: for `--help`.
      config_defaults: values applied under the config file's.
      folder_defaults: `f(parsed namespace) -> dict or None`, values read from where the command writes
        (a run folder's saved config), applied like `config_defaults`; checked as a config file is.

    Returns:
      `(options, config_path)`: the instance, and the `--config` file given or None.

    Raises:
      UserInputError: an unknown key or a value of the wrong type in the config,
        a missing required option, a number out of bounds.
    """
    parser = build_parser(options_class, prog, description)
    args = parser.parse_args(argv)
    vars(args).pop(_GIVEN, None)
    console.set_verbose(args.abo_tf_verbose)
    defaults = dict(config_defaults or {})
    saved = folder_defaults(args) if folder_defaults else None
    if saved:
        defaults.update(_checked_values(saved.path, saved.values, options_class))
    for config_path in args.config or ():
        defaults.update(_config_defaults(config_path, options_class))
    if defaults:
        parser.set_defaults(**defaults)
        args = parser.parse_args(argv)
        vars(args).pop(_GIVEN, None)
    values = {spec.name: getattr(args, spec.name) for spec in specs(options_class)}
    _check_required(options_class, values)
    return validate(options_class(**values)), (args.config or [None])[-1]


def config_values(options):
    """The resolved values of the options that belong in a config file, keyed by `config_key` (None left out:
    TOML has no null)."""
    values = {}
    for spec in specs(type(options)):
        value = getattr(options, spec.name)
        if spec.metadata["config"] and value is not None:
            values[config_key(spec)] = list(value) if spec.is_list else value
    return values


def save_config(options, folder):
    """Writes the resolved options into `folder` as config.toml (`--config` that file reproduces the command)."""
    return config_lib.save_run_config(folder, config_values(options))
