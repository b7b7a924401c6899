"""The Keras WaveNet: causality, receptive field (formula and measured), serialisation."""

import numpy as np
import pytest

from training.config import receptive_field
from training.model import ResidualLayer, WaveNet, build_model


def random_inputs(config, batch, samples, seed=0):
    rng = np.random.default_rng(seed)
    inputs = {"audio": rng.integers(0, 256, (batch, samples)).astype(np.int32)}
    if config.use_mel:
        frames = samples // config.hop_length
        inputs["mel"] = rng.standard_normal((batch, frames, config.frame_width)).astype(np.float32)
    if config.use_speaker:
        inputs["speaker"] = np.arange(batch, dtype=np.int32) % len(config.speakers)
    if config.lpc_inputs:
        inputs["lpc"] = rng.integers(0, 256, (batch, samples, config.lpc_columns)).astype(np.int32)
    return inputs


def test_output_shape_and_dtype(tiny_config):
    model = build_model(tiny_config)
    logits = model(random_inputs(tiny_config, 2, 256))
    assert tuple(logits.shape) == (2, 256, 256) and logits.dtype == "float32"


@pytest.mark.parametrize("kernel_size", [2, 3])
def test_causal_with_all_conditioning(tiny_config, kernel_size):
    config = tiny_config.replace(kernel_size=kernel_size)
    model = build_model(config)
    inputs = random_inputs(config, 2, 320)
    base = model(inputs).numpy()
    for t in [0, 37, 160, 318]:
        changed = {k: v.copy() for k, v in inputs.items()}
        changed["audio"][:, t + 1:] = (changed["audio"][:, t + 1:] + 97) % 256
        out = model(changed).numpy()
        np.testing.assert_array_equal(out[:, :t + 1], base[:, :t + 1])  # bit-identical up to t
        if t + 1 < 320:
            assert np.abs(out[:, t + 1:] - base[:, t + 1:]).max() > 1e-3  # and the change is seen later


@pytest.mark.parametrize("kernel_size", [2, 3])
def test_receptive_field_formula_and_impulse_response(tiny_config, kernel_size):
    config = tiny_config.replace(kernel_size=kernel_size)
    rf = receptive_field(config)
    assert rf == (kernel_size - 1) * sum(config.dilations) + 1
    model = build_model(config)
    inputs = random_inputs(config, 1, 256, seed=3)
    base = model(inputs).numpy()[0]
    p = 100
    changed = {k: v.copy() for k, v in inputs.items()}
    changed["audio"][0, p] = (changed["audio"][0, p] + 128) % 256
    diff = np.abs(model(changed).numpy()[0] - base).max(axis=-1)
    affected = np.nonzero(diff > 0)[0]
    # A sample at p reaches exactly the outputs p .. p + rf - 1.
    assert affected.min() == p and affected.max() == p + rf - 1


def test_conditioning_and_speaker_change_the_output(tiny_config):
    model = build_model(tiny_config)
    inputs = random_inputs(tiny_config, 2, 256)
    base = model(inputs).numpy()
    other = dict(inputs, speaker=inputs["speaker"][::-1].copy())
    assert np.abs(model(other).numpy() - base).max() > 1e-4
    zero_mel = dict(inputs, mel=np.zeros_like(inputs["mel"]))
    assert np.abs(model(zero_mel).numpy() - base).max() > 1e-4


def test_unconditioned_model(tiny_config):
    config = tiny_config.replace(n_mels=0, speaker_dim=0, speakers=())
    model = build_model(config)
    assert set(w.path.split("/")[1] for w in model.weights).isdisjoint({"upsampler", "speaker_embedding"})
    assert tuple(model({"audio": np.zeros((1, 50), np.int32)}).shape) == (1, 50, 256)


def test_get_config_round_trip(tiny_config):
    model = build_model(tiny_config)
    clone = WaveNet.from_config(model.get_config())
    inputs = random_inputs(tiny_config, 1, 64)
    clone(inputs)
    assert [w.path for w in clone.weights] == [w.path for w in model.weights]
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(clone(inputs).numpy(), model(inputs).numpy())
    layer = model.blocks[1]
    again = ResidualLayer.from_config(layer.get_config())
    assert again.get_config() == layer.get_config() and layer.dilation == 2
    assert model.blocks[-1].res is None  # the last layer's residual output would feed nothing


def test_seeded_initialisation_is_reproducible(tiny_config):
    a, b = build_model(tiny_config), build_model(tiny_config)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


