"""The conditioner graph run over a stream of mel frames: fixed chunks with context frames on both sides."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from edge_runtime.errors import InputError, ModelError
from edge_runtime.features import describe_frame, frame_width
from edge_runtime.graph import Graph
from edge_runtime.manifest import Manifest


class Conditioner:
    """Runs the conditioner graph over a stream of mel frames in fixed chunks with context on both sides.

    Before the first frame and after the last, frames of silence (``log(log_floor)``) are assumed, exactly as
    in training; chunk results are therefore identical to computing the whole utterance at once.
    """

    def __init__(self, manifest: Manifest, device: str, threads: int, batch: int):
        info, cfg = manifest.data["conditioner"], manifest.config
        # format 2: multi-speaker conditioners add the speakers' gate biases (edge_runtime/step_inputs.py)
        speaker_input = manifest.version >= 2 and cfg["speaker_dim"] > 0
        self.graph = Graph(manifest.conditioner_path, "cpu" if device.startswith("edgetpu") else device, threads,
                           {"mel"} | ({"speaker_bias"} if speaker_input else set()), {"cond"})
        self.chunk, self.context, self.hop = int(info["chunk_frames"]), int(info["context_frames"]), int(cfg["hop_length"])
        self.width, self.batch, self.pad = frame_width(cfg), batch, float(info["pad_value"])  # values per frame
        self._what = describe_frame(cfg)
        self.mel_port, self.cond_port = self.graph.inputs["mel"], self.graph.outputs["cond"]
        expected = (batch, self.chunk + 2 * self.context, self.width)
        if self.mel_port.shape != expected:
            raise ModelError(f"conditioner input shape {self.mel_port.shape} does not match the manifest {expected}")
        # Bound views: a format-2 chunk is L * G channels per sample (6.5 MB for `s`), not copied out of the graph
        self._views, self._invoke = self.graph.bind()

    def set_speaker_bias(self, bias: np.ndarray) -> None:
        """The streams' speakers' gate biases [B, L * G] (format 2), added to every chunk's output."""
        self._views["speaker_bias"][...] = self.graph.inputs["speaker_bias"].quantize(bias)

    def _frames(self, mel, on_frames) -> Iterator[np.ndarray]:
        """Validated blocks [k, B, width] from an array or an iterable of frames/blocks, each also handed to
        ``on_frames`` (if given) as it arrives.

        Long blocks come out in chunk-sized pieces, so the window buffer never holds more than about a chunk.
        """
        for big in [mel] if isinstance(mel, np.ndarray) else mel:
            block = self._check(big)
            if on_frames is not None:
                on_frames(block)
            for start in range(0, block.shape[0], self.chunk):
                yield block[start:start + self.chunk]

    def _check(self, block) -> np.ndarray:
        """One block as [k, B, width], or an InputError."""
        block = np.asarray(block, np.float32)
        if block.ndim == 1:
            block = block[None]
        if self.batch == 1 and block.ndim == 2:
            block = block[:, None]
        if block.ndim != 3 or block.shape[1:] != (self.batch, self.width):
            raise InputError(f"mel frames must have {self._what} (shape [frames, {self.width}]), "
                             f"got shape {tuple(block.shape)}")
        if not np.all(np.isfinite(block)):
            raise InputError("mel frames contain NaN or infinite values")
        return block

    def stream(self, mel, copy: bool = True, on_frames=None) -> Iterator[np.ndarray]:
        """Yields the per-sample conditioning c[t] of consecutive chunks, [chunk * hop, B, C] (float32).

        With ``copy=False`` each chunk is a view of the graph's output, valid until the next one is asked for.
        ``on_frames(block)`` sees every validated mel block [k, B, width] before the conditioning it leads to
        (the LPC postfilter's coefficients come from the same frames).
        """
        span = self.chunk + 2 * self.context  # frames per graph run
        pad = np.full((self.context, self.batch, self.width), self.pad, np.float32)
        buffer = [pad]
        buffered = self.context  # frames in the buffer; the first `context` are left context
        for block in self._frames(mel, on_frames):
            buffer.append(block)
            buffered += block.shape[0]
            while buffered >= span:
                window = np.concatenate(buffer)
                yield self._run(window[:span], copy)
                buffer, buffered = [window[self.chunk:]], buffered - self.chunk
        remaining = buffered - self.context  # real frames not yet turned into conditioning
        if remaining < 0:
            return
        window = np.concatenate(buffer + [np.full((span, self.batch, self.width), self.pad, np.float32)])
        while remaining > 0:
            out = self._run(window[:span], copy)
            yield out[:min(self.chunk, remaining) * self.hop]
            window, remaining = window[self.chunk:], remaining - self.chunk

    def _run(self, window: np.ndarray, copy: bool) -> np.ndarray:
        self._views["mel"][...] = window.transpose(1, 0, 2)  # [B, frames, n_mels]
        self._invoke()
        out = self._views["cond"].transpose(1, 0, 2)  # [chunk * hop, B, C]
        return out.copy() if copy else out
