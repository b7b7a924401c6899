"""Pre-emphasis (the model learns x[t] - a x[t-1]) and the runtime's de-emphasis; the manifest's output settings."""

import json

import numpy as np
import pytest

from edge_runtime.audio import Deemphasis, mu_law_decode, mu_law_encode, preemphasize
from edge_runtime.errors import ModelError
from edge_runtime.evaluate import evaluate_folder
from edge_runtime.manifest import load_manifest
from edge_runtime.synth import Synthesizer
from tests.helpers import edited_model


@pytest.fixture()
def speechlike():
    rng = np.random.default_rng(0)
    t = np.arange(4000) / 8000
    return (0.3 * np.sin(2 * np.pi * 140 * t) * np.sin(2 * np.pi * 3 * t) + 0.02 * rng.standard_normal(t.size)
            ).astype(np.float32)


def test_deemphasis_inverts_preemphasis(speechlike):
    emphasised = preemphasize(speechlike, 0.85)
    assert np.abs(emphasised - speechlike).max() > 0.05  # the filter does something
    np.testing.assert_allclose(Deemphasis(0.85)(emphasised), speechlike, atol=1e-6)
    np.testing.assert_array_equal(preemphasize(speechlike, 0.0), speechlike)


def test_deemphasis_streams_bit_for_bit(speechlike):
    e = mu_law_decode(mu_law_encode(preemphasize(speechlike, 0.85)))
    whole = Deemphasis(0.85)(e)
    filt, cuts = Deemphasis(0.85), [0, 1, 2, 513, 1000, 3999, 4000]
    pieces = [filt(e[a:b]) for a, b in zip(cuts, cuts[1:])]
    np.testing.assert_array_equal(np.concatenate(pieces), whole)
    filt.reset()  # a new utterance starts from silence again
    np.testing.assert_array_equal(filt(e), whole)


def test_deemphasis_keeps_streams_apart(speechlike):
    pair = np.stack([speechlike, -0.5 * speechlike], axis=1)  # [n, 2]
    both = Deemphasis(0.85, streams=2)(pair)
    np.testing.assert_array_equal(both[:, 0], Deemphasis(0.85)(speechlike))
    np.testing.assert_array_equal(both[:, 1], Deemphasis(0.85)(-0.5 * speechlike))


def test_emphasised_model_streams_and_scores_like_training(built, reference):
    synth = Synthesizer.load(built / "emph")
    assert synth.manifest.deemphasis == 0.85 and synth.temperature == 0.7
    mel = reference[0]["mel"]
    offline = np.concatenate(list(synth.stream(mel, speaker="bob", seed=3)))
    blocks = (mel[i:i + 3] for i in range(0, mel.shape[0], 3))
    np.testing.assert_array_equal(np.concatenate(list(synth.stream(blocks, speaker="bob", seed=3, block=41))),
                                  offline)
    # the manifest's temperature is the default; another one changes the audio
    np.testing.assert_array_equal(np.concatenate(list(synth.stream(mel, speaker="bob", seed=3, temperature=0.7))),
                                  offline)
    assert not np.array_equal(np.concatenate(list(synth.stream(mel, speaker="bob", seed=3, temperature=0.5))),
                              offline)
    # the edge evaluation pre-emphasises the recordings exactly as training did
    tf_nll = json.loads((built / "emph_tf_eval.json").read_text())
    result = evaluate_folder(synth, built / "val")
    assert result["samples"] == tf_nll["samples"]
    assert abs(result["nll_bits_per_sample"] - tf_nll["nll_bits_per_sample"]) < 1e-3


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(postfilter={"type": "comb", "coefficient": 0.85}), "unknown postfilter 'comb'"),
    (lambda d: d.update(postfilter={"type": "deemphasis", "coefficient": 1.5}), r"must be a number in \[0, 1\)"),
    (lambda d: d.update(postfilter=None), "does not match the model's pre-emphasis"),
    (lambda d: d.update(sampling={"temperature": "hot"}), "sampling temperature"),
    (lambda d: d.update(sampling={"temperature": -1}), "sampling temperature"),
])
def test_bad_output_settings_are_model_errors(built, tmp_path, change, message):
    with pytest.raises(ModelError, match=message):
        load_manifest(edited_model(built / "emph", tmp_path, change))


def test_models_without_output_settings_keep_loading(built):
    manifest = load_manifest(built / "models/dynamic")
    assert manifest.deemphasis == 0.0 and manifest.temperature is None
    assert Synthesizer.load(built / "models/dynamic").temperature == 0.5
