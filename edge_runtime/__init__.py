"""The edge runtime: numpy + LiteRT only (never TensorFlow, training or convert)."""
