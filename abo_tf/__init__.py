"""abo_tf: Amazon Berkeley Objects product images -> TFRecords -> tf.data -> Keras."""

__version__ = "0.1.0"
