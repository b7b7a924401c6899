"""The mel-matching postfilter: the voice's short-time band levels pulled to the log-mel it was asked for.

A sampled voice wanders from its conditioning: a band a few dB too loud in one frame, too quiet in the next,
which is what STOI and PESQ hear most (docs/training-experiments.md, "Where free running and teacher-forced
sampling part"). The runtime holds the log-mel the voice should have, so it can correct that directly: each
frame of the output is analysed with the model's own front end (the same window, FFT size, hop and mel filters
as ``edge_runtime.audio.log_mel``), every mel band gets the gain that brings its magnitude to the frame's
conditioning value (limited to ``max_gain_db`` either way), each FFT bin the mean of its bands' log gains
(weighted like the filters), and the frames are put back together by weighted overlap-add. The network's
phase and fine structure stay; only the band levels move. A frame whose bands already match passes unchanged
(Hann analysis and synthesis windows, normalised by their summed squares: exact reconstruction).

It needs the frames after the sample: a sample is final once every frame whose window covers it is in, which
delays the stream by up to ``win_length`` samples (40 ms at 8 kHz); the end of a stream is flushed. Frames are
processed one at a time, with the same shapes and the same order of additions however the stream is chunked,
so streamed audio equals offline audio bit for bit. Cost: two FFTs and two small matrix products per frame.
"""

from __future__ import annotations

import numpy as np

from edge_runtime.audio import analysis_window, frame_padding, mel_filterbank

MAX_GAIN_DB = 60.0  # the largest per-band gain limit a manifest may ask for


def frames_fit(config: dict) -> bool:
    """Whether a config's frames suit mel matching: mel bands, and every sample under at least two windows
    (2 * hop_length <= win_length <= n_fft)."""
    hop, win, n_fft = (config.get(k, 0) for k in ("hop_length", "win_length", "n_fft"))
    return bool(config.get("n_mels")) and 0 < 2 * hop <= win <= n_fft


