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
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers, ops

from training.config import Config, receptive_field

__all__ = ["WaveNet", "build_model", "receptive_field", "model_inputs"]


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
        x = window
        if self.normalize:
            center, inv_scale = mel_normalization(self.pad_value)
            x = (x - center) * inv_scale
        for conv in self.convs:
            x = conv(x)  # [B, frames - 2, C]
        for s, kernel in zip(self.upsample_scales, self.kernels):
            x = ops.repeat(x, s, axis=1)  # [B, samples * s, C]
            depthwise = ops.tile(ops.cast(kernel, x.dtype)[:, None, None], (1, x.shape[-1], 1))
            x = ops.depthwise_conv(x, depthwise, padding="valid")  # [B, samples * s - 2s, C]
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
                 cond_channels: int = 0, speaker_dim: int = 0, last: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.dilation, self.kernel_size, self.last = dilation, kernel_size, last
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

    def call(self, x, cond=None, speaker=None):
        a = self.conv(x)  # [B, T, G]
        if self.cond is not None:
            a = a + self.cond(cond)  # [B, T, G]
        if self.speaker is not None:
            a = a + self.speaker(speaker)[:, None, :]  # [B, 1, G] gate biases
        f, g = ops.split(a, 2, axis=-1)
        z = ops.tanh(f) * ops.sigmoid(g)  # [B, T, H]
        x_next = x if self.res is None else x + self.res(z)
        return x_next, z

    def get_config(self):
        return {**super().get_config(), "dilation": self.dilation, "kernel_size": self.kernel_size,
                "residual_channels": self.residual_channels, "gate_channels": self.gate_channels,
                "cond_channels": self.cond_channels, "speaker_dim": self.speaker_dim, "last": self.last}


