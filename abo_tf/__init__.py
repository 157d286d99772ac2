"""abo_tf: Amazon Berkeley Objects product images -> TFRecords -> tf.data -> Keras."""

from abo_tf.common import console as _console

__version__ = "0.1.0"

# TensorFlow's C++ start-up banner is kept off the console unless ABO_TF_VERBOSE=1 (see common/console.py).
_console.install_quiet_imports()
