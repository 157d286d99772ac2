"""Errors a user can cause, and the CLI wrapper that prints them as one line."""

import functools
import sys


class UserInputError(ValueError):
    """Bad input from the user: the message names the value and what to do."""


class InputNotFoundError(UserInputError, FileNotFoundError):
    """A path the user gave does not exist."""


def first_line(error):
    """An exception's first non-blank line (Keras' and TensorFlow's messages run over many; a CLI error is one)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def cli_main(main):
    """Decorates a CLI `main(argv=None) -> int`: user errors become one line on stderr, exit 2."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except UserInputError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper
