"""Conversion of training checkpoints to edge model folders."""