def step_loop_logits(model, inputs: dict, fake_quant: bool = False) -> np.ndarray:
    """Teacher-forced logits [T, classes] of one utterance through the streaming form's TF functions.

    The conditioner function runs once over the whole utterance (padded with its context, as the runtime's
    first and last chunks are); the step function runs per sample on the whole history of every layer's input
    instead of a ring buffer: an independent check of the bookkeeping the edge runtime does with ring buffers.
    ``fake_quant``: the step graph of a QAT model's int8 export (its fake quantization in the graph).
    """
    from training.model import conditioning_context
    from training.step import (gate_inputs, make_conditioner_function, make_step_function, state_embedding,
                               state_layout, step_weights)

    cfg = model.config
    weights = step_weights(model)
    step = make_step_function(cfg, weights, batch=1, fake_quant=fake_quant)
    audio = inputs["audio"][0]
    T = audio.shape[0]
    speaker = int(inputs["speaker"][0]) if cfg.use_speaker else 0
    gates = gate_inputs(cfg, weights, None, speaker)  # [L, G] speaker biases (or None)
    if cfg.use_mel:
        mel, p = inputs["mel"], conditioning_context(cfg)
        feed = {"mel": np.pad(mel, [(0, 0), (p, p), (0, 0)], constant_values=np.log(cfg.log_floor))}
        if gates is not None:
            feed["speaker_bias"] = gates.reshape(1, -1)  # the conditioner adds them
        cond = make_conditioner_function(model, weights, 1, mel.shape[1])(**feed)["cond"].numpy()[0]
        # the prediction at t uses c[t+1]; the model pads c' with zeros at the end (that logit is never scored)
        last = np.zeros_like(cond[:1]) if gates is None else gates.reshape(1, -1)
        gates = np.concatenate([cond[1:], last]).reshape(T, cfg.n_layers, cfg.gate_channels)
    layout = state_layout(cfg)
    embedding = state_embedding(weights, fake_quant)  # scaled like the rows of a per-layer int8 state
    history = np.zeros((T, cfg.n_layers, cfg.residual_channels), np.float32)
    out = np.zeros((T, cfg.mu_classes), np.float32)
    extra = [state_embedding(weights, fake_quant, name)
             for name in ("signal_embedding", "prediction_embedding", "period_embedding")[:cfg.lpc_columns]
             if cfg.lpc_inputs]
    for t in range(T):
        history[t, 0] = embedding[audio[t]]  # an lpc_inputs model's row adds its s and p (and period) embeddings
        for i, table in enumerate(extra):
            history[t, 0] += table[inputs["lpc"][0, t, i]]
        rows = [history[t - d, l] if t - d >= 0 else np.zeros(cfg.residual_channels, np.float32) for l, d in layout]
        feed = {"state": np.stack(rows)}  # [rows, R] (batch 1)
        if gates is not None:
            feed["cond"] = (gates[t] if cfg.use_mel else gates).astype(np.float32)  # [L, G]
        result = step(**feed)
        history[t, 1:] = result["new_state"].numpy().reshape(cfg.n_layers - 1, cfg.residual_channels)
        out[t] = result["logits"].numpy()[0]
    return out


@pytest.mark.parametrize("kernel_size, mel, speaker, cond_layers, lpc_inputs", [
    (2, True, True, 1, False), (3, True, True, 1, False), (2, False, True, 1, False), (2, True, False, 1, False),
    (2, False, False, 1, False),
    (2, True, True, 3, False),  # a deeper frame-rate conditioner: three frames of context on each side, not one
    (2, True, True, 1, True),  # LPCNet's inputs: three embeddings summed into layer 0's row
    (2, True, True, 1, "pitch"),  # frames of log-mel bands and pitch features
    (2, True, True, 1, "period"),  # and the excitation one period back: four embeddings in layer 0's row
])
def test_step_loop_matches_full_model(tiny_config, kernel_size, mel, speaker, cond_layers, lpc_inputs):
    rows = lpc_inputs in (True, "period")
    changes = {"kernel_size": kernel_size, "cond_layers": cond_layers, "lpc_order": 8 * rows, "lpc_inputs": rows,
               "pitch_features": lpc_inputs in ("pitch", "period"), "period_input": lpc_inputs == "period"}
    changes.update({} if mel else {"n_mels": 0})
    changes.update({} if speaker else {"speaker_dim": 0, "speakers": ()})
    config = tiny_config.replace(**changes)
    model = build_model(config)
    samples = (2 * receptive_field(config) // config.hop_length + 2) * config.hop_length  # > two receptive fields
    inputs = random_inputs(config, 1, samples, seed=5)
    full = model(inputs).numpy()[0]
    stepped = step_loop_logits(model, inputs)
    assert np.abs(full - stepped).max() <= 1e-4
    assert np.abs(full).max() > (0.1 if mel else 0.01)  # a real signal, not all-zero logits (mel: larger)


@pytest.mark.parametrize("normalize, saturated", [(True, (0.0, 0.1)), (False, (0.5, 1.0))])
def test_frame_convolution_is_not_saturated_by_raw_log_mel(tiny_config, normalize, saturated):
    """Log-mel values span [ln(1e-5), 0] = [-11.5, 0]: fed raw, a fresh frame convolution's tanh saturates."""
    import tensorflow as tf

    config = tiny_config.replace(normalize_mel=normalize, n_mels=80, cond_channels=80)
    model = build_model(config)
    up = model.upsampler
    mel = np.random.default_rng(0).uniform(np.log(config.log_floor), 0.0, (1, 50, 80)).astype(np.float32)
    x = (mel - up.pad_value / 2) * (-2 / up.pad_value) if normalize else mel
    conv = up.convs[0]
    pre = tf.nn.conv1d(x, conv.kernel, 1, "VALID") + conv.bias  # before the tanh
    fraction = float(np.mean(np.abs(pre.numpy()) > 2))
    assert saturated[0] <= fraction <= saturated[1]
