"""The export's errors (``convert.export`` re-exports them: ``convert.export.ExportError`` is their documented name)."""

from edge_runtime.errors import WavenetEdgeError


class ExportError(WavenetEdgeError):
    """The export cannot be done as asked (the message says why)."""


class OutputExists(ExportError):
    """The model folder exists and replacing it was not asked for (command lines add their flag's name)."""

    HINT = " (--force)"
