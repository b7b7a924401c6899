"""WaveNet (van den Oord et al., 2016) as a Keras model.

Shapes: B batch, T samples, F = T // hop frames, R residual, G gate (pre-split), H = G // 2, S skip, C cond.

    audio [B,T] --Embedding--> x [B,T,R]
    mel [B,F,n_mels] --Upsampler--> c [B,T,C] --shift by one--> c' (c'[t] belongs to the sample t+1 predicted at t)
    speaker [B] --Embedding--> s [B,D]
    each layer l (dilation d):  a = CausalConv_d(x) + c' V_l + s U_l          [B,T,G]
                                z = tanh(a[..., :H]) * sigmoid(a[..., H:])    [B,T,H]
                                x = x + z W_l + b_l   (not in the last layer)  [B,T,R]
    skip = concat(z_1..z_L) W_skip + b   (= the sum of per-layer 1x1 skip convolutions)   [B,T,S]
    logits = relu(relu(skip) W_1 + b_1) W_2 + b_2                                         [B,T,classes]

logits[:, t] predict sample t+1 from samples <= t. The model is plain Keras (no Lambda layers); it is saved as
``config.json`` + weights and rebuilt from the config, so loading never executes code from a file.

A layer after its convolution (:func:`gated_unit`) and the output head (:func:`output_head`) are written once, for
this model and for the single-step graph (``training/step.py``) alike, with the fake quantization of a QAT model
(``config.qat``, see ``training/quant.py``) at the same tensors in both.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers, ops

from training.config import Config, receptive_field
from training.quant import make_trackers, quantizer, snap_weights

__all__ = ["WaveNet", "build_model", "receptive_field", "model_inputs", "gated_unit", "output_head"]


def gated_unit(pre, extra, x, residual, q):
    """A layer after its dilated convolution: conditioning, tanh * sigmoid gate, residual connection.

    ``pre`` [.., G] is the convolution's output, ``extra`` the conditioning + speaker gate input (or None),
    ``x`` [.., R] the layer's input, ``residual`` the 1x1 map z -> [.., R] (None in the last layer) and
    ``q(name, tensor)`` the fake quantization of the int8 graph's tensors (the identity without QAT).
    Returns (the next layer's input, the gate output z [.., G / 2]).
    """
    a = q("pre", pre)
    if extra is not None:
        a = q("gate", a + q("cond", extra))  # [.., G]
    f, g = ops.split(a, 2, axis=-1)
    z = q("z", q("tanh", ops.tanh(f)) * q("sigmoid", ops.sigmoid(g)))  # [.., H]
    return (x if residual is None else q("state", x + q("res", residual(z)))), z


def output_head(zs, skip, head1, head2, q):
    """Skip sum over the concatenated gate outputs ``zs``, relu, head layer, relu, logits (maps as callables)."""
    s = q("skip", ops.relu(skip(zs)))  # [.., S]; the relu fuses into the int8 graph's FULLY_CONNECTED
    return q("logits", head2(q("head", ops.relu(head1(s)))))  # [.., classes]


def linear(layer: layers.Dense, quantize: bool):
    """A Dense layer as a callable; with QAT its kernel snapped to the int8 grid (the same variables)."""
    if not quantize:
        return layer

    def quantized(v):
        if not layer.built:  # built by its first call otherwise
            layer.build(v.shape)
        return ops.matmul(v, snap_weights(layer.kernel)) + layer.bias

    return quantized


def conditioning_context(config: Config) -> int:
    """Mel frames of context each side that the upsampling network needs (its lookahead, in frames)."""
    return config.cond_layers + math.ceil(sum(s / math.prod(config.upsample_scales[:i + 1])
                                              for i, s in enumerate(config.upsample_scales)))


def mel_normalization(pad_value: float) -> tuple[float, float]:
    """(center, 1 / half-range) mapping log-mel values from [ln(log_floor), 0] to [-1, 1]."""
    return pad_value / 2.0, -2.0 / pad_value


class Upsampler(layers.Layer):
    """Log-mel frames -> per-sample conditioning: frame-rate convolutions, then learned upsampling stages.

    Each stage repeats every vector ``s`` times and smooths along time with a learned (2s+1)-tap filter shared
    by all channels (initialised to a box filter, so training starts from nearest-neighbour upsampling).
    Every operation is 'valid' (no padding inside): the mel is padded once with ``context`` frames of silence
    (``log(log_floor)``) on each side, so any chunk computed with that much context is bit-for-bit a slice of
    the whole -- what the streaming conditioner graph relies on.
    """

    def __init__(self, cond_channels: int, cond_layers: int, upsample_scales: tuple[int, ...], context: int,
                 pad_value: float, normalize: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.cond_channels, self.cond_layers, self.context = cond_channels, cond_layers, context
        self.upsample_scales, self.pad_value, self.normalize = tuple(upsample_scales), pad_value, normalize
        self.convs = [layers.Conv1D(cond_channels, 3, padding="valid", activation="tanh", name=f"frame_conv_{i}")
                      for i in range(cond_layers)]
        self.kernels = []

    def build(self, input_shape):
        channels = input_shape[-1]
        for conv in self.convs:
            conv.build((None, None, channels))
            channels = self.cond_channels
        self.kernels = [self.add_weight(shape=(2 * s + 1,), initializer=keras.initializers.Constant(1 / (2 * s + 1)),
                                        name=f"smooth_{i}") for i, s in enumerate(self.upsample_scales)]

    def crop(self) -> int:
        """Samples to drop on each side of the 'valid' output of a window padded by ``context`` frames."""
        first = -self.context + self.cond_layers  # frame index of the first output, relative to the window's centre
        for s in self.upsample_scales:
            first = first * s + s
        return -first

    def valid(self, window):
        """Conditioning of the centre of a window: [B, n + 2*context, n_mels] -> [B, n * hop, C]."""
        return self.upsample(self.frames(window))

    def frames(self, window):
        """The frame-rate (non-linear) part: [B, frames, n_mels] -> [B, frames - 2 * cond_layers, C]."""
        x = window
        if self.normalize:
            center, inv_scale = mel_normalization(self.pad_value)
            x = (x - center) * inv_scale
        for conv in self.convs:
            x = conv(x)  # [B, frames - 2, C]
        return x

    def upsample(self, x):
        """The linear part: [B, frames', K] -> [B, (frames' - 2 * (context - cond_layers)) * hop, K] for any width K.

        Linear and the same filter for every channel, so it commutes with a projection of the channels: the
        streaming conditioner projects at frame rate first (the per-layer conditioning weights), then upsamples.
        """
        for s, kernel in zip(self.upsample_scales, self.kernels):
            x = ops.repeat(x, s, axis=1)  # [B, samples * s, K]
            depthwise = ops.tile(ops.cast(kernel, x.dtype)[:, None, None], (1, x.shape[-1], 1))
            x = ops.depthwise_conv(x, depthwise, padding="valid")  # [B, samples * s - 2s, K]
        c = self.crop()
        return x[:, c:ops.shape(x)[1] - c]

    def call(self, mel):
        padded = ops.pad(mel, [[0, 0], [self.context, self.context], [0, 0]], constant_values=self.pad_value)
        return self.valid(padded)  # [B, F * hop, C]

    def get_config(self):
        return {**super().get_config(), "cond_channels": self.cond_channels, "cond_layers": self.cond_layers,
                "upsample_scales": list(self.upsample_scales), "context": self.context, "pad_value": self.pad_value,
                "normalize": self.normalize}


class ResidualLayer(layers.Layer):
    """One gated residual layer: causal dilated convolution, conditioning, tanh*sigmoid gate, residual 1x1."""

    def __init__(self, dilation: int, kernel_size: int, residual_channels: int, gate_channels: int,
                 cond_channels: int = 0, speaker_dim: int = 0, last: bool = False, quantize: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.dilation, self.kernel_size, self.last, self.quantize = dilation, kernel_size, last, quantize
        self.residual_channels, self.gate_channels = residual_channels, gate_channels
        self.cond_channels, self.speaker_dim = cond_channels, speaker_dim
        self.conv = layers.Conv1D(gate_channels, kernel_size, dilation_rate=dilation, padding="causal", name="conv")
        self.cond = layers.Dense(gate_channels, use_bias=False, name="cond") if cond_channels else None
        self.speaker = layers.Dense(gate_channels, use_bias=False, name="speaker") if speaker_dim else None
        # The last layer's residual output would feed nothing.
        self.res = None if last else layers.Dense(residual_channels, name="res")

    def build(self, input_shape):
        self.conv.build((None, None, self.residual_channels))
        if self.cond is not None:
            self.cond.build((None, None, self.cond_channels))
        if self.speaker is not None:
            self.speaker.build((None, self.speaker_dim))
        if self.res is not None:
            self.res.build((None, None, self.gate_channels // 2))

    def call(self, x, cond=None, speaker=None, q=None):
        extra = None if self.cond is None else self.cond(cond)  # [B, T, G]
        if self.speaker is not None:
            bias = self.speaker(speaker)[:, None, :]  # [B, 1, G] gate biases
            extra = bias if extra is None else extra + bias
        residual = None if self.res is None else linear(self.res, self.quantize)
        return gated_unit(self._conv(x), extra, x, residual, q or quantizer(None))  # [B, T, R], [B, T, H]

    def _conv(self, x):
        """The causal dilated convolution [B, T, G]; with QAT the same with its kernel snapped to the int8 grid."""
        if not self.quantize:
            return self.conv(x)
        padded = ops.pad(x, [[0, 0], [(self.kernel_size - 1) * self.dilation, 0], [0, 0]])
        kernel = snap_weights(self.conv.kernel)  # [k, R, G], per output channel over [k, R] like the step's FC
        return ops.conv(padded, kernel, padding="valid", dilation_rate=self.dilation) + self.conv.bias

    def get_config(self):
        return {**super().get_config(), "dilation": self.dilation, "kernel_size": self.kernel_size,
                "residual_channels": self.residual_channels, "gate_channels": self.gate_channels,
                "cond_channels": self.cond_channels, "speaker_dim": self.speaker_dim, "last": self.last,
                "quantize": self.quantize}


class WaveNet(keras.Model):
    """The full-sequence (teacher-forced) WaveNet; ``call`` takes the dict of :func:`model_inputs`."""

    def __init__(self, config: Config, **kwargs):
        super().__init__(**kwargs)
        if config.use_speaker and not config.speakers:
            raise ValueError("speaker_dim > 0 but config.speakers is empty (train fills it from the data)")
        self.config = config
        cond = config.cond_channels if config.use_mel else 0
        if config.use_mel and config.cond_layers == 0:
            cond = config.frame_width
        self.embed = layers.Embedding(config.mu_classes, config.residual_channels, name="sample_embedding")
        # lpc_inputs: s[t] and p[t+1] (inputs["lpc"]) through their own tables, summed into layer 0's input; a
        # period_input model's e[t + 1 - L] too
        self.embed_lpc = ([layers.Embedding(config.mu_classes, config.residual_channels, name=f"{n}_embedding")
                           for n in ("signal", "prediction", "period")[:config.lpc_columns]]
                          if config.lpc_inputs else [])
        self.upsampler = (Upsampler(config.cond_channels, config.cond_layers, config.upsample_scales,
                                    conditioning_context(config), math.log(config.log_floor), config.normalize_mel,
                                    name="upsampler")
                          if config.use_mel else None)
        self.speaker_embed = (layers.Embedding(len(config.speakers), config.speaker_dim, name="speaker_embedding")
                              if config.use_speaker else None)
        n = config.n_layers
        self.blocks = [ResidualLayer(d, config.kernel_size, config.residual_channels, config.gate_channels, cond,
                                     config.speaker_dim, last=(i == n - 1), quantize=config.qat, name=f"layer_{i}")
                       for i, d in enumerate(config.dilations)]
        self.skip = layers.Dense(config.skip_channels, name="skip")
        self.head1 = layers.Dense(config.head_channels, name="head_1")
        self.head2 = layers.Dense(config.mu_classes, name="head_2", dtype="float32")
        # QAT: the moving ranges of the quantized tensors (non-trainable weights; none in a float model)
        self.trackers = (make_trackers(n, config.qat_range_decay, config.use_mel or config.use_speaker,
                                       config.qat_state_scales == "per_layer")
                         if config.qat else None)

    def conditioning(self, mel):
        """Per-sample conditioning c' [B, T, C], shifted so that c'[t] belongs to sample t+1."""
        c = self.upsampler(mel)  # [B, T, C]
        # The prediction made at t is for sample t+1: drop c[0], pad the end (the last logit is never scored).
        return ops.pad(c[:, 1:], [[0, 0], [0, 1], [0, 0]])

    def trunk(self, inputs):
        """The residual stack: (gate outputs z_l [B, T, H], layer inputs x_l [B, T, R], conditioning c')."""
        x = self.embed(inputs["audio"])  # [B, T, R]
        for i, table in enumerate(self.embed_lpc):
            x = x + table(inputs["lpc"][..., i])
        c = self.conditioning(inputs["mel"]) if self.upsampler is not None else None
        s = self.speaker_embed(inputs["speaker"]) if self.speaker_embed is not None else None  # [B, D]
        if self.trackers is not None and not self.trackers["state"].built:
            for tracker in self.trackers.values():  # built here, not at first use: weights named wavenet/<name>_range/
                tracker.build()
        # "state" site l is layer l's output x_{l+1}; the last layer has none, so its site takes the embedding
        x = quantizer(self.trackers, len(self.blocks) - 1)("state", x)
        zs, xs = [], []
        for l, block in enumerate(self.blocks):
            xs.append(x)
            x, z = block(x, c, s, q=quantizer(self.trackers, l))
            zs.append(z)
        return zs, xs, c

    def call(self, inputs, training=False):
        zs, _, _ = self.trunk(inputs)
        qat = self.trackers is not None
        logits = output_head(ops.concatenate(zs, axis=-1), linear(self.skip, qat), linear(self.head1, qat),
                             linear(self.head2, qat), quantizer(self.trackers))  # [B, T, classes]
        return ops.cast(logits, "float32")

    def get_config(self):
        return {"config": self.config.to_dict(), "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(Config.from_dict(config["config"]), name=config.get("name"))


def model_inputs(config: Config, batch: int, samples: int) -> dict:
    """Zero-filled inputs of the right shapes and dtypes (used to build the model's weights)."""
    inputs = {"audio": np.zeros((batch, samples), np.int32)}
    if config.use_mel:
        inputs["mel"] = np.zeros((batch, samples // config.hop_length, config.frame_width), np.float32)
    if config.lpc_inputs:
        inputs["lpc"] = np.full((batch, samples, config.lpc_columns), config.mu_classes // 2, np.int32)
    if config.use_speaker:
        inputs["speaker"] = np.zeros((batch,), np.int32)
    return inputs


def build_model(config: Config) -> WaveNet:
    """Builds a WaveNet for ``config`` with its weights created (random init, seeded by ``config.seed``)."""
    keras.utils.set_random_seed(config.seed)
    model = WaveNet(config, name="wavenet")
    model(model_inputs(config, 1, config.frame_length * 2))
    return model
