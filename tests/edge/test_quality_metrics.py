"""The quality report's metrics and baselines on signals whose scores are known."""

import numpy as np
import pytest

from quality_metrics import (f0_track, griffin_lim, log_mel_distance, mu_law_round_trip, pesq_nb, pitch_errors, stoi,
                             world_resynthesis)
from edge_runtime.audio import log_mel

RATE = 8000
FRONT_END = dict(sample_rate=RATE, n_fft=512, win_length=320, hop_length=80, n_mels=80, fmin=0.0, fmax=4000.0,
                 log_floor=1e-5)


@pytest.fixture(scope="module")
def voice() -> np.ndarray:
    """1.5 s of a gliding 19-harmonic buzz with a syllable-rate envelope and a little noise (seeded)."""
    t = np.arange(int(1.5 * RATE)) / RATE
    phase = 2 * np.pi * np.cumsum(120 + 30 * np.sin(2 * np.pi * 1.5 * t)) / RATE
    buzz = sum(np.sin(k * phase) / k for k in range(1, 20))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 3 * t)) ** 2
    noise = 0.002 * np.random.default_rng(0).standard_normal(t.shape)
    return (0.1 * buzz * envelope + noise).astype(np.float32)


def test_identity_scores_the_maximum(voice):
    assert pesq_nb(voice, voice, RATE) == pytest.approx(4.5486, abs=1e-3)  # P.862 narrow band's ceiling
    assert stoi(voice, voice, RATE) == pytest.approx(1.0, abs=1e-9)
    assert log_mel_distance(voice, voice, FRONT_END) == 0.0


def test_mu_law_round_trip_is_near_transparent(voice):
    coded = mu_law_round_trip(voice)
    assert np.max(np.abs(coded - voice)) < 0.01 and not np.array_equal(coded, voice)
    assert 4.3 < pesq_nb(voice, coded, RATE) < 4.54
    assert 0.93 < stoi(voice, coded, RATE) < 0.99
    assert 0.5 < log_mel_distance(voice, coded, FRONT_END) < 1.5


def test_unrelated_noise_scores_low(voice):
    noise = (0.1 * np.random.default_rng(1).standard_normal(voice.shape)).astype(np.float32)
    assert pesq_nb(voice, noise, RATE) < 1.5 and stoi(voice, noise, RATE) < 0.6
    assert log_mel_distance(voice, noise, FRONT_END) > 15


def test_pitch_errors_count_wrong_f0_and_wrong_voicing(voice):
    reference = f0_track(voice, RATE)
    assert (reference > 0).mean() > 0.6  # the buzz is voiced but in its envelope's troughs
    gpe, vde = pitch_errors(reference, mu_law_round_trip(voice), RATE)
    assert gpe == 0.0 and vde < 0.05  # the coding noise moves a few voicing boundaries in the troughs
    # the same buzz a quarter higher (a 4:5 ratio, past the 20 % tolerance) and in the same envelope: every frame
    # voiced in both is a gross error, the voicing stays
    t = np.arange(voice.shape[0]) / RATE
    phase = 1.25 * 2 * np.pi * np.cumsum(120 + 30 * np.sin(2 * np.pi * 1.5 * t)) / RATE
    higher = 0.1 * sum(np.sin(k * phase) / k for k in range(1, 13)) * 0.5 * (1 + np.sin(2 * np.pi * 3 * t)) ** 2
    gpe, vde = pitch_errors(reference, higher.astype(np.float32), RATE)
    assert gpe > 0.95 and vde < 0.1
    noise = (0.1 * np.random.default_rng(1).standard_normal(voice.shape)).astype(np.float32)
    gpe, vde = pitch_errors(reference, noise, RATE)  # unvoiced where the buzz is voiced
    assert vde > 0.5
    assert pitch_errors(reference, np.zeros_like(voice), RATE) == (None, pytest.approx((reference > 0).mean()))


