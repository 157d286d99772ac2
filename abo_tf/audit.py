"""Audits a build for near-duplicate images across splits and likely label errors: `python -m abo_tf.audit`.

    python -m abo_tf.audit --records tfrecords/abo/1.0.0 --report reports/audit
    python -m abo_tf.audit --records tfrecords/abo/1.0.0 --report reports/audit-cnn --features cnn \\
        --backbone resnet50 --weights imagenet

Near-duplicates: DCT perceptual hashes of every image trimmed, untrimmed, mirrored and of its centres (worker
processes), pairs within `--hash-distance` bits found by multi-index hashing and confirmed on 16 x 16 thumbnails
or aligned ORB keypoints; with CNN features, also pairs whose
embeddings reach `--embedding-similarity`. Likely label errors: out-of-sample probabilities of the train and
validation images by k-fold logistic regression on the cached features (abo_tf.features' cache), ranked by
cleanlab's confident learning. The library is abo_tf/auditing/; the report folder's files are listed in
abo_tf/auditing/audit.py.
"""

import os
import sys

from abo_tf.common import options
from abo_tf.common.errors import cli_main


@cli_main
def main(argv=None):
    # Imported here, not at the top: the hashing workers are spawned, and each imports this module (the
    # parent's __main__) again; the library's imports (pandas, scikit-learn) would cost each ~190 MB.
    from abo_tf.auditing import audit

    audit_options, _ = options.parse(
        audit.AuditOptions, argv, prog="python -m abo_tf.audit", description=__doc__.split("\n\n")[0]
    )
    summary = audit.run_audit(audit_options)
    print(
        f"{summary['near_duplicate_groups']} groups of near-duplicates ({summary['near_duplicate_images']} images, "
        f"{summary['groups_across_splits']} across splits); "
        f"{100 * summary['test_fraction_with_a_near_duplicate_in_train']:.1f}% of test is in a group with train"
    )
    print(
        f"{summary['label_issues']} likely label errors among {summary['labels_audited']} train and validation images"
    )
    planted = summary.get("planted_near_duplicates")
    if planted:
        found = ", ".join(f"{family} {entry['found']}/{entry['planted']}" for family, entry in planted.items())
        print(f"planted near-duplicates found per edit family (--truth): {found}")
    print(f"report: {os.path.join(audit_options.report, audit.REPORT_FILE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
