"""Linear prediction from the log-mel (LPCNet, ExcitNet): the model learns the excitation, the runtime adds the
prediction back.

Per mel frame: the mel magnitudes spread back over the FFT bins through the filterbank (a smooth envelope),
squared to a power spectrum (times the pre-emphasis filter's response when the model is pre-emphasised),
inverse-FFT to the autocorrelation, a white-noise floor and a lag window, Levinson-Durbin, then bandwidth
expansion ``a_k * gamma**k`` (the filter's poles pulled inside the unit circle: a sampling error excites a
damped resonance, not a ringing one). Frame ``f``'s coefficients predict the samples ``[f * hop, (f + 1) * hop)``.

Training computes the excitation ``e[t] = s[t] + sum_k a_k s[t-k]`` of the (pre-emphasised) signal ``s`` and
learns its µ-law classes; the runtime inverts it, ``s[t] = e[t] - sum_k a_k s[t-k]``, with the same coefficients
from the same mel frames, so analysis and synthesis are exact inverses. Only the mel is needed: the step graph
and its inputs do not change.
"""

from __future__ import annotations

import functools

import numpy as np

from edge_runtime.audio import mel_filterbank, mu_law_decode, mu_law_encode, preemphasize
from edge_runtime.features import frame_lags, lag_range
from edge_runtime.native import kernel_module
from edge_runtime.period import PeriodHistory, period_classes

MAX_ORDER = 32  # the compiled synthesis filter holds at most 64 past samples; the manifest and Config check it
NOISE_FLOOR = 1e-4  # added to r[0] relative: -40 dB of white noise keeps the normal equations well conditioned
LAG_WINDOW_HZ = 60.0  # Gaussian lag window's bandwidth: smooths the envelope's sharpest peaks
MAX_FFT = 16384  # ~1 s at 16 kHz: far above any speech front end, low enough that the envelope basis stays small


def lpc_from_mel(log_mel: np.ndarray, *, sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float,
                 order: int, gamma: float, preemphasis: float = 0.0) -> np.ndarray:
    """Prediction coefficients ``a_1..a_p`` per frame: float64 [F, order] of log-mel frames [F, n_mels]."""
    spread, response = _envelope_basis(sample_rate, n_fft, n_mels, fmin, fmax, preemphasis)
    log_mel = np.asarray(log_mel, np.float64)
    # The predictor does not depend on the envelope's scale (the noise floor is relative too), so each frame is
    # divided by its peak: any finite mel, however loud, gives finite coefficients (exp would overflow at ~710).
    log_mel = log_mel - log_mel.max(axis=-1, keepdims=True)
    magnitude = np.exp(log_mel) @ spread  # [F, bins]
    power = magnitude * magnitude * response
    r = np.fft.irfft(power, n=n_fft, axis=-1)[:, :order + 1]
    lag = np.arange(order + 1)
    r *= np.exp(-0.5 * (2.0 * np.pi * LAG_WINDOW_HZ * lag / sample_rate) ** 2)
    r[:, 0] *= 1.0 + NOISE_FLOOR
    return levinson(r, order) * gamma ** np.arange(1, order + 1)


@functools.lru_cache(maxsize=8)
def _envelope_basis(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float,
                    preemphasis: float) -> tuple[np.ndarray, np.ndarray]:
    """(mel → bins matrix [n_mels, bins], power response [bins] of the pre-emphasis filter): the same for every
    frame of a model, so computed once (a live stream asks for one frame at a time)."""
    if not 2 <= n_fft <= MAX_FFT:  # a damaged manifest's n_fft would size the filterbank and this basis
        raise ValueError(f"n_fft must be in [2, {MAX_FFT}], got {n_fft}")
    bank = mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax)  # [bins, n_mels]
    weight = bank.sum(axis=1)
    # Bins no band covers take the nearest covered bin's value.
    covered = np.flatnonzero(weight > 0)
    bins = np.arange(bank.shape[0])
    above = np.searchsorted(covered, bins)  # index of the first covered bin >= each bin
    right = covered[np.minimum(above, covered.size - 1)]
    left = covered[np.maximum(above - 1, 0)]
    nearest = np.where(np.abs(bins - left) <= np.abs(right - bins), left, right)  # a tie goes to the lower bin
    spread = bank[nearest] / weight[nearest, None]  # [bins, n_mels], rows sum to 1
    omega = np.pi * bins / (bank.shape[0] - 1)
    response = 1.0 + preemphasis * preemphasis - 2.0 * preemphasis * np.cos(omega)
    basis = spread.T
    basis.flags.writeable = response.flags.writeable = False  # shared by every caller: read-only
    return basis, response


