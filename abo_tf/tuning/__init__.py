"""Hyperparameter search for the CNN (`python -m abo_tf.tune`): search space, study, trials, report."""
