"""What the runtime does to a model's samples after decoding them: the manifest's ``postfilter`` chain.

In order: the LPC synthesis filter (an excitation model: edge_runtime/lpc.py), the formant postfilter, the
de-emphasis (a pre-emphasised model), the mel matching (edge_runtime/melmatch.py: it holds the newest samples
back until their frames are in, and a stream ends with :meth:`OutputChain.flush`). Every stage carries its state
from one chunk to the next and computes each sample by the same float64 operations however the stream is
chunked, so streamed audio equals offline audio bit for bit.

The formant postfilter is the short-term postfilter of speech codecs (G.729, AMR), ``A(z/g_n) / A(z/g_d)`` with
``g_n < g_d``, ``A`` the frame's LPC analysis filter (the one the synthesis filter inverts, bandwidth expansion
included): its zeros and poles are the formants' pulled inward by different amounts, so the spectrum's peaks
rise against its valleys, where an excitation model's sampling noise is least masked (0.7 / 0.75 lifts a
formant about 0.5 dB over a valley: tests/edge/test_postfilter.py). It adds ``2 * order`` multiply-adds per
sample and needs no training; it is not normalised, and raised the shipped voices' level by about 0.6 dB.
"""

from __future__ import annotations

import numpy as np

from edge_runtime import lpc
from edge_runtime.audio import Deemphasis
from edge_runtime.melmatch import MelMatch


class FormantPostfilter:
    """``y[t] = x[t] + sum_k a_k g_n^k x[t-k] - sum_k a_k g_d^k y[t-k]`` per stream, with each sample's frame
    coefficients ``a`` (given per frame, :meth:`add_frames`, like :class:`lpc.Synthesis`)."""

    def __init__(self, order: int, hop: int, streams: int, numerator: float, denominator: float):
        if not 0 <= numerator <= denominator < 1:
            raise ValueError(f"the formant postfilter needs 0 <= numerator <= denominator < 1, got "
                             f"{numerator}, {denominator}")
        k = np.arange(1, order + 1)
        self._pole_scale = denominator ** k
        self._zero_scale = (numerator / denominator) ** k if denominator else np.zeros(order)
        self._poles = lpc.Synthesis(order, hop, streams)  # the all-pole part, with coefficients a_k g_d^k
        self.order, self.streams = order, streams
        self.reset()

    def reset(self) -> None:
        """Silence before the next sample; forgets the coefficients."""
        self._poles.reset()
        self._past = np.zeros((self.streams, self.order))  # x[t-order] .. x[t-1] per stream, oldest first

    def add_frames(self, coefficients: np.ndarray) -> None:
        """LPC coefficients of the next frames: [k, p] (one stream) or [k, B, p]."""
        self._poles.add_frames(np.asarray(coefficients, np.float64) * self._pole_scale)

    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        """Filters the next samples [n, B]; float64 [n, B] out."""
        n = chunk.shape[0]
        x = np.concatenate([self._past, np.asarray(chunk, np.float64).reshape(n, self.streams).T], axis=1)
        zeros = self._poles.ahead(n) * self._zero_scale  # a_k g_n^k per sample: [B, n, p]
        u = x[:, self.order:].copy()
        for k in range(1, self.order + 1):  # a fixed order of additions per sample: chunking cannot change it
            u += zeros[:, :, k - 1] * x[:, self.order - k:self.order - k + n]
        self._past = x[:, n:]  # x has order + n columns: the last `order`
        return self._poles(u.T)


class OutputChain:
    """Decoded samples [n, B] -> audio, through the manifest's postfilters; :meth:`add_frames` takes each
    conditioning frame (and its LPC coefficients) as the mel arrives, :meth:`flush` ends a stream."""

    def __init__(self, manifest, streams: int):
        cfg, order = manifest.config, manifest.lpc_order
        hop = int(cfg["hop_length"])
        self.synthesis = None if not order else lpc.Synthesis(order, hop, streams)
        self.formant = None if manifest.formant is None else FormantPostfilter(order, hop, streams, *manifest.formant)
        self.deemphasis = Deemphasis(manifest.deemphasis, streams)
        self.mel_match = None if manifest.mel_match is None else MelMatch(cfg, streams, manifest.mel_match)
        if order:  # the front-end fields the predictor reads: a bad one fails here, not mid-stream
            lpc.coefficients_for(np.zeros((1, int(cfg["n_mels"]))), cfg)

    @property
    def needs_frames(self) -> bool:
        """Whether the chain needs the conditioning frames (:meth:`add_frames`)."""
        return self.synthesis is not None or self.mel_match is not None

    def reset(self) -> None:
        """Silence before the next sample."""
        for stage in (self.synthesis, self.formant, self.deemphasis, self.mel_match):
            if stage is not None:
                stage.reset()

    def add_frames(self, coefficients: np.ndarray | None, frames: np.ndarray) -> None:
        """The next conditioning frames [k, B, width] and their LPC coefficients [k, B, p] (None without LPC)."""
        for stage in (self.synthesis, self.formant):
            if stage is not None:
                stage.add_frames(coefficients)
        if self.mel_match is not None:
            self.mel_match.add_frames(frames)

    def __call__(self, audio: np.ndarray, squeeze) -> np.ndarray:
        """Decoded samples [n, B] -> the chain's output: ``squeeze``-d, float32 in [-1, 1] where de-emphasised or
        mel-matched (else as the last stage left it). With mel matching, the samples that are final so far."""
        if self.synthesis is not None:
            audio = self.synthesis(audio)
        if self.formant is not None:
            audio = self.formant(audio)
        audio = self.deemphasis(audio)
        if self.mel_match is not None:
            audio = _clip(self.mel_match(audio))
        return squeeze(audio)

    def flush(self, squeeze) -> np.ndarray | None:
        """The end of a stream: the samples the chain still holds (mel matching's), else None."""
        return None if self.mel_match is None else squeeze(_clip(self.mel_match.flush()))


def _clip(audio: np.ndarray) -> np.ndarray:
    return np.clip(audio, -1.0, 1.0).astype(np.float32)
