"""ABO archives -> checked images, labels, a leak-free split -> TFRecord shards. No TensorFlow here."""
