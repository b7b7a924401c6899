"""Training: config, model, audio front end, data pipeline and training loop (needs TensorFlow)."""
