"""The streaming form of a WaveNet: a single-step graph with external state, and a chunked conditioner graph.

One autoregressive step (the fast generation algorithm): every layer l keeps its inputs from the last (k-1)*d_l
steps outside the graph; a step reads the taps it needs and returns the layers' current inputs to be stored.
All step tensors are 2-D [rows * B, channels] (row-major over rows, then streams), split and concatenated along
axis 0: no reshapes in the graph, and the runtime's ring-buffer rows map onto them without transposes. Row 0 of
``state`` is the current sample's embedding (layer 0's current input, which the runtime writes into its ring
buffer before gathering), so one input carries everything the residual stack reads.

Step form 2 (manifest ``format_version`` 2). The conditioning projection c' V_l of every layer (80 -> 128 per
layer in ``s``: about 23 % of a step's multiply-adds) commutes with the linear part of the upsampler (repeat,
then a filter shared by all channels), so the conditioner graph projects at frame rate, for all layers at once,
and upsamples the projections; the runtime adds the speaker's gate biases s U_l once per chunk. A layer's step
is then one FULLY_CONNECTED and one ADD before the gate::

    a_l = concat(taps_l, x_l) @ W_l + b_l + cond_l      cond_l = (upsample(h V_l))[t+1] + s U_l   [B, G]

Form 1 (``format_version`` 1, the shipped voices) fed c' [B, C] and the speaker biases as separate inputs and
multiplied c' by V_l in every step; ``edge_runtime`` still runs it, nothing writes it any more.
"""

from __future__ import annotations

import numpy as np

from training import quant
from training.config import Config
from training.model import WaveNet, conditioning_context, gated_unit, output_head
from training.quant import constant_quantizer, export_ranges, snap_numpy

STEP_FORM = 2  # the manifest format version of what this module builds


def state_layout(config: Config) -> list[tuple[int, int]]:
    """(layer, delay) of every row of the step's ``state`` input, in order.

    Row 0 is (0, 0): layer 0's current input, the embedding of the previous sample. Then layer l's rows are its
    inputs from (k-1)*d, ..., 2d, d steps ago (the order of the kernel's taps).
    """
    k = config.kernel_size
    return [(0, 0)] + [(layer, (k - 1 - j) * d) for layer, d in enumerate(config.dilations) for j in range(k - 1)]


def state_gains(config: Config, ranges: dict | None) -> np.ndarray | None:
    """Per-layer gains g_l [L] of the int8 state rows of a QAT model with ``qat_state_scales`` "per_layer".

    Layer l's rows (its past inputs; for l >= 1 layer l-1's output, "state" site l-1; for l = 0 the embedding,
    site L-1) are stored as g_l x, g_l = M / m_l for the symmetric range [-m_l, m_l * 127/128] of each, M the
    largest: one int8 grid for the whole tensor, the same integer codes as each layer's own grid (see
    training/quant.py). None for any other model.
    """
    if ranges is None or config.qat_state_scales != "per_layer":
        return None
    m = -ranges["state"][np.arange(config.n_layers) - 1, 0].astype(np.float64)  # layer l's input: site l - 1
    return np.where(m > 0, m.max() / np.where(m > 0, m, 1.0), 1.0).astype(np.float32)


def graph_state_gains(weights: dict, scaled: bool) -> np.ndarray | None:
    """The per-layer gains a step graph built with ``scaled`` rows applies (only the int8 graph of a per-layer QAT
    model has any): the one rule for the graph, its embedding table and the manifest."""
    return weights.get("state_gains") if scaled else None


def state_embedding(weights: dict, fake_quant: bool = False, name: str = "embedding") -> np.ndarray:
    """An input embedding table [classes, R] as the step graph's ``state`` rows hold it (the manifest's table):
    scaled by layer 0's gain in the int8 graph of a per-layer QAT model, else the model's own. ``name``: the
    sample embedding, or an lpc_inputs model's ``signal_embedding`` or ``prediction_embedding`` (row 0 holds
    the sum of the three)."""
    gains = graph_state_gains(weights, fake_quant)
    return weights[name] if gains is None else weights[name] * gains[0]


