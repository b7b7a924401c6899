"""Growing a model (training/grow.py): the larger model computes exactly the smaller one's logits, whatever grows."""

import numpy as np
import pytest

from tests.training.test_model import random_inputs
from training.config import Config
from training.grow import grow_arrays
from training.model import build_model

GROWN = dict(stacks=2, residual_channels=24, gate_channels=40, skip_channels=40, head_channels=48, cond_channels=20)


def weights(model) -> dict:
    return {v.path: v.numpy() for v in model.weights}


def randomized(model, seed: int):
    """The model with every weight random (no zero bias or box filter left to hide a misplaced copy)."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        v.assign(0.3 * rng.standard_normal(v.shape).astype(np.float32))
    return model


@pytest.mark.parametrize("variant", [
    dict(),
    dict(lpc_order=4, preemphasis=0.85, lpc_inputs=True, pitch_features=True),
    dict(cond_layers=0, cond_channels=16, pitch_features=True),
    dict(cond_layers=2),
])
def test_a_grown_model_computes_the_same_logits(variant):
    old_cfg = Config.preset("tiny", speakers=("alice", "bob"), seed=3, **variant)
    old = randomized(build_model(old_cfg), 1)
    grow = dict(GROWN, cond_channels=old_cfg.cond_channels if old_cfg.cond_layers == 0 else 20)
    new_cfg = old_cfg.replace(**grow, seed=5)
    old_arrays = weights(old)
    if variant.get("pitch_features"):  # grown from a model without the features: the frame reads fewer values
        old_cfg = old_cfg.replace(pitch_features=False)
        old = build_model(old_cfg)
        for v in old.weights:
            w = old_arrays[v.path]
            v.assign(w if tuple(v.shape) == w.shape else w[..., :old_cfg.n_mels, :])
        old_arrays = weights(old)
    new = build_model(new_cfg)
    grown = grow_arrays(old_arrays, old_cfg, new_cfg, weights(new))
    for v in new.weights:
        v.assign(grown[v.path])
    inputs = random_inputs(new_cfg, 2, 512, seed=2)
    old_inputs = dict(inputs, **({"mel": inputs["mel"][..., :old_cfg.frame_width]} if "mel" in inputs else {}))
    if new_cfg.pitch_features:
        inputs["mel"][..., old_cfg.frame_width:] = 9.0  # whatever the new values read, nothing changes yet
    expected, got = old(old_inputs).numpy(), new(inputs).numpy()
    assert np.abs(got - expected).max() < 1e-4 * max(1.0, np.abs(expected).max())
    changed = {p for p in grown if p not in old_arrays or grown[p].shape != old_arrays[p].shape}
    assert len(changed) > 10 and any(p.startswith("wavenet/layer_7/") for p in changed)
    skip = grown["wavenet/skip/kernel"]  # [layers * H, S]: the old layers' rows and nothing else read
    h_old, h_new = old_cfg.gate_channels // 2, new_cfg.gate_channels // 2
    assert not skip[old_cfg.n_layers * h_new:].any() and not skip[h_old:h_new].any()
    assert np.array_equal(skip[h_new:h_new + h_old, :old_cfg.skip_channels],
                          old_arrays["wavenet/skip/kernel"][h_old:2 * h_old])
