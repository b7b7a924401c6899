"""Config: presets, JSON round trip, unknown keys, --set parsing (no TensorFlow)."""

import json

import pytest

from training.config import PRESETS, Config, ConfigError, macs_per_sample, receptive_field


@pytest.mark.parametrize("name", list(PRESETS))
def test_json_round_trip(tmp_path, name):
    config = Config.preset(name, speakers=("a", "b"))
    config.to_json(tmp_path / "config.json")
    again = Config.from_json(tmp_path / "config.json")
    assert again == config
    assert isinstance(again.upsample_scales, tuple) and isinstance(again.speakers, tuple)


def test_unknown_key_is_an_error_naming_it(tmp_path):
    values = Config.preset("tiny").to_dict()
    values["residual_chanels"] = 3
    (tmp_path / "c.json").write_text(json.dumps(values))
    with pytest.raises(ConfigError, match=r"unknown config key 'residual_chanels'.*residual_channels"):
        Config.from_json(tmp_path / "c.json")
    with pytest.raises(ConfigError, match="unknown config key 'nope'"):
        Config.preset("s").with_overrides(["nope=1"])


def test_wrong_types_and_values_are_errors():
    with pytest.raises(ConfigError, match="residual_channels must be int"):
        Config.from_dict({"residual_channels": "64"})
    with pytest.raises(ConfigError, match="upsample_scales"):
        Config.preset("s", hop_length=200)  # scales (4, 5, 8) multiply to 160
    with pytest.raises(ConfigError, match="kernel_size"):
        Config.preset("s", kernel_size=4)
    with pytest.raises(ConfigError, match="unknown preset"):
        Config.preset("huge")


def test_overrides_parse_by_field_type():
    c = Config.preset("s").with_overrides(["sample_rate=8000", "fmax=4000", "upsample_scales=4,4,5",
                                           "hop_length=80", "jit_compile=false", "speakers=a,b"])
    assert (c.sample_rate, c.fmax, c.upsample_scales, c.jit_compile, c.speakers) == (
        8000, 4000.0, (4, 4, 5), False, ("a", "b"))
    with pytest.raises(ConfigError, match="bad value for stacks"):
        Config.preset("s").with_overrides(["stacks=two"])


def test_reference_sizes():
    s, xs, paper = Config.preset("s"), Config.preset("xs"), Config.preset("paper")
    assert s.dilations == tuple(2**i for i in range(10)) * 2
    assert receptive_field(s) == 2047
    # the reference model costs about 0.9 M multiply-adds per sample (2 x 10 layers, 64/128/128)
    assert 0.85e6 < macs_per_sample(s) < 0.95e6
    assert macs_per_sample(xs) < 0.25 * macs_per_sample(s)  # "well under a third"
    assert paper.dilations == tuple(2**i for i in range(10)) * 3 and paper.mu_classes == 256
    assert receptive_field(Config.preset("tiny", kernel_size=3)) == 2 * (1 + 2 + 4 + 8) + 1


def test_config_is_frozen():
    c = Config.preset("tiny")
    with pytest.raises(AttributeError):
        c.stacks = 3  # type: ignore[misc]


@pytest.mark.parametrize("setting, message", [
    ("preemphasis=2", r"preemphasis must be in \[0, 1\)"),
    ("preemphasis=-0.1", r"preemphasis must be in \[0, 1\)"),
    ("normalize_peak=2", r"normalize_peak must be in \[0, 1\] \(0: off\)"),
    ("normalize_peak=-0.5", r"normalize_peak must be in \[0, 1\] \(0: off\)"),
    ("lr_schedule=linear", "lr_schedule must be one of exponential, cosine, inverse_time"),
    ("adam_beta2=1", r"adam_beta2 must be in \(0, 1\)"),
    ("qat_state_scales=per_tensor", "qat_state_scales must be one of shared, per_layer"),
    ("warmup_steps=-5", "warmup_steps must be >= 0"),
    ("lr_min=0.1", "lr_min <= learning_rate"),
    ("qat_range_decay=1", r"qat_range_decay must be in \(0, 1\)"),
    ("qat_calibration_batches=-1", "qat_calibration_batches must be >= 0"),
    ("lpc_order=33", r"lpc_order must be in \[0, 32\]"),
    ("lpc_order=-1", r"lpc_order must be in \[0, 32\]"),
    ("lpc_gamma=0", r"lpc_gamma must be in \(0, 1\]"),
    ("input_noise=-1", r"input_noise must be in \[0, 64\] classes"),
    ("input_noise=65", r"input_noise must be in \[0, 64\] classes"),
    ("period_noise=-1", r"period_noise must be in \[0, 64\] classes"),
])
def test_recipe_options_are_checked(setting, message):
    with pytest.raises(ConfigError, match=message):
        Config.preset("s").with_overrides([setting])


