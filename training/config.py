"""One frozen configuration for a WaveNet run: architecture, front end and training.

The config is saved as ``config.json`` in every run folder and inside every exported manifest, so a model is
always rebuilt from the file that trained it. Unknown keys are errors, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.errors import WavenetEdgeError
from edge_runtime.features import frame_width
from edge_runtime.lpc import MAX_FFT as MAX_LPC_FFT, MAX_ORDER as MAX_LPC_ORDER


class ConfigError(WavenetEdgeError):
    """A config value or key is invalid (the message names it)."""


@dataclass(frozen=True)
class Config:
    """Every hyperparameter of a WaveNet model and its training.

    Conventions: ``gate_channels`` is the width of the dilated convolution's output *before* the tanh/sigmoid
    split (the gated unit has ``gate_channels // 2`` channels). ``n_mels == 0`` disables local conditioning,
    ``speaker_dim == 0`` disables global conditioning; ``speakers`` is filled from the data by ``train``.
    """

    name: str = "custom"
    # Signal.
    sample_rate: int = 16000
    mu_classes: int = 256
    # Dilated stack: dilations 1, 2, ..., 2**(layers_per_stack-1), repeated `stacks` times.
    stacks: int = 2
    layers_per_stack: int = 10
    kernel_size: int = 2
    residual_channels: int = 64
    gate_channels: int = 128
    skip_channels: int = 128
    head_channels: int = 256
    # Log-mel front end (frame f is centred on sample f * hop_length + hop_length // 2).
    n_mels: int = 80
    n_fft: int = 1024
    win_length: int = 640
    hop_length: int = 160
    fmin: float = 0.0
    fmax: float = 8000.0
    log_floor: float = 1e-5
    # Upsampling network: `cond_layers` frame-rate convolutions (kernel 3), then for each scale s a nearest
    # repeat by s followed by a learned (2s+1)-tap smoothing filter; prod(upsample_scales) == hop_length.
    cond_channels: int = 80
    cond_layers: int = 1
    # Log-mel values lie in [ln(log_floor), ~0] (about [-11.5, 0]): mapped to about [-1, 1] before the first
    # convolution. Raw, they saturated 89 % of the tanh units of a trained `s` model's frame convolution.
    normalize_mel: bool = True
    upsample_scales: tuple[int, ...] = (4, 5, 8)
    # Global conditioning.
    speaker_dim: int = 16
    speakers: tuple[str, ...] = ()
    # Data preparation.
    trim_db: float = 40.0
    # Each recording scaled to this peak before anything else (0: as recorded). A quiet speaker's excitation
    # otherwise lives in µ-law's linear segment (|e| < 1/255) and a model learns it on a handful of classes.
    # The runtime scales a recording to it before the log-mel, and the output back (``edge_runtime.audio``).
    normalize_peak: float = 0.0
    # Training.
    batch_size: int = 8
    segment_length: int = 4096
    # Learning-rate schedule: "exponential" (lr * lr_decay_rate ** (step / lr_decay_steps)), "cosine" (from lr to
    # lr_min over `steps`: made for a planned run length) or "inverse_time" (lr / (1 + lr_decay_rate * step /
    # lr_decay_steps), LPCNet's: no horizon, for open-ended runs); all after a linear warm-up of `warmup_steps`.
    lr_schedule: str = "exponential"
    learning_rate: float = 1e-3
    lr_decay_rate: float = 0.7
    lr_decay_steps: int = 1000
    lr_min: float = 1e-5
    warmup_steps: int = 0
    adam_beta2: float = 0.999
    # Score every position of a training window (its first samples see zero-padded history) instead of only the
    # last `segment_length` samples after a full receptive field of context: the window is then `segment_length`
    # long and no compute goes to unscored context.
    score_whole_window: bool = False
    # Pre-emphasis (LPCNet): the model learns the µ-law classes of x[t] - preemphasis * x[t-1] and the runtime
    # de-emphasises, which shapes the µ-law quantisation noise like the speech spectrum (0 = off).
    preemphasis: float = 0.0
    # Excitation modelling (LPCNet, ExcitNet; edge_runtime/lpc.py): linear prediction of order `lpc_order` from
    # each log-mel frame (bandwidth expansion `lpc_gamma`); the model learns the µ-law classes of the prediction
    # residual and the runtime adds the prediction back (0 = off).
    lpc_order: int = 0
    lpc_gamma: float = 0.9
    # LPCNet's inputs (needs lpc_order): besides the excitation e[t] the network reads the µ-law classes of the
    # signal s[t] and of the next sample's prediction p[t+1], each through its own embedding, summed into layer
    # 0's input. s is rebuilt from the quantised excitation, as generation sees it; the step graph is unchanged
    # (the runtime sums the three rows).
    lpc_inputs: bool = False
    # LPCNet's pitch features (edge_runtime/features.py): each conditioning frame carries, after its log-mel bands,
    # the voicing and period of the signal around it, so the network need not infer the period from harmonics.
    pitch_features: bool = False
    # The excitation one pitch period back (needs lpc_inputs and pitch_features): a fourth class through its own
    # table in layer 0's input sum, e[t - L] with L the frame's period from its pitch features (long-term
    # prediction, as in FARGAN; edge_runtime/period.py). Manifest format 4.
    period_input: bool = False
    # Noise on the fed-back input (LPCNet, FFTNet): during training the network reads its past samples' µ-law
    # classes plus rounded Gaussian noise of this standard deviation (in classes), while the targets stay clean,
    # so it learns to continue from a history with errors like its own at synthesis (0 = off).
    input_noise: float = 0.0
    # The same on a period_input model's period class alone (training only), as LPCNet and FARGAN train their
    # feedback inputs: so that the network does not take its last period for an exact copy.
    period_noise: float = 0.0
    grad_clip_norm: float = 1.0
    ema_decay: float = 0.999
    steps: int = 100000
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    val_every: int = 1000
    seed: int = 0
    jit_compile: bool = True
    mixed_precision: str = "none"
    # Quantization-aware training (training/quant.py): fake int8 quantization at the tensors of the int8 step graph,
    # with moving min/max ranges (decay `qat_range_decay`) set first by `qat_calibration_batches` forward passes.
    # Normally a fine-tuning run of a float run (`wavenet-edge train --qat-from`).
    qat: bool = False
    qat_range_decay: float = 0.99
    qat_calibration_batches: int = 32
    # How the int8 step graph scales its one `state` tensor: "shared" (one range for every layer's rows, what
    # QAT runs without this field did) or "per_layer" (each layer's rows on its own symmetric range, carried in
    # the one tensor by a per-layer gain; what `--qat-from` sets).
    qat_state_scales: str = "shared"

    def __post_init__(self) -> None:
        self._validate()

    # ------------------------------------------------------------------ derived quantities
    @property
    def dilations(self) -> tuple[int, ...]:
        """Dilation of every layer, in order."""
        return tuple(2**i for i in range(self.layers_per_stack)) * self.stacks

    @property
    def n_layers(self) -> int:
        """Number of residual layers."""
        return self.stacks * self.layers_per_stack

    @property
    def use_mel(self) -> bool:
        """Whether the model is locally conditioned on log-mel frames."""
        return self.n_mels > 0

    @property
    def frame_width(self) -> int:
        """Values per conditioning frame: the log-mel bands, then the pitch features of a ``pitch_features`` model."""
        return frame_width(self.to_dict())

    @property
    def lpc_columns(self) -> int:
        """Classes per position of the ``lpc`` input: s and p, and the period's of a ``period_input`` model."""
        return 3 if self.period_input else 2

    @property
    def use_speaker(self) -> bool:
        """Whether the model is globally conditioned on a speaker embedding."""
        return self.speaker_dim > 0

    @property
    def frame_length(self) -> int:
        """Samples per conditioning frame (1 without local conditioning)."""
        return self.hop_length if self.use_mel else 1

    # ------------------------------------------------------------------ construction
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "Config":
        """Returns a named preset (``tiny``, ``xs``, ``s``, ``paper``), optionally with overrides."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls.from_dict({**PRESETS[name], "name": name, **overrides})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Config":
        """Builds a config from a dict, rejecting unknown keys and coercing JSON lists to tuples."""
        if not isinstance(values, dict):
            raise ConfigError(f"config must be a JSON object, got {type(values).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            hint = _closest(unknown[0], known)
            raise ConfigError(f"unknown config key {unknown[0]!r}" + (f" (did you mean {hint!r}?)" if hint else ""))
        return cls(**{k: _coerce(known[k], k, v) for k, v in values.items()})

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "Config":
        """Reads a config written by :meth:`to_json`."""
        try:
            values = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read config {path}: {e}") from None
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-serialisable dict of every field."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def to_json(self, path: str | os.PathLike) -> None:
        """Writes the config atomically (temporary file, then rename)."""
        from edge_runtime.files import write_text_atomic

        write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    def replace(self, **changes: Any) -> "Config":
        """Returns a copy with some fields changed (validated like any other config)."""
        return self.from_dict({**self.to_dict(), **changes})

    def with_overrides(self, assignments: list[str] | tuple[str, ...]) -> "Config":
        """Applies ``key=value`` strings (the CLI's ``--set``); values are parsed by the field's type."""
        known = {f.name: f for f in dataclasses.fields(self)}
        changes: dict[str, Any] = {}
        for item in assignments:
            key, sep, raw = item.partition("=")
            key = key.strip()
            if not sep:
                raise ConfigError(f"an override must be key=value, got {item!r}")
            if key not in known:
                hint = _closest(key, known)
                raise ConfigError(f"unknown config key {key!r}" + (f" (did you mean {hint!r}?)" if hint else ""))
            changes[key] = _parse_text(known[key], key, raw.strip())
        return self.replace(**changes)

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        positive = ["sample_rate", "mu_classes", "stacks", "layers_per_stack", "residual_channels",
                    "gate_channels", "skip_channels", "head_channels", "batch_size", "segment_length", "steps_or_zero",
                    "checkpoint_every", "keep_checkpoints", "val_every", "lr_decay_steps"]
        for key in positive:
            if key == "steps_or_zero":
                need(self.steps >= 0, f"steps must be >= 0, got {self.steps}")
                continue
            need(getattr(self, key) > 0, f"{key} must be > 0, got {getattr(self, key)}")
        need(self.kernel_size in (2, 3), f"kernel_size must be 2 or 3, got {self.kernel_size}")
        need(self.n_layers >= 2, f"need at least 2 layers, got {self.n_layers}")
        need(self.gate_channels % 2 == 0, f"gate_channels must be even, got {self.gate_channels}")
        need(self.n_mels >= 0 and self.speaker_dim >= 0, "n_mels and speaker_dim must be >= 0")
        need(self.learning_rate > 0 and 0 < self.lr_decay_rate <= 1, "learning_rate > 0 and 0 < lr_decay_rate <= 1")
        need(self.lr_schedule in LR_SCHEDULES,
             f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        need(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        need(0 < self.adam_beta2 < 1, f"adam_beta2 must be in (0, 1), got {self.adam_beta2}")
        need(0 <= self.preemphasis < 1, f"preemphasis must be in [0, 1), got {self.preemphasis}")
        need(0 <= self.normalize_peak <= 1, f"normalize_peak must be in [0, 1] (0: off), got {self.normalize_peak}")
        need(0 <= self.lpc_order <= MAX_LPC_ORDER, f"lpc_order must be in [0, {MAX_LPC_ORDER}], got {self.lpc_order}")
        need(0 < self.lpc_gamma <= 1, f"lpc_gamma must be in (0, 1], got {self.lpc_gamma}")
        need(0 <= self.input_noise <= self.mu_classes / 4,
             f"input_noise must be in [0, {self.mu_classes / 4:g}] classes, got {self.input_noise}")
        need(0 <= self.period_noise <= self.mu_classes / 4,
             f"period_noise must be in [0, {self.mu_classes / 4:g}] classes, got {self.period_noise}")
        need(not self.period_noise or self.period_input, "period_noise needs period_input (the class it perturbs)")
        need(not self.lpc_inputs or self.lpc_order, "lpc_inputs needs lpc_order > 0 (s and p come from the filter)")
        need(not self.lpc_order or self.use_mel, "lpc_order needs local conditioning (the LPC comes from the mel)")
        need(not self.pitch_features or self.use_mel, "pitch_features needs local conditioning (n_mels > 0)")
        need(not self.period_input or (self.lpc_inputs and self.pitch_features),
             "period_input needs lpc_inputs and pitch_features (its lag comes from the pitch features)")
        need(0 <= self.lr_min <= self.learning_rate, f"need 0 <= lr_min <= learning_rate, got lr_min={self.lr_min}")
        need(0 <= self.ema_decay < 1, f"ema_decay must be in [0, 1), got {self.ema_decay}")
        need(self.mixed_precision in ("none", "bfloat16"),
             f"mixed_precision must be none or bfloat16, got {self.mixed_precision!r}")
        need(len(set(self.speakers)) == len(self.speakers), "speakers must be unique")
        need(0 < self.qat_range_decay < 1, f"qat_range_decay must be in (0, 1), got {self.qat_range_decay}")
        need(self.qat_calibration_batches >= 0, f"qat_calibration_batches must be >= 0, got {self.qat_calibration_batches}")
        need(self.qat_state_scales in QAT_STATE_SCALES,
             f"qat_state_scales must be one of {', '.join(QAT_STATE_SCALES)}, got {self.qat_state_scales!r}")
        need(not (self.qat and self.mixed_precision != "none"),
             "qat needs mixed_precision none (the int8 grids are computed in float32)")
        if self.use_mel:
            need(self.win_length <= self.n_fft, f"win_length ({self.win_length}) must be <= n_fft ({self.n_fft})")
            need(self.hop_length % 2 == 0, f"hop_length must be even, got {self.hop_length}")
            need(math.prod(self.upsample_scales) == self.hop_length,
                 f"upsample_scales {list(self.upsample_scales)} must multiply to hop_length {self.hop_length}")
            need(0 <= self.fmin < self.fmax <= self.sample_rate / 2,
                 f"need 0 <= fmin < fmax <= sample_rate/2, got fmin={self.fmin} fmax={self.fmax}")
            need(self.log_floor > 0, "log_floor must be > 0")
            need(self.lpc_order < self.hop_length,
                 f"lpc_order ({self.lpc_order}) must be below the frame size (hop_length {self.hop_length})")
            need(not self.lpc_order or self.n_fft <= MAX_LPC_FFT,  # else it trains, then the runtime refuses it
                 f"lpc_order needs n_fft <= {MAX_LPC_FFT} (the runtime's LPC envelope), got {self.n_fft}")
            need(self.cond_channels > 0 and self.cond_layers >= 0, "cond_channels > 0 and cond_layers >= 0")


LR_SCHEDULES = ("exponential", "cosine", "inverse_time")
QAT_STATE_SCALES = ("shared", "per_layer")


def receptive_field(config: Config) -> int:
    """Number of past samples (including the current one) that one output depends on."""
    return (config.kernel_size - 1) * sum(config.dilations) + 1


def macs_per_sample(config: Config) -> int:
    """Multiply-adds per generated sample of the single-step network (conditioning projections included)."""
    r, g, h = config.residual_channels, config.gate_channels, config.gate_channels // 2
    cond = config.cond_channels if config.use_mel else 0
    per_layer = config.kernel_size * r * g + cond * g + h * r + h * config.skip_channels
    head = config.skip_channels * config.head_channels + config.head_channels * config.mu_classes
    return config.n_layers * per_layer - h * r + head  # the last layer has no residual projection


# Presets. `s` is the reference edge model (0.88 M multiply-adds per sample: macs_per_sample); `xs` is sized for a
# Raspberry-Pi-class core (about a fifth of `s`); `paper` follows the paper's text (16 kHz, 256 µ-law classes,
# dilations 1..512 repeated three times) with channel widths of common reproductions, which the paper omits.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(sample_rate=8000, stacks=1, layers_per_stack=4, residual_channels=16, gate_channels=32,
                 skip_channels=32, head_channels=32, n_mels=16, n_fft=128, win_length=96, hop_length=32,
                 fmax=4000.0, cond_channels=16, cond_layers=1, upsample_scales=(4, 8), speaker_dim=4,
                 batch_size=4, segment_length=256, learning_rate=3e-3, lr_decay_steps=1000, steps=200,
                 checkpoint_every=100, val_every=100, ema_decay=0.9, jit_compile=False),
    "xs": dict(sample_rate=16000, stacks=2, layers_per_stack=8, residual_channels=32, gate_channels=64,
               skip_channels=64, head_channels=128, cond_channels=32),
    "s": dict(),
    "paper": dict(sample_rate=16000, stacks=3, layers_per_stack=10, residual_channels=256, gate_channels=512,
                  skip_channels=256, head_channels=256, cond_channels=128, cond_layers=2, speaker_dim=64,
                  batch_size=4, segment_length=8000),
}


def _closest(key: str, known: dict[str, Any]) -> str | None:
    import difflib

    match = difflib.get_close_matches(key, list(known), n=1)
    return match[0] if match else None


def _base_type(f: dataclasses.Field) -> str:
    return str(f.type).replace("typing.", "")


def _coerce(f: dataclasses.Field, key: str, value: Any) -> Any:
    """Checks a JSON value against the field's declared type (lists become tuples)."""
    t = _base_type(f)
    if t.startswith("tuple"):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        inner = int if "int" in t else str
        if not all(isinstance(v, inner) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{key} must be a list of {inner.__name__}, got {value!r}")
        return tuple(value)
    expected = {"int": int, "float": (int, float), "str": str, "bool": bool}[t]
    if isinstance(value, bool) and t != "bool" or not isinstance(value, expected):
        raise ConfigError(f"{key} must be {t}, got {value!r}")
    return float(value) if t == "float" else value


def _parse_text(f: dataclasses.Field, key: str, raw: str) -> Any:
    """Parses a command-line value by the field's type."""
    t = _base_type(f)
    try:
        if t.startswith("tuple"):
            parts = [p.strip() for p in raw.split(",") if p.strip()]
            return tuple(int(p) for p in parts) if "int" in t else tuple(parts)
        if t == "bool":
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        return {"int": int, "float": float, "str": str}[t](raw)
    except ValueError:
        raise ConfigError(f"bad value for {key}: {raw!r} (expected {t})") from None
