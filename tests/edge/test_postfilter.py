"""The formant postfilter (edge_runtime/postfilter.py): the codec filter it claims to be, streamed bit for bit,
in the runtime's chain after the LPC synthesis filter, and its manifest entry checked."""

import numpy as np
import pytest

from edge_runtime import lpc
from edge_runtime.audio import Deemphasis, preemphasize
from edge_runtime.errors import ModelError
from edge_runtime.manifest import load_manifest
from edge_runtime.postfilter import FormantPostfilter
from edge_runtime.synth import Synthesizer
from tests.edge.test_lpc import HOP, coefficients, resonance
from tests.helpers import edited_model


def direct_form(x: np.ndarray, a: np.ndarray, numerator: float, denominator: float) -> np.ndarray:
    """The definition, one sample at a time: y[t] = x[t] + sum a_k n^k x[t-k] - sum a_k d^k y[t-k]."""
    y = np.zeros_like(x, dtype=np.float64)
    for t in range(x.shape[0]):
        acc = x[t]
        for k in range(1, a.shape[1] + 1):
            if t >= k:
                acc += a[t // HOP, k - 1] * (numerator ** k * x[t - k] - denominator ** k * y[t - k])
        y[t] = acc
    return y


@pytest.fixture(scope="module")
def voiced():
    """A resonance at 700 Hz (pre-emphasised, as the runtime filters it) and its LPC coefficients per frame."""
    audio = preemphasize(resonance(700.0, 0.95, n=4000, seed=5), 0.85).astype(np.float64)
    return audio, coefficients(audio.astype(np.float32), order=16, gamma=0.95, preemphasis=0.85)


def test_formant_postfilter_is_the_codec_filter_and_streams_bit_for_bit(voiced):
    x, a = voiced
    whole = FormantPostfilter(16, HOP, 1, 0.7, 0.75)
    whole.add_frames(a)
    offline = whole(x[:, None])[:, 0]
    np.testing.assert_allclose(offline, direct_form(x, a, 0.7, 0.75), rtol=1e-9, atol=1e-12)
    assert np.abs(offline - x).max() > 0.05 * np.abs(x).max()  # it does filter
    stream, cuts, fed, pieces = FormantPostfilter(16, HOP, 1, 0.7, 0.75), [0, 1, 2, 79, 80, 81, 513, 3999, 4000], 0, []
    for lo, hi in zip(cuts, cuts[1:]):
        need = -(-hi // HOP)  # frames arrive only as far as the samples need them
        stream.add_frames(a[fed:need])
        fed = need
        pieces.append(stream(x[lo:hi, None]))
    np.testing.assert_array_equal(np.concatenate(pieces)[:, 0], offline)
    stream.reset()
    with pytest.raises(IndexError, match="has not arrived"):
        stream(x[:10, None])


def test_formant_postfilter_keeps_streams_apart_and_equal_gammas_pass_the_signal(voiced):
    x, a = voiced
    two = FormantPostfilter(16, HOP, 2, 0.6, 0.8)
    two.add_frames(np.stack([a, a], axis=1))
    both = two(np.stack([x, -0.5 * x], axis=1))
    one = FormantPostfilter(16, HOP, 1, 0.6, 0.8)
    one.add_frames(a)
    np.testing.assert_array_equal(both[:, 0], one(x[:, None])[:, 0])
    np.testing.assert_allclose(both[:, 1], -0.5 * both[:, 0], rtol=1e-12, atol=1e-15)
    same = FormantPostfilter(16, HOP, 1, 0.75, 0.75)  # zeros cancel poles
    same.add_frames(a)
    np.testing.assert_allclose(same(x[:, None])[:, 0], x, atol=1e-12 * np.abs(x).max())


@pytest.mark.parametrize("numerator, denominator, lift_db", [(0.7, 0.75, 0.45), (0.5, 0.8, 2.0)])
def test_formant_postfilter_lifts_the_formant_over_the_valley(voiced, numerator, denominator, lift_db):
    """Its response, |A(e^jw / n)| / |A(e^jw / d)| on a frame of the resonance, measured from its impulse response:
    the formant (700 Hz) lifted over the valley (3 kHz), more the further apart the gammas are."""
    _, a = voiced
    frame = a[a.shape[0] // 2]
    w = np.pi * np.array([700.0, 3000.0]) / 4000.0
    k = np.arange(1, 17)

    def response(g):
        return np.abs(1 + (frame * g ** k * np.exp(-1j * np.outer(w, k))).sum(axis=1))

    gain_db = 20 * np.log10(response(numerator) / response(denominator))
    x = np.zeros(4000)
    x[0] = 1.0
    f = FormantPostfilter(16, HOP, 1, numerator, denominator)
    f.add_frames(np.repeat(frame[None], 50, axis=0))
    spectrum = np.abs(np.fft.rfft(f(x[:, None])[:, 0]))  # 2 Hz per bin
    measured = 20 * np.log10(spectrum[np.rint(w / np.pi * 2000).astype(int)])
    np.testing.assert_allclose(measured, gain_db, atol=0.05)
    assert measured[0] - measured[1] > lift_db and abs(measured[1]) < 0.1, measured


@pytest.mark.parametrize("engine", ["native", "litert"])
def test_the_runtime_runs_the_formant_postfilter_between_lpc_synthesis_and_deemphasis(built, reference, engine):
    formant = Synthesizer.load(built / "lpc_formant", engine=engine)
    assert formant.manifest.formant == (0.6, 0.8)
    assert [f["type"] for f in formant.manifest.data["postfilter"]] == ["lpc", "formant", "deemphasis"]
    mel = reference[0]["mel"]
    ours = np.concatenate(list(formant.stream(mel, speaker="bob", seed=3)))
    blocks = (mel[i:i + 3] for i in range(0, mel.shape[0], 3))
    np.testing.assert_array_equal(np.concatenate(list(formant.stream(blocks, speaker="bob", seed=3, block=41))), ours)
    # the same weights without it draw the same samples: its output, re-emphasised, is the synthesis filter's
    plain = np.concatenate(list(Synthesizer.load(built / "lpc", engine=engine).stream(mel, speaker="bob", seed=3)))
    assert np.abs(plain).max() < 1.0  # no clipping, so the pre-emphasis below recovers the filter's output
    expected = FormantPostfilter(8, formant.config["hop_length"], 1, 0.6, 0.8)
    expected.add_frames(lpc.coefficients_for(mel, formant.config))
    expected = Deemphasis(0.85)(expected(preemphasize(plain, 0.85).astype(np.float64)[:, None])[:, 0])
    np.testing.assert_allclose(ours, expected, atol=2e-5 * np.abs(plain).max())
    assert np.abs(ours - plain).max() > 0.02 * np.abs(plain).max()


@pytest.mark.parametrize("change, message", [
    (lambda d: d["postfilter"].insert(1, {"type": "formant", "numerator": 0.8, "denominator": 0.7}),
     r"numbers 0 <= numerator <= denominator < 1, got 0.8, 0.7"),
    (lambda d: d["postfilter"].insert(1, {"type": "formant", "numerator": True, "denominator": 0.7}), "got True"),
    (lambda d: d["postfilter"].insert(1, {"type": "formant", "denominator": 0.7}), "got None, 0.7"),
    (lambda d: d["postfilter"].insert(1, {"type": "formant", "numerator": 0.5, "denominator": 1.0}), "got 0.5, 1.0"),
    (lambda d: d["postfilter"].append({"type": "formant", "numerator": 0.6, "denominator": 0.8}),
     "in the order lpc, formant, deemphasis"),
])
def test_bad_formant_postfilters_are_model_errors(built, tmp_path, change, message):
    with pytest.raises(ModelError, match=message):
        load_manifest(edited_model(built / "lpc", tmp_path, change))


def test_the_formant_postfilter_needs_an_lpc_model(built, tmp_path):
    def add(d):
        d["postfilter"] = [{"type": "formant", "numerator": 0.6, "denominator": 0.8}, d["postfilter"]]

    with pytest.raises(ModelError, match="the formant postfilter needs an LPC model"):
        load_manifest(edited_model(built / "emph", tmp_path, add))