def step_weights(model: WaveNet) -> dict:
    """Float32 numpy weights of the streaming form.

    ``layers[l]["w"]`` [k * R, G] stacks the conv taps (tap j multiplies x[t - (k-1-j) d]); ``cond_w``
    [C, L * G] holds every layer's conditioning projection side by side (for the conditioner graph);
    ``speaker_bias`` [speakers, L, G] is each speaker's per-layer gate bias s U_l. A QAT model's
    FULLY_CONNECTED weights come snapped to their int8 grid (what it was trained with, and what the converter's
    per-channel quantization reproduces exactly), ``ranges`` holds its fake quantization ranges (else None) and
    ``state_gains`` the per-layer gains of its int8 state rows (:func:`state_gains`).
    """
    cfg = model.config
    snap = snap_numpy if cfg.qat else (lambda w: w)
    layers_ = []
    for block in model.blocks:
        kernel = snap(block.conv.kernel.numpy())  # [k, R, G]
        layers_.append({"w": np.concatenate(list(kernel), axis=0), "b": block.conv.bias.numpy(),
                        "res_w": None if block.res is None else snap(block.res.kernel.numpy()),
                        "res_b": None if block.res is None else block.res.bias.numpy()})
    cond_w = (np.concatenate([b.cond.kernel.numpy() for b in model.blocks], axis=1)
              if model.blocks[0].cond is not None else None)
    speaker_bias = None
    if model.speaker_embed is not None:
        emb = model.speaker_embed.embeddings.numpy()  # [speakers, D]
        speaker_bias = np.stack([emb @ b.speaker.kernel.numpy() for b in model.blocks], axis=1)  # [speakers, L, G]
    ranges = None if model.trackers is None else export_ranges(model.trackers)
    return {"layers": layers_, "cond_w": cond_w, "speaker_bias": speaker_bias,
            "skip_w": snap(model.skip.kernel.numpy()), "skip_b": model.skip.bias.numpy(),
            "head1_w": snap(model.head1.kernel.numpy()), "head1_b": model.head1.bias.numpy(),
            "head2_w": snap(model.head2.kernel.numpy()), "head2_b": model.head2.bias.numpy(),
            "embedding": model.embed.embeddings.numpy(),
            **{t.name: t.embeddings.numpy() for t in model.embed_lpc},  # signal_embedding, prediction_embedding
            "ranges": ranges, "state_gains": state_gains(cfg, ranges)}


def gate_inputs(config: Config, weights: dict, cond: np.ndarray | None, speaker: int) -> np.ndarray | None:
    """The step's ``cond`` rows of one stream from the per-sample conditioning c' [T, C]: [T, L, G].

    For models without mel conditioning (``cond`` None) the speaker's biases [L, G] (constant in time); None
    when the model has neither.
    """
    L, G = config.n_layers, config.gate_channels
    bias = None if weights["speaker_bias"] is None else weights["speaker_bias"][speaker]  # [L, G]
    if cond is None:
        return bias
    gates = (cond @ weights["cond_w"]).reshape(-1, L, G)
    return gates if bias is None else gates + bias


def step_input_specs(config: Config, batch: int) -> dict:
    """Names and shapes of the step graph's inputs (the exported signature)."""
    import tensorflow as tf

    r, rows = config.residual_channels, len(state_layout(config))
    specs = {"state": tf.TensorSpec([rows * batch, r], tf.float32, "state")}
    if config.use_mel or config.use_speaker:
        specs["cond"] = tf.TensorSpec([config.n_layers * batch, config.gate_channels], tf.float32, "cond")
    return specs


def _concat(parts: list, axis: int):
    """``tf.concat`` as a tree of at most 5 inputs per op: XNNPACK takes concatenations of 2 to 5 inputs
    (LiteRT 2.3, probed); one 20-input op runs in LiteRT's reference kernel and cuts the delegated graph in two."""
    import tensorflow as tf

    while len(parts) > 5:
        parts = [tf.concat(parts[i:i + 5], axis=axis) if len(parts[i:i + 5]) > 1 else parts[i]
                 for i in range(0, len(parts), 5)]
    return tf.concat(parts, axis=axis)


