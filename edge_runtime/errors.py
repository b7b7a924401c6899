"""Errors of the edge runtime: each message is one line that names the bad thing."""


class EdgeError(ValueError):
    """Base class: expected bad input (the CLI prints it as one line and exits 2)."""


class ModelError(EdgeError):
    """A model folder, manifest or .tflite file is missing, corrupt, unsupported or tampered with."""


class InputError(EdgeError):
    """Bad synthesis input: mel shape or values, unknown speaker, unreadable audio file, bad option."""


class DeviceError(EdgeError):
    """The requested device or its library (e.g. libedgetpu) is not available."""
