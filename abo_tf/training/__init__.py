"""Records -> tf.data -> Keras model -> distributed training loop -> SavedModel."""
