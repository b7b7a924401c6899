"""Streaming WaveNet synthesis from an exported model folder: numpy ring buffers around a TFLite step graph.

Per generated sample n the runtime writes the previous sample's embedding row into its ring buffer
``hist[ring, L, B, R]`` (as layer 0's current input) and gathers, with one ``np.take``, the ``state`` rows the
manifest lists: that row, then every layer's inputs from d (and 2d for kernel 3) steps ago. The step graph also
gets the conditioning of the sample being generated and the speaker's gate biases (in the form of the
manifest's format version: edge_runtime/step_inputs.py); it returns the logits and the current inputs of layers
1..L-1, stored at ``hist[n % ring]``. Sampling is Gumbel-max with pre-drawn noise: ``argmax(logits + T * g)``.
"""

from __future__ import annotations

import math
import os
from typing import Iterable, Iterator

import numpy as np

from edge_runtime import lpc, native
from edge_runtime.audio import mu_law_decode, scale_to_peak
from edge_runtime.conditioner import Conditioner
from edge_runtime.errors import InputError, ModelError
from edge_runtime.features import conditioning_frames, frame_width
from edge_runtime.graph import Graph
from edge_runtime.files import default_model_dir, example_clips  # noqa: F401 (public API: edge_runtime/__init__.py)
from edge_runtime.manifest import Manifest, cfg_dilations, load_manifest, malformed_is_model_error
from edge_runtime.postfilter import OutputChain
from edge_runtime.sampling import gumbel_noise
from edge_runtime.step_inputs import GateInputs, ring_index, speaker_index

SILENCE = 128  # µ-law class of 0.0: the "previous sample" before the first one


