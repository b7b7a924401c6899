"""The wavenet-edge command line: a thin click layer over training, convert and edge_runtime."""