class StateRows:
    """How the step graph reads and writes its ``state`` rows: as they are, or scaled by per-layer gains.

    With gains (the int8 graph of a per-layer QAT model, :func:`state_gains`) layer l's rows hold g_l x on the
    one grid of the ``state`` tensor, [-M, M * 127/128]; reading multiplies by 1/g_l onto layer l's own grid, and
    writing multiplies layer l's input by g_l onto the shared one. In the int8 graph each is a MUL whose output
    has the same integer codes as its input (an exact requantization).
    """

    def __init__(self, q: list, ranges: dict | None, gains: np.ndarray | None):
        self.q, self.gains, self.grid = q, gains, None
        if gains is not None and ranges is not None:
            top = float(-ranges["state"][:, 0].min())  # M: the widest layer's range is the tensor's
            self.grid = (-top, top * 127.0 / 128.0)

    def shared(self, v):
        """The ``state`` input at its one range."""
        return self.q[0]("state", v) if self.grid is None else quant.fake_quant(v, *self.grid)

    def read(self, layer: int, v):
        """Layer ``layer``'s row as that layer uses it (its input grid is "state" site layer - 1)."""
        return v if self.gains is None else self.q[layer - 1]("state", v * float(1.0 / self.gains[layer]))

    def write(self, layer: int, v):
        """Layer ``layer``'s current input as a ``new_state`` row."""
        if self.gains is None:
            return v
        scaled = v * float(self.gains[layer])
        return scaled if self.grid is None else quant.fake_quant(scaled, *self.grid)


def make_step_function(config: Config, weights: dict, batch: int, fake_quant: bool = False,
                       scaled_state: bool | None = None):
    """A tf.function ``step(**inputs) -> {"logits": [B, classes], "new_state": [(L-1) * B, R]}`` over fixed weights.

    Inputs (see :func:`step_input_specs`): ``state`` [rows * B, R] (the rows of :func:`state_layout`; each row
    holds B streams) and ``cond`` [L * B, G] (layer l's gate input for the sample being predicted, rows
    l * B + b). ``new_state`` holds the current inputs of layers 1..L-1 (layer 0's is the embedding, which the
    runtime already has). ``fake_quant`` (for the int8 conversion of a QAT model): the model's fake quantization
    at its learned ranges, which the converter takes as the int8 scales; with ``weights["state_gains"]`` the
    state rows are scaled per layer (:class:`StateRows`, the embedding table: :func:`state_embedding`).
    ``scaled_state`` (default: ``fake_quant``): the scaled rows without the fake quantization, the same graph
    for TensorFlow Lite's quantization debugger (``tools/quant_debug.py``).
    """
    import tensorflow as tf

    k, n_layers = config.kernel_size, config.n_layers
    const = lambda a: tf.constant(a, tf.float32)  # noqa: E731
    layer_w = [(const(lw["w"]), const(lw["b"]), None if lw["res_w"] is None else (const(lw["res_w"]), const(lw["res_b"])))
               for lw in weights["layers"]]
    skip_w, skip_b = const(weights["skip_w"]), const(weights["skip_b"])
    head = [(const(weights["head1_w"]), const(weights["head1_b"])), (const(weights["head2_w"]), const(weights["head2_b"]))]
    rows = len(state_layout(config))
    ranges = weights.get("ranges") if fake_quant else None
    if fake_quant and ranges is None:
        raise ValueError("fake quantization needs a QAT model's ranges")
    q = [constant_quantizer(ranges, site) for site in range(n_layers)]
    rows_in = StateRows(q, ranges, graph_state_gains(weights, fake_quant if scaled_state is None else scaled_state))
    dense = lambda w, b: lambda v: tf.matmul(v, w) + b  # noqa: E731 (the bias fuses into the FULLY_CONNECTED)

    def step(**inputs):
        # The inputs at the ranges every layer shares (within the layers the same rounding again, a no-op).
        x, *taps = tf.split(rows_in.shared(inputs["state"]), rows, axis=0)  # rows x [B, R]
        x = rows_in.read(0, x)
        gates = (tf.split(q[0]("cond", inputs["cond"]), n_layers, axis=0) if "cond" in inputs
                 else [None] * n_layers)  # [B, G]: conditioning and speaker, one ADD
        new_state, zs = [], []
        for l, (w, b, res) in enumerate(layer_w):
            if l:
                new_state.append(rows_in.write(l, x))
            layer_taps = [rows_in.read(l, t) for t in taps[l * (k - 1):(l + 1) * (k - 1)]]
            pre = tf.matmul(tf.concat(layer_taps + [x], axis=-1), w) + b
            x, z = gated_unit(pre, gates[l], x, None if res is None else dense(*res), q[l])  # [B, R], [B, H]
            zs.append(z)
        logits = output_head(_concat(zs, -1), dense(skip_w, skip_b), dense(*head[0]), dense(*head[1]), q[0])
        return {"logits": logits, "new_state": _concat(new_state, 0)}  # [B, classes], [(L-1) * B, R]

    return tf.function(step).get_concrete_function(**step_input_specs(config, batch))


