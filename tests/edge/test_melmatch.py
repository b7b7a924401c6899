"""The mel-matching postfilter (edge_runtime/melmatch.py): exact reconstruction when the bands already match,
the band levels it moves and how far, streamed bit for bit, last in the runtime's chain, and its manifest entry
checked."""

import numpy as np
import pytest

from edge_runtime.audio import log_mel
from edge_runtime.errors import ModelError
from edge_runtime.manifest import load_manifest
from edge_runtime.melmatch import MelMatch
from edge_runtime.synth import Synthesizer
from tests.edge.test_lpc import resonance
from tests.helpers import edited_model

FRONT_END = dict(sample_rate=8000, n_fft=512, win_length=320, hop_length=80, n_mels=80, fmin=0.0, fmax=4000.0,
                 log_floor=1e-5)
HOP, WIN = FRONT_END["hop_length"], FRONT_END["win_length"]


def offline(x: np.ndarray, frames: np.ndarray, max_gain_db: float = 12.0) -> np.ndarray:
    """The filter over a whole signal [n] with its frames [F, n_mels]."""
    stage = MelMatch(FRONT_END, 1, max_gain_db)
    stage.add_frames(frames[:, None])
    return np.concatenate([stage(x[:, None]), stage.flush()])[:, 0]


@pytest.fixture(scope="module")
def speechlike():
    """Two voiced resonances over noise, 0.5 s, and its log-mel."""
    x = (resonance(700.0, 0.95, n=4000, seed=5) + 0.5 * resonance(1800.0, 0.9, n=4000, seed=6)).astype(np.float32)
    x = 0.3 * x / np.abs(x).max()
    return x, log_mel(x, **FRONT_END)


def test_a_signal_that_matches_its_frames_passes_unchanged(speechlike):
    x, mel = speechlike
    y = offline(x.astype(np.float64), mel)
    assert y.shape == x.shape
    # the frames are float32, so each band's gain is 1 to within float32 rounding: the signal comes back to 1e-6
    np.testing.assert_allclose(y, x, atol=1e-6 * np.abs(x).max())


def test_it_moves_the_bands_it_is_asked_to_and_no_further_than_its_limit(speechlike):
    x, mel = speechlike
    bands = slice(30, 45)  # about 1.1-1.9 kHz
    for asked_db, limit_db, expected_db in [(6.0, 12.0, 6.0), (20.0, 12.0, 12.0), (-20.0, 6.0, -6.0)]:
        target = mel.copy()
        target[:, bands] += asked_db / 20 * np.log(10)
        y = offline(x.astype(np.float64), target, limit_db)
        moved = (log_mel(y.astype(np.float32), **FRONT_END) - mel) * 20 / np.log(10)
        inner = moved[3:-3]  # frames clear of the signal's edges
        assert abs(np.median(inner[:, 33:42]) - expected_db) < 0.6, (asked_db, np.median(inner[:, 33:42]))
        assert np.abs(np.median(inner[:, 5:20], axis=0)).max() < 0.3  # bands not asked stay
        assert inner[:, 33:42].max() < max(expected_db, 0) + 1.0


