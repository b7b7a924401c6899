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


def step_weights(model: WaveNet) -> dict:
    """Float32 numpy weights of the streaming form.

    ``layers[l]["w"]`` [k * R, G] stacks the conv taps (tap j multiplies x[t - (k-1-j) d]); ``cond_w``
    [C, L * G] holds every layer's conditioning projection side by side (for the conditioner graph);
    ``speaker_bias`` [speakers, L, G] is each speaker's per-layer gate bias s U_l. A QAT model's
    FULLY_CONNECTED weights come snapped to their int8 grid (what it was trained with, and what the converter's
    per-channel quantization reproduces exactly), and ``ranges`` holds its fake quantization ranges (else None).
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
    return {"layers": layers_, "cond_w": cond_w, "speaker_bias": speaker_bias,
            "skip_w": snap(model.skip.kernel.numpy()), "skip_b": model.skip.bias.numpy(),
            "head1_w": snap(model.head1.kernel.numpy()), "head1_b": model.head1.bias.numpy(),
            "head2_w": snap(model.head2.kernel.numpy()), "head2_b": model.head2.bias.numpy(),
            "embedding": model.embed.embeddings.numpy(),
            "ranges": None if model.trackers is None else export_ranges(model.trackers)}


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


def make_step_function(config: Config, weights: dict, batch: int, fake_quant: bool = False):
    """A tf.function ``step(**inputs) -> {"logits": [B, classes], "new_state": [(L-1) * B, R]}`` over fixed weights.

    Inputs (see :func:`step_input_specs`): ``state`` [rows * B, R] (the rows of :func:`state_layout`; each row
    holds B streams) and ``cond`` [L * B, G] (layer l's gate input for the sample being predicted, rows
    l * B + b). ``new_state`` holds the current inputs of layers 1..L-1 (layer 0's is the embedding, which the
    runtime already has). ``fake_quant`` (for the int8 conversion of a QAT model): the model's fake quantization
    at its learned ranges, which the converter takes as the int8 scales.
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
    dense = lambda w, b: lambda v: tf.matmul(v, w) + b  # noqa: E731 (the bias fuses into the FULLY_CONNECTED)

    def step(**inputs):
        # The inputs at the ranges every layer shares (within the layers the same rounding again, a no-op).
        x, *taps = tf.split(q[0]("state", inputs["state"]), rows, axis=0)  # rows x [B, R]
        gates = (tf.split(q[0]("cond", inputs["cond"]), n_layers, axis=0) if "cond" in inputs
                 else [None] * n_layers)  # [B, G]: conditioning and speaker, one ADD
        new_state, zs = [], []
        for l, (w, b, res) in enumerate(layer_w):
            if l:
                new_state.append(x)
            pre = tf.matmul(tf.concat(taps[l * (k - 1):(l + 1) * (k - 1)] + [x], axis=-1), w) + b
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

    specs = {"mel": tf.TensorSpec([batch, frames + 2 * conditioning_context(config), config.n_mels], tf.float32, "mel")}
    if config.use_speaker:
        width = config.n_layers * config.gate_channels
        specs["speaker_bias"] = tf.TensorSpec([batch, width], tf.float32, "speaker_bias")
    return specs


def make_conditioner_function(model: WaveNet, weights: dict, batch: int, frames: int):
    """A tf.function ``conditioner(mel, [speaker_bias]) -> {"cond": [B, frames * hop, L * G]}``.

    ``mel`` [B, frames + 2P, n_mels] (P = :func:`conditioning_context` frames each side), ``speaker_bias``
    [B, L * G] (the streams' speakers' gate biases, for multi-speaker models). Output channel l * G + g of sample
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
