"""The step graph's inputs: the ring buffer's row index, and the conditioning inputs of both manifest formats.

Format 1 (the shipped voices): ``cond`` is the per-sample conditioning c' [B, C] and ``speaker_bias``
[L * B, G] a separate input, set once per utterance; the graph multiplies c' by every layer's projection.
Format 2 (every export since): ``cond`` [L * B, G] is each layer's whole gate input. The conditioner graph
already projected the conditioning for every layer and added the speaker's gate biases (its output has L * G
channels; it takes the biases as its ``speaker_bias`` input), so a step costs one ADD per layer for both.
Without mel conditioning the speaker's biases are ``cond`` itself, set once per utterance.
"""

from __future__ import annotations

import numpy as np

from edge_runtime.errors import InputError, ModelError


def ring_index(layout: np.ndarray, n_layers: int) -> tuple[int, np.ndarray]:
    """``(ring, take_at)`` for a history ``hist[ring, L, ...]`` seen flat as rows ``[ring * L, ...]``.

    ``ring`` is the smallest power of two above every delay (so ``t % ring`` is ``t & (ring - 1)``); the rows of
    the state input at step t are ``take_at[t % ring] = ((t - delay) % ring) * L + layer`` for the manifest's
    ``(layer, delay)`` rows: one ``np.take`` gathers them in input order.
    """
    ring = 1 << int(layout[:, 1].max()).bit_length()
    return ring, ((np.arange(ring)[:, None] - layout[None, :, 1]) % ring) * n_layers + layout[None, :, 0]


def speaker_index(names: list[str] | None, speaker: int | str | None) -> int:
    """A speaker name or index -> its index among ``names`` (``None`` -> 0; ``names`` None: a model without
    speakers, which takes only ``None`` or 0); anything else is an InputError."""
    if names is None:
        if speaker not in (None, 0, "0"):
            raise InputError("this model has no speakers (it was trained without global conditioning)")
        return 0
    if speaker is None:
        return 0
    if isinstance(speaker, str) and speaker in names:
        return names.index(speaker)
    try:
        index = int(speaker)
    except (TypeError, ValueError):
        index = -1
    if not 0 <= index < len(names):
        raise InputError(f"unknown speaker {speaker!r}; this model has {', '.join(names)} (or 0..{len(names) - 1})")
    return index


class GateInputs:
    """Feeds the step's conditioning inputs from conditioner chunks and speakers, for format 1 or 2."""

    def __init__(self, manifest, use_mel: bool, use_speaker: bool, batch: int, n_layers: int, gates: int):
        self.version, self.batch, self.n_layers, self.gates = manifest.version, batch, n_layers, gates
        self.use_mel, self.use_speaker = use_mel, use_speaker
        if self.version == 1:
            self.inputs = ({"cond"} if use_mel else set()) | ({"speaker_bias"} if use_speaker else set())
        else:
            self.inputs = {"cond"} if use_mel or use_speaker else set()

    def check(self, step_inputs: dict, cond_channels: int, conditioner) -> None:
        """Raises ModelError unless the graphs' shapes fit this form."""
        rows, width = (self.batch, cond_channels) if self.version == 1 else (self.n_layers * self.batch, self.gates)
        fits = "cond" not in step_inputs or step_inputs["cond"].shape == (rows, width)
        if self.version == 1 and "speaker_bias" in step_inputs:
            fits &= step_inputs["speaker_bias"].shape == (self.n_layers * self.batch, self.gates)
        if conditioner is not None:
            expected = cond_channels if self.version == 1 else self.n_layers * self.gates
            fits &= conditioner.cond_port.shape[-1] == expected
            bias = conditioner.graph.inputs.get("speaker_bias")
            fits &= bias is None or bias.shape == (self.batch, self.n_layers * self.gates)
        if not fits:
            raise ModelError(f"the step and conditioner graphs' conditioning shapes do not fit format {self.version}")

    def set_speakers(self, views: dict, ports: dict, table: np.ndarray, conditioner) -> None:
        """The speakers' per-layer gate biases ``table`` [B, L, G] for the next utterance."""
        rows = table.transpose(1, 0, 2).reshape(-1, self.gates)  # [L * B, G]: the step's row order l * B + b
        if self.version == 1:
            views["speaker_bias"][...] = ports["speaker_bias"].quantize(rows)
        elif not self.use_mel:
            views["cond"][...] = ports["cond"].quantize(rows)  # constant in time
        else:
            conditioner.set_speaker_bias(table.reshape(self.batch, -1))  # [B, L * G]: the output's channel order

    def per_sample(self, chunk: np.ndarray, port) -> np.ndarray:
        """Conditioner output [n, B, width] -> the step's ``cond`` per sample, [n, *cond shape], in its dtype."""
        if self.version == 1:
            return port.quantize(chunk)  # [n, B, C]
        n = chunk.shape[0]
        gates = chunk.reshape(n, self.batch, self.n_layers, self.gates).transpose(0, 2, 1, 3)  # [n, L, B, G]
        return port.quantize(gates.reshape(n, self.n_layers * self.batch, self.gates))  # no copy for B = 1