class WaveNet(keras.Model):
    """The full-sequence (teacher-forced) WaveNet; ``call`` takes the dict of :func:`model_inputs`."""

    def __init__(self, config: Config, **kwargs):
        super().__init__(**kwargs)
        if config.use_speaker and not config.speakers:
            raise ValueError("speaker_dim > 0 but config.speakers is empty (train fills it from the data)")
        self.config = config
        cond = config.cond_channels if config.use_mel else 0
        if config.use_mel and config.cond_layers == 0:
            cond = config.n_mels
        self.embed = layers.Embedding(config.mu_classes, config.residual_channels, name="sample_embedding")
        self.upsampler = (Upsampler(config.cond_channels, config.cond_layers, config.upsample_scales,
                                    conditioning_context(config), math.log(config.log_floor), config.normalize_mel,
                                    name="upsampler")
                          if config.use_mel else None)
        self.speaker_embed = (layers.Embedding(len(config.speakers), config.speaker_dim, name="speaker_embedding")
                              if config.use_speaker else None)
        n = config.n_layers
        self.blocks = [ResidualLayer(d, config.kernel_size, config.residual_channels, config.gate_channels, cond,
                                     config.speaker_dim, last=(i == n - 1), name=f"layer_{i}")
                       for i, d in enumerate(config.dilations)]
        self.skip = layers.Dense(config.skip_channels, name="skip")
        self.head1 = layers.Dense(config.head_channels, name="head_1")
        self.head2 = layers.Dense(config.mu_classes, name="head_2", dtype="float32")

    def conditioning(self, mel):
        """Per-sample conditioning c' [B, T, C], shifted so that c'[t] belongs to sample t+1."""
        c = self.upsampler(mel)  # [B, T, C]
        # The prediction made at t is for sample t+1: drop c[0], pad the end (the last logit is never scored).
        return ops.pad(c[:, 1:], [[0, 0], [0, 1], [0, 0]])

    def trunk(self, inputs):
        """The residual stack: (gate outputs z_l [B, T, H], layer inputs x_l [B, T, R], conditioning c')."""
        x = self.embed(inputs["audio"])  # [B, T, R]
        c = self.conditioning(inputs["mel"]) if self.upsampler is not None else None
        s = self.speaker_embed(inputs["speaker"]) if self.speaker_embed is not None else None  # [B, D]
        zs, xs = [], []
        for block in self.blocks:
            xs.append(x)
            x, z = block(x, c, s)
            zs.append(z)
        return zs, xs, c

    def call(self, inputs, training=False):
        zs, _, _ = self.trunk(inputs)
        skip = self.skip(ops.concatenate(zs, axis=-1))  # [B, T, S]
        h = self.head1(ops.relu(skip))  # [B, T, head]
        return ops.cast(self.head2(ops.relu(h)), "float32")  # [B, T, classes]

    def get_config(self):
        return {"config": self.config.to_dict(), "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(Config.from_dict(config["config"]), name=config.get("name"))


def model_inputs(config: Config, batch: int, samples: int) -> dict:
    """Zero-filled inputs of the right shapes and dtypes (used to build the model's weights)."""
    inputs = {"audio": np.zeros((batch, samples), np.int32)}
    if config.use_mel:
        inputs["mel"] = np.zeros((batch, samples // config.hop_length, config.n_mels), np.float32)
    if config.use_speaker:
        inputs["speaker"] = np.zeros((batch,), np.int32)
    return inputs


def build_model(config: Config) -> WaveNet:
    """Builds a WaveNet for ``config`` with its weights created (random init, seeded by ``config.seed``)."""
    keras.utils.set_random_seed(config.seed)
    model = WaveNet(config, name="wavenet")
    model(model_inputs(config, 1, config.frame_length * 2))
    return model


# ----------------------------------------------------------------------------------------- the single-step form
# One autoregressive step with external state (the fast generation algorithm): every layer l keeps its inputs
# from the last (k-1) * d_l steps outside the graph; a step reads the taps it needs and returns the layers'
# current inputs to be stored. Each layer's conv taps and conditioning projection are fused into one matrix, so
# a layer costs one FULLY_CONNECTED:  a_l = concat(taps_l, x_l, c) @ W_l + b_l + speaker_bias_l.
# All tensors are 2-D [rows * B, channels] (row-major over rows, then streams) and split/concatenated along axis
# 0: no reshapes in the graph, and the runtime's ring buffer rows map onto them without transposes.
# Row 0 of `state` is the current sample's embedding (layer 0's current input, written by the runtime into its
# ring buffer before gathering), so one input carries everything the residual stack reads.

def state_layout(config: Config) -> list[tuple[int, int]]:
    """(layer, delay) of every row of the step's ``state`` input, in order.

    Row 0 is (0, 0): layer 0's current input, the embedding of the previous sample. Then layer l's rows are its
    inputs from (k-1)*d, ..., 2d, d steps ago (the order of the kernel's taps).
    """
    k = config.kernel_size
    return [(0, 0)] + [(layer, (k - 1 - j) * d) for layer, d in enumerate(config.dilations) for j in range(k - 1)]


def step_weights(model: WaveNet) -> dict:
    """Fused float32 numpy weights of the single-step form (see the comment above)."""
    cfg = model.config
    layers_ = []
    for block in model.blocks:
        kernel = block.conv.kernel.numpy()  # [k, R, G]: tap j multiplies x[t - (k-1-j) d]
        parts = [kernel[j] for j in range(cfg.kernel_size)]
        if block.cond is not None:
            parts.append(block.cond.kernel.numpy())  # [C, G]
        layers_.append({"w": np.concatenate(parts, axis=0), "b": block.conv.bias.numpy(),
                        "res_w": None if block.res is None else block.res.kernel.numpy(),
                        "res_b": None if block.res is None else block.res.bias.numpy()})
    speaker_bias = None
    if model.speaker_embed is not None:
        emb = model.speaker_embed.embeddings.numpy()  # [speakers, D]
        speaker_bias = np.stack([emb @ b.speaker.kernel.numpy() for b in model.blocks], axis=1)  # [speakers, L, G]
    return {"layers": layers_, "skip_w": model.skip.kernel.numpy(), "skip_b": model.skip.bias.numpy(),
            "head1_w": model.head1.kernel.numpy(), "head1_b": model.head1.bias.numpy(),
            "head2_w": model.head2.kernel.numpy(), "head2_b": model.head2.bias.numpy(),
            "embedding": model.embed.embeddings.numpy(), "speaker_bias": speaker_bias}


def step_input_specs(config: Config, batch: int) -> dict:
    """Names and shapes of the step graph's inputs (the exported signature)."""
    import tensorflow as tf

    r, rows = config.residual_channels, len(state_layout(config))
    specs = {"state": tf.TensorSpec([rows * batch, r], tf.float32, "state")}
    if config.use_mel:
        specs["cond"] = tf.TensorSpec([batch, config.cond_channels], tf.float32, "cond")
    if config.use_speaker:
        specs["speaker_bias"] = tf.TensorSpec([config.n_layers * batch, config.gate_channels], tf.float32,
                                              "speaker_bias")
    return specs


def make_step_function(config: Config, weights: dict, batch: int):
    """A tf.function ``step(**inputs) -> {"logits": [B, classes], "new_state": [(L-1) * B, R]}`` over fixed weights.

    Inputs (see :func:`step_input_specs`): ``state`` [rows * B, R] (the rows of :func:`state_layout`: the current
    sample's embedding, then every layer's past inputs; each row holds B streams), ``cond`` [B, C] (the
    conditioning c[t+1] of the sample being predicted) and ``speaker_bias`` [L * B, G] (the speakers' per-layer
    gate biases). ``new_state`` holds the current inputs of layers 1..L-1 (layer 0's is the embedding, which the
    runtime already has).
    """
    import tensorflow as tf

    k = config.kernel_size
    const = lambda a: tf.constant(a, tf.float32)  # noqa: E731
    layer_w = [(const(lw["w"]), const(lw["b"]), None if lw["res_w"] is None else (const(lw["res_w"]), const(lw["res_b"])))
               for lw in weights["layers"]]
    skip_w, skip_b = const(weights["skip_w"]), const(weights["skip_b"])
    head = [(const(weights["head1_w"]), const(weights["head1_b"])), (const(weights["head2_w"]), const(weights["head2_b"]))]
    specs = step_input_specs(config, batch)

    def step(**inputs):
        rows = tf.split(inputs["state"], len(state_layout(config)), axis=0)  # n x [B, R]
        x, taps = rows[0], rows[1:]
        biases = tf.split(inputs["speaker_bias"], config.n_layers, axis=0) if "speaker_bias" in inputs else None
        new_state, zs = [], []
        for l, (w, b, res) in enumerate(layer_w):
            if l:
                new_state.append(x)
            parts = taps[l * (k - 1):(l + 1) * (k - 1)] + [x]
            if "cond" in inputs:
                parts.append(inputs["cond"])
            a = tf.matmul(tf.concat(parts, axis=-1), w) + b  # [B, G]
            if biases is not None:
                a = a + biases[l]
            f, g = tf.split(a, 2, axis=-1)
            z = tf.tanh(f) * tf.sigmoid(g)  # [B, H]
            zs.append(z)
            if res is not None:
                x = x + (tf.matmul(z, res[0]) + res[1])  # bias inside: it fuses into the FULLY_CONNECTED
        skip = tf.matmul(tf.concat(zs, axis=-1), skip_w) + skip_b  # [B, S]
        hidden = tf.nn.relu(tf.matmul(tf.nn.relu(skip), head[0][0]) + head[0][1])
        logits = tf.matmul(hidden, head[1][0]) + head[1][1]  # [B, classes]
        return {"logits": logits, "new_state": tf.concat(new_state, axis=0)}  # [(L-1) * B, R]

    return tf.function(step, input_signature=None).get_concrete_function(**specs)


def make_conditioner_function(model: WaveNet, batch: int, frames: int):
    """A tf.function ``conditioner(mel=[B, frames + 2P, n_mels]) -> {"cond": [B, frames * hop, C]}``.

    P = :func:`conditioning_context` frames each side; the output is c[t] of the window's centre frames. The
    weights are baked in as constants (:meth:`Upsampler.valid` with plain TF ops), so the graph holds no variables.
    """
    import tensorflow as tf

    cfg, up = model.config, model.upsampler
    convs = [(tf.constant(c.kernel.numpy()), tf.constant(c.bias.numpy())) for c in up.convs]  # [3, Cin, Cout]
    smooth = [tf.constant(k.numpy()) for k in up.kernels]
    crop = up.crop()
    spec = tf.TensorSpec([batch, frames + 2 * up.context, cfg.n_mels], tf.float32, "mel")

    def conditioner(mel):
        x = mel
        if up.normalize:
            center, inv_scale = mel_normalization(up.pad_value)
            x = (x - center) * inv_scale
        for kernel, bias in convs:
            x = tf.tanh(tf.nn.conv1d(x, kernel, stride=1, padding="VALID") + bias)  # [B, F - 2, C]
        for s, w in zip(cfg.upsample_scales, smooth):
            n, channels = x.shape[1], x.shape[2]
            x = tf.reshape(tf.tile(x[:, :, None, :], [1, 1, s, 1]), [batch, n * s, channels])  # repeat s times
            # valid (2s+1)-tap filter shared by all channels, as one DEPTHWISE_CONV_2D (XNNPACK-vectorised)
            kernel = tf.tile(tf.reshape(w, [1, 2 * s + 1, 1, 1]), [1, 1, channels, 1])  # folded to a constant
            x = tf.nn.depthwise_conv2d(x[:, None], kernel, strides=[1, 1, 1, 1], padding="VALID")[:, 0]
        return {"cond": x[:, crop:x.shape[1] - crop]}

    return tf.function(conditioner).get_concrete_function(mel=spec)


def step_loop_logits(model: WaveNet, inputs: dict) -> np.ndarray:
    """Teacher-forced logits [T, classes] of one utterance computed step by step (tests the step form).

    Keeps the whole history of every layer's input instead of a ring buffer: an independent check of the
    state bookkeeping the edge runtime does with ring buffers.
    """
    cfg = model.config
    weights = step_weights(model)
    step = make_step_function(cfg, weights, batch=1)
    audio = inputs["audio"][0]
    T = audio.shape[0]
    cond = None
    if cfg.use_mel:
        c = model.upsampler(inputs["mel"]).numpy()[0]  # [T, C]
        cond = np.concatenate([c[1:], np.zeros_like(c[:1])])  # the prediction at t uses c[t+1]
    layout = state_layout(cfg)
    history = np.zeros((T, cfg.n_layers, cfg.residual_channels), np.float32)
    out = np.zeros((T, cfg.mu_classes), np.float32)
    for t in range(T):
        history[t, 0] = weights["embedding"][audio[t]]
        rows = [history[t - d, l] if t - d >= 0 else np.zeros(cfg.residual_channels, np.float32) for l, d in layout]
        feed = {"state": np.stack(rows)}  # [rows, R] (batch 1)
        if cond is not None:
            feed["cond"] = cond[t][None]
        if cfg.use_speaker:
            feed["speaker_bias"] = weights["speaker_bias"][inputs["speaker"][0]]  # [L, G]
        result = step(**feed)
        history[t, 1:] = result["new_state"].numpy().reshape(cfg.n_layers - 1, cfg.residual_channels)
        out[t] = result["logits"].numpy()[0]
    return out
