"""Errors of the project: each message is one line that names the bad thing.

Every error we raise for expected bad input derives from :class:`WavenetEdgeError` (the CLI prints it as one
line and exits 2): the edge runtime's below, ``training.config.ConfigError``, ``training.checkpoint.CheckpointError``,
``convert.export.ExportError``. Messages name the bad thing, never a command-line flag (the library has no flags).
"""


class WavenetEdgeError(ValueError):
    """Base class of all our errors: expected bad input, not a bug."""


def first_line(e: BaseException) -> str:
    """An exception's message as one line (its first), or its type's name when it has none."""
    return str(e).splitlines()[0] if str(e) else type(e).__name__


class EdgeError(WavenetEdgeError):
    """An error of the edge runtime."""


class ModelError(EdgeError):
    """A model folder, manifest or .tflite file is missing, corrupt, unsupported or tampered with."""


class InputError(EdgeError):
    """Bad synthesis input: mel shape or values, unknown speaker, unreadable audio file, bad option."""


class DeviceError(EdgeError):
    """The requested device or its library (e.g. libedgetpu) is not available."""
