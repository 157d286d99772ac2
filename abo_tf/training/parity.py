"""Parity of an export with the model that was trained: the same probabilities on the same images, or no export.

    reference(batch) -> probabilities [B, C]        the trained Keras model on decoded pixels
    candidate(batch) -> probabilities [B, C]        an export, per signature: serving_default on the
                                                    encoded bytes, serve_pixels on the same pixels

`measure` runs both over the same batches and `check` refuses a candidate
whose top-1 differs on any image or whose probabilities differ by more than
the tolerance. A copy that computes another function (a rebuilt EfficientNet
without its ImageNet `Rescaling`: 61% top-1 agreement) loads without error and
passes any weights-only comparison: only outputs tell. Every training run ends
with this check before it writes metrics.json or exports, and `evaluate` runs
it on a run folder; the functions take callables so other export formats can
reuse them.
"""

import dataclasses

import numpy as np

from abo_tf.common.errors import UserInputError

# Max |delta p| of a float32 export against the float32 model (a mixed-precision model computes in float32 for
# the check). Measured on test_parity's 12 backbone x weights cases: 0 (VGG16, ResNet50) to 1.5e-6 (EfficientNet).
TOLERANCE = 1e-4


class ParityError(UserInputError):
    """The export computes something else than the trained model; nothing was exported."""


@dataclasses.dataclass(frozen=True)
class Parity:
    """How one candidate's probabilities compare with the reference's on the same images."""

    max_abs_difference: float
    top1_agreement: float  # fraction of images with the same argmax
    decisive_disagreements: int  # top-1 differs although the reference's top-2 gap exceeds the tie margin
    num_images: int
    mean_abs_difference: float = 0.0
    # Top-1 disagreements on images whose reference top-2 gap is within the tie margin: ties at the candidate's
    # precision (a float16 export's 2e-3), which any rounding may flip.
    disagreements_on_ties: int = 0


def compare(reference, candidate, tie_margin=0.0):
    """Compares two probability arrays [N, C] of the same images.

    Args:
      reference: the trained model's probabilities.
      candidate: the export's.
      tie_margin: a top-1 disagreement on an image whose reference top-2 gap is
        at most this is a tie at that precision, not a decisive disagreement
        (0 for float32 exports: every disagreement counts); None: the max |delta p| of the two
        (a quantised export's own precision).

    Returns:
      A `Parity`.
    """
    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    if reference.shape != candidate.shape or reference.ndim != 2:
        raise ValueError(f"probabilities of shapes {reference.shape} and {candidate.shape}: need the same [N, C]")
    difference = np.abs(reference - candidate)
    max_difference = float(difference.max()) if reference.size else 0.0
    disagree = reference.argmax(axis=1) != candidate.argmax(axis=1)
    top_two = np.sort(reference, axis=1)[:, -2:] if reference.shape[1] > 1 else np.zeros((len(reference), 2))
    decisive = disagree & (top_two[:, 1] - top_two[:, 0] > (max_difference if tie_margin is None else tie_margin))
    return Parity(
        max_abs_difference=max_difference,
        top1_agreement=float(1.0 - disagree.mean()) if len(reference) else 1.0,
        decisive_disagreements=int(decisive.sum()),
        num_images=len(reference),
        mean_abs_difference=float(difference.mean()) if reference.size else 0.0,
        disagreements_on_ties=int((disagree & ~decisive).sum()),
    )


def measure(reference_fn, candidate_fns, batches, tie_margin=0.0):
    """Runs the reference and every candidate over the same batches.

    Args:
      reference_fn: `f(batch) -> probabilities [B, C]` (array-like).
      candidate_fns: dict name -> `f(batch) -> probabilities [B, C]`.
      batches: an iterable of batches (whatever the functions take).
      tie_margin: as in `compare`.

    Returns:
      Dict name -> `Parity`, in the order of `candidate_fns`.
    """
    reference, candidates = [], {name: [] for name in candidate_fns}
    for batch in batches:
        reference.append(np.asarray(reference_fn(batch)))
        for name, candidate_fn in candidate_fns.items():
            candidates[name].append(np.asarray(candidate_fn(batch)))
    if not reference:
        raise UserInputError("the parity check got no images: it needs at least one batch")
    reference = np.concatenate(reference)
    return {name: compare(reference, np.concatenate(parts), tie_margin) for name, parts in candidates.items()}


def passed(results, tolerance=TOLERANCE):
    """True when every candidate agrees on every decisive top-1 and stays within `tolerance`."""
    return all(
        result.decisive_disagreements == 0 and result.max_abs_difference <= tolerance for result in results.values()
    )


def to_json(results, tolerance=TOLERANCE):
    """The parity record (a run's parity.json, evaluate's "parity"): the verdict, the tolerance, each candidate."""
    return {
        "passed": passed(results, tolerance),
        "tolerance": tolerance,
        "signatures": {name: dataclasses.asdict(result) for name, result in results.items()},
    }


def summary(record):
    """One line of a parity record: each candidate's max |delta p| and top-1 agreement, and the verdict."""
    parts = [
        f"{name} max |dp| {result['max_abs_difference']:.2e}, top-1 agreement {result['top1_agreement']:.4f}"
        for name, result in record["signatures"].items()
    ]
    images = max((result["num_images"] for result in record["signatures"].values()), default=0)
    verdict = "passed" if record["passed"] else "FAILED"
    return f"parity {verdict} on {images} images (tolerance {record['tolerance']:g}): " + "; ".join(parts)


def check(record, what="the export", outcome="nothing was exported"):
    """Raises `ParityError` (one line: what differs, the figures, `outcome`) unless the parity record passed."""
    if not record["passed"]:
        raise ParityError(
            f"{what} does not compute the trained model's function ({summary(record)}): "
            f"{outcome}; report this as a bug with the run's config.toml"
        )