def test_too_short_clips_are_not_scored(voice):
    short = voice[: RATE // 5]  # 0.2 s: below PESQ's quarter second and STOI's 30 frames
    assert pesq_nb(short, short, RATE) is None and stoi(short, short, RATE) is None


def test_griffin_lim_inverts_our_mel_in_place(voice):
    mel = log_mel(voice, **FRONT_END)
    out = griffin_lim(mel, FRONT_END, iterations=50)
    assert out.shape == (mel.shape[0] * 80,)
    assert log_mel_distance(voice, out, FRONT_END) < 2.0  # same analysis, aligned: a small mel error
    assert stoi(voice, out, RATE) > 0.9


def test_world_keeps_length_and_intelligibility(voice):
    out = world_resynthesis(voice, RATE)
    assert out.shape == voice.shape and np.all(np.abs(out) <= 1)
    assert stoi(voice, out, RATE) > 0.8


def test_world_is_deterministic_at_8khz(voice):
    """At 8 kHz pyworld.d4c reads values it never wrote; run at 16 kHz, WORLD gives the same output every time."""
    first = world_resynthesis(voice, RATE)
    for _ in range(3):
        np.testing.assert_array_equal(world_resynthesis(voice, RATE), first)


def test_quality_report_end_to_end(built, tmp_path):
    """The report tool on the tiny model: every method scored, counts consistent, the ceiling on top."""
    import json
    import subprocess
    import sys

    from tests.helpers import REPO

    out = tmp_path / "q.json"
    r = subprocess.run([sys.executable, str(REPO / "tools/quality_report.py"), str(built / "models/dynamic"),
                        str(built / "models/float32"), "--data", str(built / "val"), "--seeds", "0,1", "--nll",
                        "--griffin-lim-iterations", "20", "--json", str(out), "--markdown", str(tmp_path / "q.md")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(out.read_text())
    methods = report["methods"]
    assert list(methods) == ["µ-law 8 bit", "Griffin-Lim", "WORLD", "WaveNet tiny dynamic (dynamic)",
                            "WaveNet tiny float32 (float32)"]
    clips = report["data"]["clips"]
    assert clips == len(report["per_clip"]["WORLD"]) > 0 and report["data"]["speakers"] == ["alice", "bob"]
    for m in methods.values():
        assert m["clips"] == clips and m["lmd_db_scored"] == clips and 0 <= m["pesq_scored"] <= clips
        assert len(report["per_clip"]) == 5 and m["stoi_speakers"] is not None
    assert methods["µ-law 8 bit"]["pesq_speakers"] > 4.0 and methods["µ-law 8 bit"]["stoi_speakers"] > 0.75
    assert methods["µ-law 8 bit"]["lmd_db"] < methods["WaveNet tiny dynamic (dynamic)"]["lmd_db"]
    models = report["models"]
    dynamic, float32 = models["WaveNet tiny dynamic (dynamic)"], models["WaveNet tiny float32 (float32)"]
    assert float32["files"] == clips and dynamic["nll_bits_per_sample"] > 0
    # the paired comparison with WORLD counts the clips both could score, and its interval holds its mean
    paired = dynamic["vs_world"]["pesq"]
    scored = sum(1 for a, b in zip(report["per_clip"]["WORLD"], report["per_clip"]["WaveNet tiny dynamic (dynamic)"])
                 if a["pesq"] is not None and b["pesq"] is not None)
    assert paired["clips"] == scored and 0 <= paired["wins"] <= scored
    assert paired["ci95"][0] <= paired["mean_difference"] <= paired["ci95"][1]
    # pitch errors: the µ-law round trip keeps the reference's f0, WORLD resynthesises from it
    assert methods["µ-law 8 bit"]["gpe"] < 0.02 and methods["µ-law 8 bit"]["vde"] < 0.05
    assert methods["WORLD"]["gpe_speakers"] is None  # pitch is scored per clip only (Harvest is slow)
    gpe = dynamic["vs_world"]["gpe"]  # paired like PESQ, a win being fewer errors
    gpe_pairs = [(b["gpe"], a["gpe"]) for a, b in zip(report["per_clip"]["WORLD"],
                                                      report["per_clip"]["WaveNet tiny dynamic (dynamic)"])
                 if a["gpe"] is not None and b["gpe"] is not None]
    assert gpe["clips"] == len(gpe_pairs) and gpe["wins"] == sum(m < w for m, w in gpe_pairs)
    # every later model is also paired with the first (an A/B): the per-clip differences, recomputed
    ab = float32["vs_first"]["pesq"]
    diffs = [b["pesq"] - a["pesq"] for a, b in zip(report["per_clip"]["WaveNet tiny dynamic (dynamic)"],
                                                   report["per_clip"]["WaveNet tiny float32 (float32)"])
             if a["pesq"] is not None and b["pesq"] is not None]
    assert ab["clips"] == len(diffs) and abs(ab["mean_difference"] - sum(diffs) / len(diffs)) < 1e-9
    assert "vs_first" not in dynamic
    text = (tmp_path / "q.md").read_text()
    assert "| WaveNet tiny float32 (float32) |" in text and "Paired with WORLD" in text
    assert "Paired with WaveNet tiny dynamic (dynamic), WaveNet tiny float32 (float32), PESQ" in text