def upsampling_matrix(model: WaveNet, frames: int) -> np.ndarray:
    """The upsampler's linear part as a matrix A [samples, frames]: ``upsample(x)[t] = sum_f A[t, f] x[f]``.

    Computed by the model's own :meth:`Upsampler.upsample` on the identity (channel f = an impulse at frame f):
    the same code, so the same numbers up to float rounding.
    """
    return np.asarray(model.upsampler.upsample(np.eye(frames, dtype=np.float32)[None]))[0]


def conditioner_input_specs(config: Config, batch: int, frames: int) -> dict:
    """Names and shapes of the conditioner graph's inputs (the exported signature)."""
    import tensorflow as tf

    width = frames + 2 * conditioning_context(config)
    specs = {"mel": tf.TensorSpec([batch, width, config.frame_width], tf.float32, "mel")}
    if config.use_speaker:
        width = config.n_layers * config.gate_channels
        specs["speaker_bias"] = tf.TensorSpec([batch, width], tf.float32, "speaker_bias")
    return specs


def make_conditioner_function(model: WaveNet, weights: dict, batch: int, frames: int):
    """A tf.function ``conditioner(mel, [speaker_bias]) -> {"cond": [B, frames * hop, L * G]}``.

    ``mel`` [B, frames + 2P, width] (conditioning frames, edge_runtime/features.py; P =
    :func:`conditioning_context` frames each side), ``speaker_bias`` [B, L * G] (the streams' speakers' gate
    biases, for multi-speaker models). Output channel l * G + g of sample
    t is layer l's gate input (c[t] V_l + s U_l)[g], for the window's centre frames: the frame-rate part of the
    model's own upsampler, every layer's projection at frame rate (8 frames per chunk instead of 640 samples),
    then the upsampler's linear part as one matrix product. The speaker's biases ride along as one more
    "frame" with weight 1 in every sample, so they cost nothing per sample either.
    """
    import tensorflow as tf

    cfg, up = model.config, model.upsampler
    proj = tf.constant(weights["cond_w"], tf.float32)  # [C, L * G]
    kept = frames + 2 * (conditioning_context(cfg) - cfg.cond_layers)  # frames after the frame convolutions
    upsample = upsampling_matrix(model, kept)  # [frames * hop, kept]
    if cfg.use_speaker:
        upsample = np.concatenate([upsample, np.ones_like(upsample[:, :1])], axis=1)
    upsample = tf.constant(np.broadcast_to(upsample, (batch, *upsample.shape)))  # [B, frames * hop, kept (+1)]
    specs = conditioner_input_specs(cfg, batch, frames)

    def conditioner(**inputs):
        h = up.frames(inputs["mel"])  # [B, kept, C]
        projected = tf.reshape(tf.matmul(tf.reshape(h, [batch * kept, -1]), proj), [batch, kept, proj.shape[1]])
        if "speaker_bias" in inputs:
            projected = tf.concat([projected, inputs["speaker_bias"][:, None]], axis=1)  # [B, kept + 1, L * G]
        return {"cond": tf.matmul(upsample, projected)}  # [B, frames * hop, L * G]

    # The frame convolutions' weights are variables: frozen into constants, so the graph holds none (the converter
    # would keep them as resource variables, uninitialised in the runtime). Freezing drops the output's name.
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    frozen = convert_variables_to_constants_v2(tf.function(conditioner).get_concrete_function(**specs))
    return tf.function(lambda **inputs: {"cond": frozen(**inputs)[0]}).get_concrete_function(**specs)