def levinson(r: np.ndarray, order: int) -> np.ndarray:
    """Levinson-Durbin over frames: autocorrelation [F, >order] -> a_1..a_p [F, order] of the minimum-phase
    predictor ``A(z) = 1 + sum_k a_k z^-k``."""
    frames = r.shape[0]
    a = np.zeros((frames, order + 1))
    a[:, 0] = 1.0
    error = np.maximum(r[:, 0], np.finfo(np.float64).tiny)
    for i in range(1, order + 1):
        k = -(a[:, :i] * r[:, i:0:-1]).sum(axis=1) / error
        a[:, 1:i + 1] = a[:, 1:i + 1] + k[:, None] * a[:, i - 1::-1][:, :i]
        error = np.maximum(error * (1.0 - k * k), np.finfo(np.float64).tiny)
    return a[:, 1:]


def excitation(signal: np.ndarray, coefficients: np.ndarray, hop: int) -> np.ndarray:
    """``e[t] = s[t] + sum_k a_k[t // hop] s[t-k]`` (silence before the signal): float32 [T] of float [T]."""
    s = np.asarray(signal, np.float64)
    a, past = _taps(s, coefficients, hop)
    return (s + (a * past).sum(axis=1)).astype(np.float32)


def _taps(s: np.ndarray, coefficients: np.ndarray, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """Each sample's coefficients and past samples ``s[t-1], ..., s[t-p]`` (silence before): float64 [T, p] x 2."""
    a = np.repeat(coefficients, hop, axis=0)[:s.shape[0]]  # [T, p]
    if a.shape[0] < s.shape[0]:
        raise ValueError(f"{s.shape[0]} samples need {-(-s.shape[0] // hop)} frames of coefficients")
    order = coefficients.shape[1]
    padded = np.concatenate([np.zeros(order), s])
    return a, np.stack([padded[order - k:order - k + s.shape[0]] for k in range(1, order + 1)], axis=1)


def prediction(a: np.ndarray, past: np.ndarray) -> np.ndarray:
    """``p = -sum_k a_k s[t-k]`` per row of coefficients and past samples [N, p] (float64 [N]): the one formula
    training and the runtime's stepwise loop share, summed k = 1..p in order like the synthesis filter's loop
    (whose ``s[t] = e[t] - acc`` is then exactly ``e[t] + p[t]``), so all give the same bits."""
    acc = np.zeros(a.shape[:-1])
    for k in range(a.shape[-1]):
        acc += a[..., k] * past[..., k]
    return -acc


def input_classes(classes: np.ndarray, coefficients: np.ndarray, hop: int, mu_classes: int,
                  lags: np.ndarray | None = None) -> np.ndarray:
    """LPCNet's extra inputs of an excitation model (``lpc_inputs``) at every position t of an utterance: the
    µ-law classes of the signal ``s[t]`` and of the next sample's prediction ``p[t+1]``, int32 [T, 2]; given
    the frames' lags (a ``period_input`` model), a third column: the excitation one period before sample t + 1
    (edge_runtime/period.py), int32 [T, 3].

    ``s`` is the synthesis filter run on the decoded classes, as generation builds it (not the clean signal);
    the last position's ``p[T]`` (its logit is never scored) is silence."""
    e = mu_law_decode(np.asarray(classes), mu_classes).astype(np.float64)
    synthesis = Synthesis(coefficients.shape[1], hop)
    synthesis.add_frames(coefficients)
    s = synthesis(e)[:, 0]
    p_next = np.append(prediction(*_taps(s, coefficients, hop))[1:], 0.0)
    columns = [mu_law_encode(s, mu_classes), mu_law_encode(p_next, mu_classes)]
    if lags is not None:
        columns.append(period_classes(classes, lags, hop, int(mu_law_encode(0.0, mu_classes))))
    return np.stack(columns, axis=1)


class Synthesis:
    """The inverse of :func:`excitation` as a stream: ``s[t] = e[t] - sum_k a_k s[t-k]``, per stream.

    Coefficients come frame by frame (:meth:`add_frames`, as the mel arrives), samples chunk by chunk; the
    filter state is carried across chunks in float64, one sample at a time in the same order of operations, so
    streamed output equals offline output bit for bit however either is chunked. The compiled loop
    (``_stepkernel.lpc_synthesis``, ~0.04 µs per sample for order 16) runs it where it is built, else a Python loop
    (~3-5 µs).
    """

    def __init__(self, order: int, hop: int, streams: int = 1):
        self.order, self.hop, self.streams = order, hop, streams
        self._kernel = getattr(kernel_module(), "lpc_synthesis", None)
        self.reset()

    def reset(self) -> None:
        """Silence before the next sample; forgets the coefficients."""
        self._coefficients = np.zeros((self.streams, 0, self.order))  # [B, frames held, p]
        self._first = 0  # index of the oldest frame held
        self._t = 0
        self._past = np.zeros((self.streams, self.order))  # s[t-1], s[t-2], ... per stream
        self._current = (-1, None)  # (frame, its coefficients [B, p]) of next_coefficients

    def add_frames(self, coefficients: np.ndarray) -> None:
        """Coefficients of the next frames: [k, p] (one stream) or [k, B, p]."""
        a = np.asarray(coefficients, np.float64).reshape(-1, self.streams, self.order).transpose(1, 0, 2)
        done = self._t // self.hop - self._first  # frames whose samples are all filtered
        self._coefficients = np.concatenate([self._coefficients[:, done:], a], axis=1)
        self._first += done

    def next_coefficients(self) -> np.ndarray:
        """The coefficients of the next sample per stream, float64 [B, p] (C-contiguous; the same array for all
        samples of a frame)."""
        if self._t // self.hop != self._current[0]:
            frame = (self._t - self._first * self.hop) // self.hop
            if frame >= self._coefficients.shape[1]:
                raise IndexError(f"sample {self._t} needs LPC frame {self._t // self.hop}, which has not arrived")
            self._current = (self._t // self.hop, np.ascontiguousarray(self._coefficients[:, frame]))
        return self._current[1]

    def feed(self, e: np.ndarray, acc: np.ndarray) -> np.ndarray:
        """Filters one sample per stream whose ``acc`` (``sum_k a_k s[t-k]``, float64 [B]) is already known:
        ``s = e - acc``, the operation :meth:`__call__` does; returns s [B]."""
        s = e - acc
        self._past[:, 1:] = self._past[:, :-1]
        self._past[:, 0] = s
        self._t += 1
        return s

    def ahead(self, n: int) -> np.ndarray:
        """The coefficients of the next n samples per stream, float64 [B, n, p], without moving past them."""
        return self._coefficients[:, self._frames(n)]

    def take(self, n: int) -> np.ndarray:
        """The coefficients of the next n samples of stream 0, float64 [n, p], moving past them unfiltered: for a
        loop that runs this filter itself (the native engine)."""
        rows = np.ascontiguousarray(self._coefficients[0, self._frames(n)])
        self._t += n
        return rows

    def _frames(self, n: int) -> np.ndarray:
        """Indices into the held coefficients of the next n samples' frames (IndexError if one has not arrived)."""
        frames = (self._t - self._first * self.hop + np.arange(n)) // self.hop
        if n and frames[-1] >= self._coefficients.shape[1]:
            raise IndexError(f"sample {self._t + n - 1} needs LPC frame {(self._t + n - 1) // self.hop}, "
                             "which has not arrived")
        return frames

    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        """Filters the next samples: [n] (one stream) or [n, B]; float64 [n, B] out (not clipped)."""
        n = chunk.shape[0]
        out = np.array(np.asarray(chunk, np.float64).reshape(n, self.streams).T, order="C")  # [B, n], a copy
        offset = self._t - self._first * self.hop
        self._frames(n)  # every frame has arrived
        for b in range(self.streams):
            coefficients = np.ascontiguousarray(self._coefficients[b])
            if self._kernel is not None:
                self._kernel(out[b], coefficients, self._past[b], offset, self.hop)
            else:
                out[b] = _synthesis_loop(out[b], coefficients, self._past[b], offset, self.hop)
        self._t += n
        return out.T


def _synthesis_loop(samples: np.ndarray, coefficients: np.ndarray, past: np.ndarray, offset: int,
                    hop: int) -> list[float]:
    """The compiled loop's fallback: filters ``samples`` and updates ``past`` (float64 [p]) in place."""
    rows, history, out = coefficients.tolist(), past.tolist(), samples.tolist()
    for i, e in enumerate(out):
        acc = 0.0
        for a, s in zip(rows[(offset + i) // hop], history):
            acc += a * s
        y = e - acc
        history.insert(0, y)
        history.pop()
        out[i] = y
    past[:] = history
    return out


def coefficients_for(frames: np.ndarray, config: dict) -> np.ndarray:
    """:func:`lpc_from_mel` with a model's settings (its training config or manifest config), of its conditioning
    frames [F, width] (the log-mel bands come first: edge_runtime/features.py)."""
    return lpc_from_mel(frames[..., :config["n_mels"]], sample_rate=config["sample_rate"], n_fft=config["n_fft"],
                        n_mels=config["n_mels"],
                        fmin=config["fmin"], fmax=config["fmax"], order=config["lpc_order"],
                        gamma=config["lpc_gamma"], preemphasis=config.get("preemphasis", 0.0))


def model_signal(audio: np.ndarray, frames: np.ndarray | None, config: dict) -> np.ndarray:
    """The signal a model learns the µ-law classes of: the audio, pre-emphasised if the model is, and its LPC
    excitation if the model predicts one (``lpc_order`` > 0; needs the audio's conditioning frames). float32 [T]."""
    signal = preemphasize(audio, config.get("preemphasis", 0.0))
    if not config.get("lpc_order", 0):
        return signal
    return excitation(signal, coefficients_for(frames, config), config["hop_length"])


def input_rows(manifest, port, streams: int) -> "InputRows | None":
    """Layer 0's input rows of a format-3 or 4 model (edge_runtime/manifest.py) for ``streams`` streams, put in
    the domain of the step graph's ``state`` input ``port``; None for the other formats."""
    if manifest.lpc_inputs is None:
        return None
    cfg, classes = manifest.config, manifest.embedding.shape[0]
    hop = int(cfg["hop_length"])
    period = None if len(manifest.lpc_inputs) < 3 else PeriodHistory(
        hop, lag_range(int(cfg["sample_rate"]))[1], streams, int(mu_law_encode(0.0, classes)))
    return InputRows((manifest.embedding, *manifest.lpc_inputs), manifest.lpc_order, hop, streams, port, period, cfg)


class InputRows:
    """Layer 0's input rows of an lpc_inputs model (LPCNet's inputs), step by step, per stream:
    ``E[e[t-1]] + E_s[s[t-1]] + E_p[p[t]]`` of the µ-law classes of the last excitation sample, the signal the
    synthesis filter made of it and the prediction for the sample being generated, summed in float32 (as the
    Keras model sums them) and then put into the state input's domain. The same filter and formulas
    as training's :func:`input_classes`, so teacher-forced rows equal the training inputs bit for bit. A
    ``period_input`` model adds a fourth table's row, of the excitation one period back (edge_runtime/period.py)."""

    def __init__(self, tables: tuple[np.ndarray, ...], order: int, hop: int, streams: int, port=None,
                 period: PeriodHistory | None = None, config: dict | None = None):
        """``tables``: the sample, signal and prediction tables (and the period table with ``period`` and the
        model's ``config``, whose frames' pitch features give the lags);
        ``port``: the step graph's ``state`` input (edge_runtime/graph.py Port), whose domain the rows are put
        in (int8 graphs: its quantization); None: float32 rows."""
        if (len(tables) == 4) != (period is not None):
            raise ValueError("a period table goes with a period history, and only with one")
        self.tables = tuple(np.ascontiguousarray(t, np.float32) for t in tables)
        self.classes = tables[0].shape[0]
        self.filter = Synthesis(order, hop, streams)
        self.period, self._config = period, config
        self._decode = mu_law_decode(np.arange(self.classes), self.classes).astype(np.float64)
        self._port = port
        quantized = port is not None and port.quantized
        self._scale, self._zero = (port.scale, port.zero) if quantized else (0.0, 0)
        # compiled rows and filter steps (_stepkernel.lpc_rows, lpc_feed: a few µs per step) where built, else
        # numpy (~50 µs)
        self._kernel, self._feed = (getattr(kernel_module(), name, None) for name in ("lpc_rows", "lpc_feed"))
        if period is not None:  # the compiled rows know three tables
            self._kernel = None
        self._rows = np.empty((streams, self.tables[0].shape[1]), np.int8 if quantized else np.float32)
        self.reset()

    def reset(self) -> None:
        """Silence before the next sample (s[-1] = 0); forgets the coefficients."""
        self.filter.reset()
        if self.period is not None:
            self.period.reset()
        self._signal, self._acc = np.zeros(self.filter.streams), np.zeros(self.filter.streams)

    def add_frames(self, coefficients: np.ndarray, frames: np.ndarray) -> None:
        """The LPC coefficients [k, (B,) p] of the next conditioning frames [k * B, width] (whose lags a period
        model reads)."""
        self.filter.add_frames(coefficients)
        if self.period is not None:
            self.period.add_frames(frame_lags(frames, self._config))

    def random_start(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Resets to n samples of random small (stable) coefficients and, with a period, random lags short enough
        that the last 8 samples read generated classes: the native engine's load-time check feeds both engines
        these. Returns the per-sample coefficients [n, p] and lags [n] (None without a period)."""
        hop = self.filter.hop
        frames = rng.normal(0, 0.05, (n // hop + 1, self.filter.order))
        self.reset()
        self.filter.add_frames(frames)
        if self.period is None:
            return np.repeat(frames, hop, axis=0)[:n], None
        lags = rng.integers(lag_range(int(self._config["sample_rate"]))[0], n - 8, endpoint=True, size=frames.shape[0])
        self.period.add_frames(lags)
        return np.repeat(frames, hop, axis=0)[:n], np.repeat(lags, hop)[:n]

    def row(self, previous: np.ndarray) -> np.ndarray:
        """The next step's input rows [B, R] from the previous samples' classes [B] (int64)."""
        a = self.filter.next_coefficients()
        if self._kernel is not None:
            self._kernel(self._rows, np.asarray(previous, np.int64), *self.tables, a, self.filter._past,
                         self._signal, self._acc, self._scale, self._zero)
            return self._rows
        self._acc = -prediction(a, self.filter._past)
        sample, signal, predicted = self.tables[:3]
        s = mu_law_encode(self._signal, self.classes)
        p = mu_law_encode(-self._acc, self.classes)
        rows = sample[previous] + signal[s] + predicted[p]
        if self.period is not None:
            rows = rows + self.tables[3][self.period.next_classes()]
        return rows if self._port is None else self._port.quantize(rows)

    def push(self, samples: np.ndarray) -> None:
        """The samples [B] just generated (or forced) after :meth:`row`: filtered into the signal the next row
        reads (the prediction of :meth:`row` is the filter's own sum for them)."""
        if self.period is not None:
            self.period.push(samples)
        if self._feed is not None:  # the same operations as Synthesis.feed, on the filter's own state
            self._feed(np.asarray(samples, np.int64), self._decode, self._acc, self.filter._past, self._signal)
            self.filter._t += 1
        else:
            self._signal = self.filter.feed(self._decode[samples], self._acc)