def test_it_streams_bit_for_bit_two_streams_apart_with_a_bounded_delay(speechlike):
    x, mel = speechlike
    rng = np.random.default_rng(1)
    second = (0.5 * x + 0.01 * rng.standard_normal(x.shape[0])).astype(np.float64)
    targets = np.stack([mel + 0.3, log_mel(second.astype(np.float32), **FRONT_END) - 0.2], axis=1)
    signals = np.stack([x.astype(np.float64), second], axis=1)
    whole = MelMatch(FRONT_END, 2, 12.0)
    whole.add_frames(targets)
    expected = np.concatenate([whole(signals), whole.flush()])
    # each stream on its own (one-row products: the last bits may differ)
    np.testing.assert_allclose(expected[:, 0], offline(signals[:, 0], targets[:, 0]), rtol=0, atol=1e-12)
    stream, cuts, fed, pieces = MelMatch(FRONT_END, 2, 12.0), [0, 1, 2, 79, 80, 81, 513, 2600, 3999, 4000], 0, []
    for lo, hi in zip(cuts, cuts[1:]):
        need = min(targets.shape[0], -(-hi // HOP) + 1)  # frames arrive a little ahead of their samples
        stream.add_frames(targets[fed:need])
        fed = need
        pieces.append(stream(signals[lo:hi]))
        assert sum(p.shape[0] for p in pieces) >= hi - WIN  # held back at most one window
    pieces.append(stream.flush())
    np.testing.assert_array_equal(np.concatenate(pieces), expected)
    stream.add_frames(targets)  # flush left it ready for the next stream
    np.testing.assert_array_equal(np.concatenate([stream(signals), stream.flush()]), expected)


@pytest.mark.parametrize("engine", ["native", "litert"])
def test_the_runtime_matches_the_mel_last_and_streams_bit_for_bit(built, reference, engine, tmp_path):
    model = edited_model(built / "lpc", tmp_path, lambda d: d["postfilter"].append(
        {"type": "mel_match", "max_gain_db": 12}))
    matched = Synthesizer.load(model, engine=engine)
    assert matched.manifest.mel_match == 12.0
    mel = reference[0]["mel"]
    ours = np.concatenate(list(matched.stream(mel, speaker="bob", seed=3)))
    assert ours.shape[0] == mel.shape[0] * matched.config["hop_length"]
    blocks = (mel[i:i + 3] for i in range(0, mel.shape[0], 3))
    np.testing.assert_array_equal(np.concatenate(list(matched.stream(blocks, speaker="bob", seed=3, block=41))), ours)
    # the same weights without it draw the same samples: its output is theirs, mel-matched after the de-emphasis
    plain = np.concatenate(list(Synthesizer.load(built / "lpc", engine=engine).stream(mel, speaker="bob", seed=3)))
    stage = MelMatch(matched.config, 1, 12.0)
    stage.add_frames(mel[:, None])
    expected = np.concatenate([stage(plain[:, None]), stage.flush()])[:, 0]
    np.testing.assert_allclose(ours, np.clip(expected, -1, 1), atol=1e-6)
    assert np.abs(ours - plain).max() > 0.02 * np.abs(plain).max()
    # the bands come closer to the frames asked for
    front_end = {k: matched.config[k] for k in FRONT_END}
    assert (np.abs(log_mel(ours, **front_end) - mel).mean() < np.abs(log_mel(plain, **front_end) - mel).mean() - 0.1)


@pytest.mark.parametrize("change, message", [
    (lambda d: d["postfilter"].append({"type": "mel_match", "max_gain_db": 0}), r"max_gain_db, a number in \(0, 60\]"),
    (lambda d: d["postfilter"].append({"type": "mel_match", "max_gain_db": 61}), "got 61"),
    (lambda d: d["postfilter"].append({"type": "mel_match", "max_gain_db": "12"}), "got '12'"),
    (lambda d: d["postfilter"].append({"type": "mel_match", "max_gain_db": True}), "got True"),
    (lambda d: d["postfilter"].append({"type": "mel_match"}), "got None"),
    (lambda d: d["postfilter"].insert(0, {"type": "mel_match", "max_gain_db": 12}),
     "in the order lpc, formant, deemphasis, mel_match"),
    (lambda d: (d["postfilter"].append({"type": "mel_match", "max_gain_db": 12}),
                d["config"].update(win_length=d["config"]["hop_length"] + 1)), "2 \\* hop_length <= win_length"),
])
def test_bad_mel_match_entries_are_model_errors(built, tmp_path, change, message):
    with pytest.raises(ModelError, match=message):
        load_manifest(edited_model(built / "lpc", tmp_path, change))


def test_mel_matching_needs_a_mel_conditioned_model(built, tmp_path):
    def add(d):
        d["postfilter"] = [{"type": "mel_match", "max_gain_db": 12}]

    with pytest.raises(ModelError, match="needs a mel-conditioned model"):
        load_manifest(edited_model(built / "uncond", tmp_path, add))