class Synthesizer:
    """Streams audio from an edge model folder. Create with :meth:`load`."""

    def __init__(self, manifest: Manifest, device: str = "cpu", threads: int = 1, engine: str = "auto"):
        if engine not in native.ENGINES:
            raise InputError(f"unknown engine {engine!r}: use {', '.join(native.ENGINES)}")
        self.manifest = manifest
        cfg = self.config = manifest.config
        self.sample_rate, self.classes = int(cfg["sample_rate"]), int(cfg["mu_classes"])
        if not (1000 <= self.sample_rate <= 192_000 and 2 <= self.classes <= 65536):
            raise ModelError(f"implausible sample rate {self.sample_rate} or class count {self.classes} in the manifest")
        self.use_mel, self.use_speaker = cfg["n_mels"] > 0, cfg["speaker_dim"] > 0
        self.batch = int(manifest.data["batch"])
        dilations = cfg_dilations(cfg)
        n_layers, channels, gates = len(dilations), int(cfg["residual_channels"]), int(cfg["gate_channels"])
        self._gates = GateInputs(manifest, self.use_mel, self.use_speaker, self.batch, n_layers, gates)
        self.step = Graph(manifest.step_path, device, threads, {"state"} | self._gates.inputs, {"logits", "new_state"})
        ins, outs = self.step.inputs, self.step.outputs
        layout = np.asarray(manifest.data["state"]["rows"], np.int64).reshape(-1, 2)  # (layer, delay) per row
        # rows index the history: out-of-range values would read outside it
        max_delay = (int(cfg.get("kernel_size", 2)) - 1) * max(dilations)  # the oldest tap of the widest layer
        in_range = layout.size and 0 <= layout.min() and layout[:, 0].max() < n_layers and layout[:, 1].max() <= max_delay
        if (not in_range or layout.shape[0] < 2 or tuple(layout[0]) != (0, 0)
                or ins["state"].shape != (layout.shape[0] * self.batch, channels)
                or outs["new_state"].shape != ((n_layers - 1) * self.batch, channels)):
            raise ModelError(f"{manifest.step_path.name}: tensor shapes do not match the manifest's state layout")
        if manifest.embedding.shape != (self.classes, channels) or (self.use_speaker and (
                manifest.speaker_bias is None or manifest.speaker_bias.shape != (len(manifest.speakers), n_layers, gates))):
            raise ModelError(f"{manifest.folder / 'manifest.json'}: embedding or speaker tables do not fit the model")
        # Ring buffer hist[ring, L, B, R] in the state input's own domain (int8 models store int8), gathered
        # with one np.take per step (measured 0.8 µs, two-array fancy indexing 1.9 µs).
        self._ring, self._take_at = ring_index(layout, n_layers)
        self._take_rows = list(self._take_at)  # per-position rows as a list: cheaper to index in the hot loop
        self._hist = np.empty((self._ring, n_layers, self.batch, channels), ins["state"].dtype)
        # new_state comes out on another int8 scale than state goes in: a 256-entry requantization table.
        # Indexed by the output's raw byte (int8 viewed as uint8), so requantizing is one numpy take per step.
        self._requant = None
        if ins["state"].quantized:
            codes = np.arange(256, dtype=np.uint8).view(np.int8)  # byte b holds the int8 value codes[b]
            self._requant = ins["state"].quantize(outs["new_state"].dequantize(codes))
        self._embedding = ins["state"].quantize(manifest.embedding)  # [classes, R] in the state's domain
        self._decode = mu_law_decode(np.arange(self.classes), self.classes)
        # an excitation model's samples go through the LPC synthesis filter of the mel's envelope, then the rest
        self._postfilters = OutputChain(manifest, self.batch)
        # LPCNet's inputs (format 3): layer 0's row also holds the filter's signal and next prediction (and, format
        # 4, the excitation one period back)
        self._rows = lpc.input_rows(manifest, ins["state"], self.batch)
        # Without a recommendation in the manifest: 0.5, which scored best for the first shipped voice.
        self.temperature = 0.5 if manifest.temperature is None else manifest.temperature
        self.conditioner = Conditioner(manifest, device, threads, self.batch) if self.use_mel else None
        width = frame_width(cfg) if cfg.get("cond_layers") == 0 else int(cfg["cond_channels"])  # c' (format 1)
        self._gates.check(ins, width, self.conditioner)
        self._views, self._invoke = self.step.bind()
        self._native = self._start_native(engine, device, dilations)
        self.reset()

    def _start_native(self, engine: str, device: str, dilations: list[int]) -> native.NativeStep | None:
        """The compiled step loop where it applies (checked against LiteRT first), else None: LiteRT runs it.

        ``self.engine`` says which runs, ``self.engine_note`` why not the native one."""
        self.engine, self.engine_note = "litert", "asked for" if engine == "litert" else None
        if engine == "litert":
            return None
        reason = native.why_not(self.manifest, self.step, device, self.batch)
        if reason is None:
            step = native.NativeStep.create(self.manifest, self.step, self._views, dilations, self._ring)
            error = self._compare_engines(step)
            if error > native.TOLERANCE:
                reason = f"it differs from LiteRT on this graph (relative logit error {error:.1e})"
        if reason is not None:
            if engine == "native":
                raise ModelError(f"the native engine cannot run this model: {reason}")
            self.engine_note = reason
            return None
        self.engine = f"native ({step.kernels})"
        return step

    def _compare_engines(self, step: native.NativeStep, draws: int = 6) -> float:
        """The smallest of ``draws`` independent draws' errors (:meth:`_draw_error`). Now and then an int8 code of
        some product's input rounds the other way in one engine (their float sums differ in order): about one
        draw in ten on the trained `s` voices, each time ~1e-3 of the spread. A wrong weight, tap or activation
        is off in every draw, so the best draw tells a wrong graph from a rounding flip."""
        rng = np.random.default_rng(0)
        # a period input reads classes at least the shortest lag back: enough steps that the last ones do
        n = 8 if self._rows is None or self._rows.period is None else 48
        return min(self._draw_error(step, rng, n) for _ in range(draws))

    def _draw_error(self, step: native.NativeStep, rng: np.random.Generator, n: int = 8) -> float:
        """Largest |logit difference| between LiteRT and ``step`` over n teacher-forced steps from the same random
        history and conditioning, relative to the logits' spread (every tap of every layer reads nonzero values)."""
        spread = float(np.std(self._embedding)) or 1.0
        self._hist[...] = rng.normal(0, spread, self._hist.shape)
        step.engine.set_history(self._hist)
        for name in self._gates.inputs:  # constant gate inputs (speaker biases) too: defined, nonzero values
            self._views[name][...] = rng.normal(0, 1, self._views[name].shape)
        port = self.step.inputs.get("cond")
        cond = None if port is None or not self.use_mel else rng.normal(0, 1, (n, *port.shape)).astype(np.float32)
        forced = rng.integers(0, self.classes, (n, 1))
        ours, theirs = (np.empty((n, 1, self.classes), np.float32) for _ in range(2))
        coefficients, lags = (None, None) if self._rows is None else self._rows.random_start(rng, n)
        self._t, self._prev = 0, forced[0]
        self._run_litert(n, cond, None, forced, theirs)
        step.run(n, int(forced[0, 0]), cond, None, forced, ours, coefficients, lags)
        return float(np.abs(ours - theirs).max() / (np.ptp(theirs) or 1.0))

    @classmethod
    def load(cls, model_dir: str | os.PathLike | None = None, device: str = "cpu", threads: int = 1,
             engine: str = "auto") -> "Synthesizer":
        """Loads (and checksums) a model folder; ``None`` means the model shipped with the package.

        ``engine``: ``auto`` (the compiled step loop where it applies, else LiteRT), ``native`` or ``litert``
        (edge_runtime/native.py)."""
        if model_dir is None:
            model_dir = default_model_dir()
        manifest = load_manifest(model_dir)
        with malformed_is_model_error(manifest.folder):  # fields the synthesizer reads, e.g. the state layout
            return cls(manifest, device=device, threads=threads, engine=engine)

    # ---------------------------------------------------------------------------------------------- state
    def speaker_index(self, speaker: int | str | None) -> int:
        """A speaker name or index -> index (``None`` -> 0); unknown speakers are an InputError."""
        return speaker_index(self.manifest.speakers if self.use_speaker else None, speaker)

    def reset(self, speaker: int | str | None | list = None) -> None:
        """Clears the history (silence before the first sample) and sets the speaker(s) for the next utterance."""
        self._hist[...] = self.step.inputs["state"].quantize(0.0)
        if self._native is not None:
            self._native.reset()
        self._t = 0
        self._prev = np.full(self.batch, SILENCE, np.int64)
        self._postfilters.reset()
        if self._rows is not None:
            self._rows.reset()
        if self.use_speaker:
            speakers = speaker if isinstance(speaker, list) else [speaker] * self.batch
            if len(speakers) != self.batch:
                raise InputError(f"{len(speakers)} speakers for a model exported with batch {self.batch}")
            table = self.manifest.speaker_bias[[self.speaker_index(s) for s in speakers]]  # [B, L, G]
            self._gates.set_speakers(self._views, self.step.inputs, table, self.conditioner)

    # ---------------------------------------------------------------------------------------------- stepping
    def _run(self, n: int, cond: np.ndarray | None, noise: np.ndarray | None, forced: np.ndarray | None,
             logits_out: np.ndarray | None) -> np.ndarray:
        """Runs n steps; returns the samples [n, B]. With ``forced`` [n, B] the inputs are teacher-forced."""
        if self._native is not None:  # it runs an lpc_inputs model's filter itself: it takes the coefficients
            coefficients = None if self._rows is None else self._rows.filter.take(n)
            lags = None if self._rows is None or self._rows.period is None else self._rows.period.take(n)
            samples = self._native.run(n, int(self._prev[0]), cond, noise, forced, logits_out, coefficients, lags)
            self._prev, self._t = samples[-1].copy() if n else self._prev, self._t + n
            return samples
        return self._run_litert(n, cond, noise, forced, logits_out)

    def _run_litert(self, n: int, cond: np.ndarray | None, noise: np.ndarray | None, forced: np.ndarray | None,
                    logits_out: np.ndarray | None) -> np.ndarray:
        """:meth:`_run` through the LiteRT step graph and the numpy ring buffer."""
        if self.batch == 1 and forced is None and self._rows is None:
            return self._run_single(n, cond, noise)
        views, invoke = self._views, self._invoke
        cond_in = views["cond"] if cond is not None else None  # [B, C] (format 1) or [L * B, G]
        logits, new = views["logits"], views["new_state"]  # [B, classes], [(L-1) * B, R]
        mask, n_layers = self._ring - 1, self._hist.shape[1]
        flat = self._hist.reshape(self._ring * n_layers, -1)  # [ring * L, B * R] (a view)
        state = views["state"].reshape(self._take_at.shape[1], -1)  # [rows, B * R], a view of [rows * B, R]
        new = new.reshape(n_layers - 1, -1)  # [L-1, B * R]
        take, take_at, requant = flat.take, self._take_at, self._requant  # take_at: [ring, rows]
        table, rows, t = self._embedding, self._rows, self._t  # [classes, R], lpc_inputs rows or None
        current = self._hist[:, 0]  # [ring, B, R]: layer 0's current input per ring position
        prev = np.array(self._prev, np.int64)
        samples = np.empty((n, self.batch), np.int64)
        scratch = np.empty(logits.shape, np.float32)  # the noise is float, int8 logits too
        for i in range(n):
            pos = t & mask
            base = pos * n_layers
            if rows is None:
                table.take(prev, axis=0, out=current[pos])  # layer 0's current input: the previous samples' embeddings
            else:
                current[pos] = rows.row(prev)
            take(take_at[pos], axis=0, out=state)
            if cond_in is not None:
                cond_in[...] = cond[i]
            invoke()
            flat[base + 1:base + n_layers] = new if requant is None else requant[new.view(np.uint8)]
            if forced is not None:
                logits_out[i] = logits
                prev = forced[i]
            elif noise is None:
                logits.argmax(axis=-1, out=prev)
            else:
                np.add(logits, noise[i], out=scratch)
                scratch.argmax(axis=-1, out=prev)
            samples[i] = prev
            if rows is not None:
                rows.push(prev)
            t += 1
        self._prev, self._t = prev.copy(), t
        return samples

    def _run_single(self, n: int, cond: np.ndarray | None, noise: np.ndarray | None) -> np.ndarray:
        """The generation loop of one stream: :meth:`_run` with every per-step numpy call that can go, gone.

        Python ints instead of 1-element arrays, row tables as lists (measured: about 2 µs per sample less than
        the general loop).
        """
        views, invoke = self._views, self._invoke
        state, logits = views["state"], views["logits"][0]  # [rows, R], [classes]
        cond_in = views["cond"] if cond is not None else None  # [1, C] (format 1) or [L, G]
        mask, n_layers = self._ring - 1, self._hist.shape[1]
        flat = self._hist.reshape(self._ring * n_layers, -1)  # [ring * L, R]
        new = views["new_state"]  # [L-1, R]
        take, take_rows, requant = flat.take, self._take_rows, self._requant
        table = self._embedding  # [classes, R]
        prev, t = int(self._prev[0]), self._t
        nz = None if noise is None else noise[:, 0]  # [n, classes]
        samples = []
        for i in range(n):
            pos = t & mask
            base = pos * n_layers
            flat[base] = table[prev]  # layer 0's current input: the previous sample's embedding
            take(take_rows[pos], axis=0, out=state)
            if cond_in is not None:
                cond_in[...] = cond[i]
            invoke()
            flat[base + 1:base + n_layers] = new if requant is None else requant[new.view(np.uint8)]
            prev = int(logits.argmax() if nz is None else (logits + nz[i]).argmax())
            samples.append(prev)
            t += 1
        self._prev, self._t = np.array([prev]), t
        return np.array(samples, np.int64)[:, None]

    def _noise(self, rng: np.random.Generator, n: int, temperature: float) -> np.ndarray | None:
        """The Gumbel noise of the next n steps in this graph's logit units (None at temperature 0)."""
        return gumbel_noise(rng, n, self.batch, self.classes, temperature, self.step.outputs["logits"].scale)

    # ---------------------------------------------------------------------------------------------- public API
    def features(self, audio: np.ndarray) -> tuple[np.ndarray, float]:
        """The conditioning frames [F, width] this model expects of a recording (float [T] at ``sample_rate``), and
        the gain they were taken at. A frame is the log-mel bands, then the pitch features of a ``pitch_features``
        model (edge_runtime/features.py). A model trained at a fixed level (``normalize_peak``) gets the recording
        scaled to it; ``stream(mel, gain=gain)`` then returns the voice at the recording's own level."""
        scaled, gain = scale_to_peak(audio, self.manifest.input_peak)
        return conditioning_frames(scaled, self.config), gain

    def stream(self, mel: np.ndarray | Iterable[np.ndarray] | None = None, speaker: int | str | None = None,
               temperature: float | None = None, seed: int | None = None, seconds: float | None = None,
               block: int = 512, gain: float = 1.0) -> Iterator[np.ndarray]:
        """Generates audio, yielding float32 chunks as soon as their conditioning is available.

        Args:
            mel: conditioning frames [F, width] (:meth:`features`: log-mel bands, then any pitch features), or an
                iterable of frames ([width]) or blocks ([k, width]) as they arrive (the conditioner needs a few
                frames of lookahead, given in the manifest).
            speaker: a speaker name or index (multi-speaker models; default the first).
            temperature: sampling temperature (0 = always the most likely sample, 1.0 = the model's own
                distribution); default: the one the manifest recommends (``sampling.temperature``), else 0.5.
            seed: seeds the sampling noise; the same seed gives the same audio however ``mel`` is chunked.
            seconds: for models without local conditioning, how much audio to generate.
            block: the most samples per yielded chunk.
            gain: the gain the mel frames were taken at (:meth:`features`); the audio is divided by it.

        Yields:
            float32 audio chunks in [-1, 1] at ``sample_rate`` (for batch models: [n, B]). A model with mel
            matching in its chain holds its newest samples back until the frames after them are in (at most
            ``win_length`` samples) and yields them at the end.
        """
        if temperature is None:
            temperature = self.temperature
        if not np.isfinite(temperature) or temperature < 0:
            raise InputError(f"temperature must be a finite number >= 0, got {temperature}")
        if seed is not None and (not isinstance(seed, (int, np.integer)) or seed < 0):
            raise InputError(f"seed must be an integer >= 0, got {seed!r}")
        if not (np.isfinite(gain) and gain > 0):
            raise InputError(f"gain must be a finite number > 0, got {gain}")
        self.reset(speaker)
        rng = np.random.default_rng(seed)
        squeeze = (lambda a: a[:, 0]) if self.batch == 1 else (lambda a: a)  # noqa: E731
        if self.use_mel:
            if mel is None:
                raise InputError("this model is conditioned on mel frames: give mel frames")
            port = self.step.inputs["cond"]
            on_frames = self._add_frames if self._postfilters.needs_frames else None
            # chunks [n, B, C], each used up before the next
            for chunk in self.conditioner.stream(mel, copy=False, on_frames=on_frames):
                # Yield at most `block` samples at a time: the first audio then does not wait for a whole
                # conditioner chunk (which is large, so that its context frames cost little).
                for start in range(0, chunk.shape[0], block):
                    cond = self._gates.per_sample(chunk[start:start + block], port)
                    n = cond.shape[0]
                    samples = self._run(n, cond, self._noise(rng, n, temperature), None, None)
                    audio = self._output(samples, squeeze, gain)
                    if audio.shape[0]:  # mel matching holds the newest samples back until their frames are in
                        yield audio
            tail = self._postfilters.flush(squeeze)
            if tail is not None and tail.shape[0]:
                yield self._scale(tail, gain)
            return
        if mel is not None:
            raise InputError("this model has no local conditioning: give a number of seconds instead of mel frames")
        if seconds is None or not 0 < seconds < math.inf:
            raise InputError(f"give a finite positive number of seconds to generate, got {seconds}")
        remaining = int(round(seconds * self.sample_rate))
        while remaining > 0:
            n = min(block, remaining)
            yield self._output(self._run(n, None, self._noise(rng, n, temperature), None, None), squeeze, gain)
            remaining -= n

    def _add_frames(self, block: np.ndarray) -> None:
        """Conditioning frames [k, B, width] as they arrive, with their LPC coefficients (an LPC model), for the
        postfilters (and the input rows of an lpc_inputs model)."""
        k = block.shape[0]
        frames = block.reshape(k * self.batch, -1)
        coefficients = None
        if self.manifest.lpc_order:
            coefficients = lpc.coefficients_for(frames, self.config).reshape(k, self.batch, -1)
        self._postfilters.add_frames(coefficients, block)
        if self._rows is not None:
            self._rows.add_frames(coefficients, frames)

    def _output(self, samples: np.ndarray, squeeze, gain: float) -> np.ndarray:
        """Generated classes [n, B] -> audio: µ-law decoded, the manifest's postfilters (LPC synthesis, formant
        postfilter, de-emphasis, mel matching), back to the level of the recording the mel came from."""
        return self._scale(self._postfilters(self._decode[samples], squeeze), gain)

    @staticmethod
    def _scale(audio: np.ndarray, gain: float) -> np.ndarray:
        """The chain's output at the level of the recording the mel came from, float32 in [-1, 1]."""
        if gain != 1.0:
            audio = np.clip(audio / gain, -1.0, 1.0)
        return audio if audio.dtype == np.float32 else np.clip(audio, -1.0, 1.0).astype(np.float32)

    def teacher_forced_logits(self, classes: np.ndarray, mel: np.ndarray | None = None,
                              speaker: int | str | None = None) -> np.ndarray:
        """Logits [T - 1, classes] (float32) predicting samples 1..T-1 of an utterance from the true past.

        The same numbers the training model's ``logits[:, :-1]`` gives (up to quantization), through the same
        ring buffers and graphs that generation uses.
        """
        classes = np.asarray(classes, np.int64)
        if self.batch != 1 or classes.ndim != 1 or classes.shape[0] < 2:
            raise InputError("teacher forcing takes one utterance of at least two samples (batch-1 models)")
        self.reset(speaker)
        n = classes.shape[0] - 1
        cond = None
        if self.use_mel:
            if mel is None:
                raise InputError("this model is conditioned on mel frames")
            cond = np.concatenate(list(self.conditioner.stream(mel)))[1:n + 1]  # step t uses c[t + 1]
            cond = self._gates.per_sample(cond, self.step.inputs["cond"])
            if cond.shape[0] < n:
                raise InputError(f"{classes.shape[0]} samples need {classes.shape[0] // self.conditioner.hop} mel frames")
        out = np.empty((n, 1, self.classes), self.step.outputs["logits"].dtype)
        self._prev = classes[:1]
        if self._rows is not None:  # the filter starts at the first sample, as in training
            self._rows.add_frames(lpc.coefficients_for(mel, self.config), mel)
            if self._native is None:
                self._rows.push(self._prev)
            else:
                self._native.engine.lpc_push(int(classes[0]), self._rows.filter.take(1)[0])
                if self._rows.period is not None:  # the engine keeps the classes; the lags move on past it
                    self._rows.period.take(1)
        self._run(n, cond, None, classes[1:, None], out)
        return self.step.outputs["logits"].dequantize(out[:, 0])
