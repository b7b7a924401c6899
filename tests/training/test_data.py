"""Reading folders of recordings, labelling, splitting, resampling, and the training windows."""

import numpy as np
import pytest

from tests.helpers import assert_clean_error, run_cli, voice, write_wav
from edge_runtime.audio import log_mel, front_end_params, mu_law_encode
from training.config import receptive_field
from training.data import (DataError, find_audio_files, is_validation, load_corpus, read_audio, segment_dataset,
                           speaker_of, trim_silence, window_frames)

FSDD_REGEX = r"^\d+_(?P<speaker>[a-z]+)_\d+"


def test_speaker_labels_from_folders_and_regex(tiny_data):
    files = find_audio_files(tiny_data)
    assert len(files) == 16
    assert {speaker_of(p, tiny_data, None) for p in files} == {"alice", "bob"}
    assert {speaker_of(p, tiny_data, FSDD_REGEX) for p in files} == {"alice", "bob"}
    with pytest.raises(DataError, match="does not match"):
        speaker_of(files[0], tiny_data, r"^(?P<speaker>zz)")


def test_split_is_reproducible():
    names = [f"spk/{i}.wav" for i in range(2000)]
    chosen = [n for n in names if is_validation(n, None, 0.1)]
    assert chosen == [n for n in reversed(names) if is_validation(n, None, 0.1)][::-1]
    assert 150 < len(chosen) < 250
    assert is_validation("x/3_bob_0.wav", r"_[0-4]\.wav$", 0.0) and not is_validation("x/3_bob_7.wav", r"_[0-4]\.wav$", 0.0)