class MelMatch:
    """Streams [n, B] of audio at the model's level through the postfilter, with the conditioning log-mel frames
    given as they arrive (:meth:`add_frames`). :meth:`__call__` returns the samples that are final so far,
    :meth:`flush` the rest at the end of the stream."""

    def __init__(self, config: dict, streams: int, max_gain_db: float):
        if not 0 < max_gain_db <= MAX_GAIN_DB or not frames_fit(config):
            raise ValueError(f"mel matching needs 0 < max_gain_db <= {MAX_GAIN_DB:g} and frames_fit(config), got "
                             f"{max_gain_db}")
        n_fft, win, hop = int(config["n_fft"]), int(config["win_length"]), int(config["hop_length"])
        self.hop, self.streams = hop, streams
        self._n_fft, self._n_mels = n_fft, int(config["n_mels"])
        # The window's non-zero span, relative to a frame's first sample (frame f starts at f * hop): log_mel's
        # centring.
        self._offset = (n_fft - win) // 2
        self._lo = self._offset - frame_padding(0, n_fft, hop)[0]
        self._window = analysis_window(n_fft, win)[self._offset:self._offset + win]
        self._window_sq = self._window * self._window
        self._bank = mel_filterbank(int(config["sample_rate"]), n_fft, self._n_mels, config["fmin"], config["fmax"])
        weights = self._bank.sum(axis=1, keepdims=True)
        self._spread = (self._bank / np.where(weights > 0, weights, 1.0)).T  # [mels, bins]: a bin's bands, mean
        self._floor, self._log_floor = float(config["log_floor"]), float(np.log(config["log_floor"]))
        self._limit = max_gain_db / 20.0 * np.log(10.0)
        self.reset()

    def reset(self) -> None:
        """Silence before the next sample; forgets the frames."""
        win, b = self._window.shape[0], self.streams
        self._frames = np.zeros((0, b, self._n_mels))  # frames not processed yet; the first is frame self._next
        self._next = 0
        self._seen = 0  # samples received
        self._x0 = self._lo  # absolute position of self._x[:, 0]; before sample 0 the signal is silence
        self._x = np.zeros((b, -self._lo))
        self._done = 0  # samples returned
        self._a0 = self._lo  # absolute position of self._acc[:, 0] and self._weight[:, 0]
        self._acc, self._weight = np.zeros((b, win)), np.zeros((b, win))

    def add_frames(self, frames: np.ndarray) -> None:
        """The next conditioning frames [k, B, width] (the log-mel bands first, as the model reads them)."""
        mel = np.asarray(frames, np.float64)[..., :self._n_mels].reshape(-1, self.streams, self._n_mels)
        self._frames = np.concatenate([self._frames, mel])

    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        """The next samples [n, B] in; the samples that became final out, float64 [m, B]."""
        x = np.asarray(chunk, np.float64).reshape(chunk.shape[0], self.streams).T
        self._x = np.concatenate([self._x, x], axis=1)
        self._seen += x.shape[1]
        win = self._window.shape[0]
        while self._frames.shape[0] and self._next * self.hop + self._lo + win <= self._seen:
            self._frame()
        return self._take(self._next * self.hop + self._lo)

    def flush(self) -> np.ndarray:
        """The end of the stream: the frames left are analysed with silence after the last sample; the samples
        not returned yet out, float64 [m, B]."""
        last_end = (self._next + self._frames.shape[0] - 1) * self.hop + self._lo + self._window.shape[0]
        silence = max(0, last_end - self._x0 - self._x.shape[1])
        self._x = np.concatenate([self._x, np.zeros((self.streams, silence))], axis=1)
        while self._frames.shape[0]:
            self._frame()
        out = self._take(self._seen)
        self.reset()
        return out

    def _frame(self) -> None:
        """Analyses, corrects and overlap-adds frame ``self._next`` (its samples are in ``self._x``)."""
        win, start = self._window.shape[0], self._next * self.hop + self._lo
        segment = np.zeros((self.streams, self._n_fft))
        segment[:, self._offset:self._offset + win] = self._x[:, start - self._x0:start - self._x0 + win] * self._window
        spectrum = np.fft.rfft(segment, axis=-1)
        have = np.log(np.maximum(np.abs(spectrum) @ self._bank, self._floor))  # log_mel's floor
        want = np.maximum(self._frames[0], self._log_floor)
        gain = np.exp(np.minimum(np.maximum(want - have, -self._limit), self._limit) @ self._spread)
        frame = np.fft.irfft(spectrum * gain, n=self._n_fft, axis=-1)[:, self._offset:self._offset + win]
        at = start - self._a0
        self._reserve(at + win)
        self._acc[:, at:at + win] += frame * self._window
        self._weight[:, at:at + win] += self._window_sq
        self._frames = self._frames[1:]
        self._next += 1
        drop = self._next * self.hop + self._lo - self._x0  # samples no later frame reads
        self._x, self._x0 = self._x[:, drop:], self._x0 + drop

    def _reserve(self, length: int) -> None:
        """Room for ``length`` samples in the overlap-add buffers (grown a few windows at a time; unused room is
        zeros)."""
        if length > self._acc.shape[1]:
            more = np.zeros((self.streams, length - self._acc.shape[1] + 4 * self._window.shape[0]))
            self._acc = np.concatenate([self._acc, more], axis=1)
            self._weight = np.concatenate([self._weight, more], axis=1)

    def _take(self, end: int) -> np.ndarray:
        """Samples ``self._done`` up to ``end`` (capped at what was received), normalised by the windows' summed
        squares. Samples past the last frame's window (a stream given fewer frames than its samples need) pass
        unchanged."""
        n = max(0, min(end, self._seen) - self._done)
        if n == 0:
            return np.zeros((0, self.streams))
        before = self._done - self._a0  # the window's part before the first sample
        self._acc, self._weight, self._a0 = self._acc[:, before:], self._weight[:, before:], self._done
        self._reserve(n)
        acc, weight = self._acc[:, :n], self._weight[:, :n]
        out = acc / np.where(weight > 0, weight, 1.0)
        bare = np.flatnonzero((weight == 0).any(axis=0))
        if bare.size:  # never before the next frame's window: those samples are still in self._x
            out[:, bare] = self._x[:, self._done + bare - self._x0]
        self._acc, self._weight = self._acc[:, n:], self._weight[:, n:]
        self._done += n
        self._a0 = self._done
        return out.T