def test_lpc_needs_the_mel_and_fits_in_a_frame():
    with pytest.raises(ConfigError, match="lpc_order needs local conditioning"):
        Config.preset("tiny", n_mels=0, lpc_order=8)
    with pytest.raises(ConfigError, match=r"lpc_order \(32\) must be below the frame size \(hop_length 32\)"):
        Config.preset("tiny", lpc_order=32)  # tiny's frames are 32 samples
    with pytest.raises(ConfigError, match="lpc_order needs n_fft <= 16384 .*, got 32768"):
        Config.preset("tiny", lpc_order=8, n_fft=32768, win_length=32768)
    assert Config.preset("tiny", lpc_order=8, n_fft=16384, win_length=16384).n_fft == 16384
    assert Config.preset("tiny", n_fft=32768, win_length=32768).n_fft == 32768  # no LPC: no such bound
    with pytest.raises(ConfigError, match=r"lpc_inputs needs lpc_order > 0"):
        Config.preset("tiny", lpc_inputs=True)
    with pytest.raises(ConfigError, match=r"pitch_features needs local conditioning \(n_mels > 0\)"):
        Config.preset("tiny", n_mels=0, pitch_features=True)
    assert (Config.preset("tiny").frame_width, Config.preset("tiny", pitch_features=True).frame_width) == (16, 18)
    for missing in ("lpc_inputs", "pitch_features"):
        with pytest.raises(ConfigError, match=r"period_input needs lpc_inputs and pitch_features"):
            Config.preset("tiny", **{"lpc_order": 8, "lpc_inputs": True, "pitch_features": True,
                                     "period_input": True, missing: False})


def test_qat_needs_float32_compute():
    with pytest.raises(ConfigError, match="qat needs mixed_precision none"):
        Config.preset("tiny", qat=True, mixed_precision="bfloat16")


def test_bad_recipe_option_on_the_command_line_is_a_clean_error(tmp_path):
    from tests.helpers import assert_clean_error, run_cli

    result = run_cli("train", "--preset", "tiny", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
                     "--set", "preemphasis=2")
    assert_clean_error(result, "preemphasis must be in [0, 1)")
    assert not (tmp_path / "run").exists()  # nothing written
    result = run_cli("train", "--preset", "tiny", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
                     "--set", "lpc_order=32")
    assert_clean_error(result, "lpc_order (32) must be below the frame size (hop_length 32)")
    assert not (tmp_path / "run").exists()


def test_old_configs_keep_their_recipe():
    """A config saved before the recipe options existed loads with the recipe it was trained with."""
    values = Config.preset("s").to_dict()
    for key in ("lr_schedule", "warmup_steps", "adam_beta2", "score_whole_window", "preemphasis", "qat",
                "qat_range_decay", "qat_calibration_batches", "lpc_order", "lpc_gamma", "lpc_inputs", "normalize_peak",
                "pitch_features", "period_input", "period_noise"):
        values.pop(key)
    old = Config.from_dict(values)
    assert (old.lr_schedule, old.warmup_steps, old.adam_beta2, old.score_whole_window, old.preemphasis) == (
        "exponential", 0, 0.999, False, 0.0)
    assert not old.qat  # a float model
    assert old.lpc_order == 0  # its samples are the (pre-emphasised) audio, not an excitation
    assert not old.pitch_features and old.frame_width == old.n_mels  # its frames are the log-mel alone
    assert old.normalize_peak == 0.0  # its recordings at their own level