def test_corpus_split_speakers_and_alignment(tiny_data, tiny_config):
    config = tiny_config.replace(speakers=())
    corpus = load_corpus(tiny_data, config, val_regex=r"_[0-1]\.wav$")
    assert corpus.speakers == ("alice", "bob")
    assert len(corpus.val) == 4 and len(corpus.train) == 12
    u = corpus.val[0]
    assert u.num_samples % config.hop_length == 0 and u.mel.shape == (u.num_samples // config.hop_length, 16)
    # Training utterances start with at least one receptive field of silence (µ-law class 128).
    t = corpus.train[0]
    lead = np.argmax(t.classes != 128)
    assert lead >= receptive_field(config) and t.num_samples >= window_frames(config) * config.hop_length


def test_resampling_stereo_and_odd_rates(tmp_path):
    rng = np.random.default_rng(0)
    x = voice(rng, 200.0, 0.5, 11025)
    write_wav(tmp_path / "odd.wav", np.stack([x, x], axis=1), 11025)
    y = read_audio(tmp_path / "odd.wav", 8000)
    assert abs(y.shape[0] - 4000) <= 1
    # the 200 Hz fundamental survives resampling: peak of the spectrum within one bin
    spectrum = np.abs(np.fft.rfft(y * np.hanning(y.shape[0])))
    assert abs(np.argmax(spectrum) * 8000 / y.shape[0] - 200) < 2.5


def test_trim_silence():
    x = np.concatenate([np.zeros(4000), 0.5 * np.ones(2000), np.zeros(4000)]).astype(np.float32)
    y = trim_silence(x, 8000, 40.0)
    assert 2000 <= y.shape[0] <= 2000 + 2 * 200 and np.abs(y).max() == 0.5
    assert trim_silence(x, 8000, 0).shape == x.shape


def test_windows_are_aligned_slices(tiny_data, tiny_config):
    corpus = load_corpus(tiny_data, tiny_config, val_regex=r"_0\.wav$")
    ds = segment_dataset(corpus.train, tiny_config, batch_size=3, seed=5)
    batch = next(iter(ds))
    hop, wf = tiny_config.hop_length, window_frames(tiny_config)
    assert tuple(batch["audio"].shape) == (3, wf * hop) and tuple(batch["mel"].shape) == (3, wf, 16)
    for b in range(3):
        u = corpus.train[0]
        matches = []
        for u in corpus.train:
            for f in range(u.num_samples // hop - wf + 1):
                if np.array_equal(u.classes[f * hop:(f + wf) * hop], batch["audio"][b].numpy()):
                    matches.append((u, f))
        assert matches, "window is not a slice of a training utterance"
        u, f = matches[0]
        np.testing.assert_array_equal(batch["mel"][b].numpy(), u.mel[f:f + wf])
        assert int(batch["speaker"][b]) == u.speaker


def test_same_seed_same_windows(tiny_data, tiny_config):
    corpus = load_corpus(tiny_data, tiny_config, val_regex=r"_0\.wav$")
    a = next(iter(segment_dataset(corpus.train, tiny_config, 4, seed=11)))["audio"].numpy()
    b = next(iter(segment_dataset(corpus.train, tiny_config, 4, seed=11)))["audio"].numpy()
    c = next(iter(segment_dataset(corpus.train, tiny_config, 4, seed=12)))["audio"].numpy()
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_numpy_front_end_is_used_for_data(tiny_data, tiny_config):
    corpus = load_corpus(tiny_data, tiny_config, val_regex=r"_0\.wav$")
    audio = read_audio(tiny_data / "alice" / "0_alice_0.wav", 8000)
    audio = trim_silence(audio, 8000, tiny_config.trim_db)
    audio = audio[: audio.shape[0] // 32 * 32]
    u = next(v for v in corpus.val if v.name == "alice/0_alice_0.wav")
    np.testing.assert_array_equal(u.classes, mu_law_encode(audio))
    np.testing.assert_array_equal(u.mel, log_mel(audio, **front_end_params(tiny_config.to_dict())))


# ---------------------------------------------------------------- bad input through the CLI: one line, exit 2
def _train(data, out, *extra):
    return run_cli("train", "--preset", "tiny", "--data", str(data), "--out", str(out), "--steps", "1", "--quiet",
                   *extra)


@pytest.mark.slow
def test_bad_data_folders_give_clean_errors(tmp_path, tiny_data):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_clean_error(_train(empty, tmp_path / "r1"), "no .wav or .flac files")
    assert_clean_error(_train(tmp_path / "missing", tmp_path / "r2"), "does not exist")

    garbage = tmp_path / "garbage"
    write_wav(garbage / "a" / "ok.wav", voice(np.random.default_rng(0), 200, 0.3, 8000), 8000)
    (garbage / "a" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00not a wave file at all")
    assert_clean_error(_train(garbage, tmp_path / "r3"), "cannot read audio file", "broken.wav")

    zero = tmp_path / "zero"
    write_wav(zero / "a" / "ok.wav", voice(np.random.default_rng(0), 200, 0.3, 8000), 8000)
    write_wav(zero / "a" / "empty.wav", np.zeros(0, np.float32), 8000)
    assert_clean_error(_train(zero, tmp_path / "r4"), "empty.wav")
    (zero / "a" / "empty.wav").write_bytes(b"")
    assert_clean_error(_train(zero, tmp_path / "r5"), "empty.wav")

    assert_clean_error(_train(tiny_data, tmp_path / "r6", "--speaker-regex", r"^(?P<speaker>zz)"),
                       "speaker regex", "does not match")
    assert_clean_error(_train(tiny_data, tmp_path / "r7", "--set", "residual_chanels=3"),
                       "unknown config key 'residual_chanels'")
    assert not (tmp_path / "r6").exists() and not (tmp_path / "r7").exists()


def test_whole_window_scoring_spans(tiny_config):
    from training.data import scored_span
    from training.model import conditioning_context

    hop = tiny_config.hop_length
    first, last = scored_span(tiny_config)  # classic: the last segment after a receptive field of context
    assert last == window_frames(tiny_config) * hop and last - first == tiny_config.segment_length
    assert first >= receptive_field(tiny_config)
    whole = tiny_config.replace(score_whole_window=True)
    first, last = scored_span(whole)
    assert window_frames(whole) * hop == tiny_config.segment_length  # no unscored context in the window
    edge = conditioning_context(whole) * hop  # frames whose conditioning saw padding are left out
    assert (first, last) == (edge, tiny_config.segment_length - edge)


def test_preemphasis_shapes_the_targets_not_the_mel(tiny_data, tiny_config):
    from edge_runtime.audio import preemphasize
    from training.data import prepare

    audio = voice(np.random.default_rng(0), 150.0, 0.5, 8000)
    plain = prepare(audio, tiny_config, "a", 0)
    emph = prepare(audio, tiny_config.replace(preemphasis=0.85), "a", 0)
    np.testing.assert_array_equal(emph.mel, plain.mel)  # the conditioning describes the speech itself
    n = plain.num_samples
    np.testing.assert_array_equal(emph.classes, mu_law_encode(preemphasize(audio[:n], 0.85)))
    assert not np.array_equal(emph.classes, plain.classes)


def test_normalize_peak_scales_every_recording_to_one_level(tiny_data, tiny_config):
    from edge_runtime.audio import scale_to_peak
    from training.data import load_recordings

    as_recorded = load_recordings(tiny_data, tiny_config)
    levelled = load_recordings(tiny_data, tiny_config.replace(normalize_peak=0.8))
    peaks = np.array([np.abs(a).max() for _, _, a in as_recorded])
    assert np.all(np.abs(peaks - 0.8) > 0.1)  # none is at that peak already: the test can see the scaling
    for (name, speaker, a), (name2, speaker2, b) in zip(as_recorded, levelled):
        assert (name, speaker) == (name2, speaker2) and b.dtype == np.float32
        np.testing.assert_allclose(b, a * (0.8 / np.abs(a).max()), rtol=1e-6, atol=1e-9)
        assert np.abs(b).max() == pytest.approx(0.8, rel=1e-6)
    silence, gain = scale_to_peak(np.zeros(10, np.float32), 0.8)
    assert gain == 1.0 and not silence.any()
    audio = as_recorded[0][2]
    same, gain = scale_to_peak(audio, 0.0)  # 0: off
    assert gain == 1.0 and np.array_equal(same, audio)


def test_lpc_targets_are_the_excitation_of_the_emphasised_audio(tiny_config):
    from edge_runtime.audio import preemphasize
    from edge_runtime.lpc import Synthesis, coefficients_for, excitation
    from training.data import prepare

    audio = voice(np.random.default_rng(1), 120.0, 0.5, 8000)
    config = tiny_config.replace(preemphasis=0.85, lpc_order=8)
    emph = prepare(audio, tiny_config.replace(preemphasis=0.85), "a", 0)
    excit = prepare(audio, config, "a", 0)
    np.testing.assert_array_equal(excit.mel, emph.mel)
    n = emph.num_samples
    a = coefficients_for(excit.mel, config.to_dict())
    assert a.shape == (excit.mel.shape[0], 8)
    e = excitation(preemphasize(audio[:n], 0.85), a, config.hop_length)
    np.testing.assert_array_equal(excit.classes, mu_law_encode(e))
    assert e.std() < 0.7 * preemphasize(audio[:n], 0.85).std()  # the prediction takes out part of the signal
    synthesis = Synthesis(8, config.hop_length)  # and the runtime's filter puts it back
    synthesis.add_frames(a)
    np.testing.assert_allclose(synthesis(e)[:, 0], preemphasize(audio[:n], 0.85), atol=1e-5)
    assert excit.lpc is None


def test_lpc_inputs_are_the_filtered_classes_and_the_next_prediction(tiny_config):
    from edge_runtime.audio import mu_law_decode
    from edge_runtime.lpc import Synthesis, coefficients_for
    from training.data import prepare

    audio = voice(np.random.default_rng(2), 150.0, 0.5, 8000)
    config = tiny_config.replace(preemphasis=0.85, lpc_order=8, lpc_inputs=True)
    u = prepare(audio, config, "a", 0)
    np.testing.assert_array_equal(u.classes, prepare(audio, config.replace(lpc_inputs=False), "a", 0).classes)
    a = coefficients_for(u.mel, config.to_dict())
    synthesis = Synthesis(8, config.hop_length)  # s: the filter on the quantised excitation, as generation sees it
    synthesis.add_frames(a)
    s = synthesis(mu_law_decode(u.classes).astype(np.float64))[:, 0]
    past = np.stack([np.concatenate([np.zeros(k), s[:-k]]) for k in range(1, 9)], axis=1)
    p = -(np.repeat(a, config.hop_length, axis=0) * past).sum(axis=1)  # p[t] = -sum_k a_k s[t-k]
    assert u.lpc.shape == (u.num_samples, 2) and u.lpc.dtype == np.int32
    np.testing.assert_array_equal(u.lpc[:, 0], mu_law_encode(s))
    np.testing.assert_array_equal(u.lpc[:-1, 1], mu_law_encode(p[1:]))
    assert u.lpc[-1, 1] == 128 and np.abs(s - p - mu_law_decode(u.classes)).max() < 1e-12


def test_period_input_is_the_excitation_one_frame_lag_back(tiny_config):
    from edge_runtime.features import frame_lags
    from training.data import prepare

    audio = voice(np.random.default_rng(2), 150.0, 0.5, 8000)
    config = tiny_config.replace(preemphasis=0.85, lpc_order=8, lpc_inputs=True, pitch_features=True)
    u = prepare(audio, config.replace(period_input=True), "a", 0)
    np.testing.assert_array_equal(u.lpc[:, :2], prepare(audio, config, "a", 0).lpc)  # s and p unchanged
    lags = frame_lags(u.mel, config.to_dict())
    voiced = lags[4:-4]
    assert abs(np.median(voiced) - 8000 / 150) <= 1  # the voice's period, in samples
    hop, t = config.hop_length, np.arange(u.num_samples - 1)
    source = t + 1 - lags[(t + 1) // hop]
    expected = np.where(source >= 0, u.classes[np.maximum(source, 0)], 128)
    assert u.lpc.shape == (u.num_samples, 3) and (source < 0).any() and (source >= 0).any()
    np.testing.assert_array_equal(u.lpc[:-1, 2], expected)
    assert u.lpc[-1, 2] == 128


def test_input_noise_is_rounded_gaussian_within_the_class_range():
    import tensorflow as tf
    from training.data import noisy_history

    mid = tf.fill([4, 50_000], 128)
    seed = tf.constant([5, 7])
    noisy = noisy_history(mid, 2.0, 256, seed).numpy()
    diff = noisy - 128
    # Rounding N(0, 4) adds a uniform rounding error's variance, 1/12
    assert abs(diff.std() - np.sqrt(4 + 1 / 12)) < 0.02 and abs(diff.mean()) < 0.02
    assert np.array_equal(noisy, noisy_history(mid, 2.0, 256, seed).numpy())  # a resumed run draws the same
    assert not np.array_equal(noisy, noisy_history(mid, 2.0, 256, tf.constant([6, 7])).numpy())
    edges = noisy_history(tf.constant([[0, 255] * 5000]), 3.0, 256, seed).numpy()
    assert edges.min() == 0 and edges.max() == 255
    assert (edges[0, ::2] == 0).mean() > 0.5 and (edges[0, 1::2] == 255).mean() > 0.5  # clipped, not wrapped
