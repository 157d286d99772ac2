"""The data audit (issue 11): near-duplicate images across splits and likely label errors; `python -m abo_tf.audit`."""
