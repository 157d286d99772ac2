"""Report folders and the figures in them: matplotlib set up once, PNG files, no display."""

import os

from abo_tf.common.errors import UserInputError


def pyplot():
    """`matplotlib.pyplot` on the Agg backend: files only, so servers, tests and workers need no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(figure, path, dpi=110):
    """Writes `figure` to `path` (tight layout) and frees it."""
    plt = pyplot()
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path


def prepare_report_dir(path):
    """Creates `path` and checks a file can be written there.

    Raises:
      UserInputError: the folder cannot be created or written (named, with the reason).
    """
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-test-{os.getpid()}")
        with open(probe, "w", encoding="utf-8"):
            pass
        os.remove(probe)
    except OSError as error:
        raise UserInputError(
            f"cannot write the report folder {path!r} ({error.strerror or error}): choose another --report"
        ) from error


def caption(axis, text, fontsize=7):
    """Sets `text` as the axis title, drawn as plain text: an id or a product type holding `$...$` is data, not
    mathtext (which raised on `$\\x$` and rendered `$a$` in italics; issue 23).
    """
    axis.set_title(text, fontsize=fontsize, parse_math=False)
