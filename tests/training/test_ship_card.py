"""tools/ship_model.py's model card: wall time without pauses, and a fine-tune's card continuing the shipped one."""

import json

import pytest

from tests.helpers import REPO  # noqa: F401 (puts tools/ on the path)
from training import checkpoint as ckpt_io


def test_ship_card_leaves_out_pauses_even_when_most_stretches_hold_one(tmp_path):
    """The model card's wall time: a stretch far slower than the CPU pace was a pause (counted at that pace)."""
    from ship_model import training_history

    # 1 CPU second per step; two of the three stretches between validations hold a 5000 s pause
    rows = [{"step": s, "val_nll_bits": 5.0, "time": t, "cpu_seconds": float(s)}
            for s, t in ((100, 100.0), (200, 200.0), (300, 5300.0), (400, 10400.0))]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    history = training_history(tmp_path)
    assert history["seconds_per_step"] == 1.0 and history["wall_seconds"] == 400.0
    assert [c["step"] for c in history["curve"]] == [100, 200, 300, 400]


def shipped_lineage(tmp_path, card_checkpoint="ckpt-00003800"):
    """A shipped card (3 800 steps), the run recovered from its float export, and a 400-step fine-tune of it."""
    models, rec, ft = tmp_path / "models", tmp_path / "rec", tmp_path / "ft"
    for folder in (models, rec, ft):
        folder.mkdir()
    old = {"step": 3800, "checkpoint": card_checkpoint, "cpu_seconds": 26000.0, "wall_seconds": 30000.0,
           "config": {"learning_rate": 1e-3, "lr_schedule": "exponential", "steps": 3800},
           "curve": [{"step": 3500, "val_nll_bits": 5.03}], "training_command": "wavenet-edge train ...",
           "export_report": {"big": 1}}
    (models / "training.json").write_text(json.dumps(old))
    ckpt_io.write_json_atomic(rec / "run.json", {"recovered_from": {"model": "default-float16",
                                                                    "checkpoint": "ckpt-00003800"}})
    info = {"finetune_from": {"run": str(rec), "checkpoint": "ckpt-00003800", "step": 3800}, "cpu_seconds": 900.0}
    card = {"step": 400, "checkpoint": "ckpt-00000400", "wall_seconds": 500.0,
            "config": {"learning_rate": 2.5e-4, "lr_schedule": "cosine", "steps": 400, "lpc_inputs": True},
            "curve": [{"step": 0, "val_nll_bits": 5.026}, {"step": 400, "val_nll_bits": 5.01}]}
    return models, info, card


def test_a_finetune_card_continues_the_shipped_one(tmp_path):
    from ship_model import continued_card, previous_card

    models, info, card = shipped_lineage(tmp_path)
    previous = previous_card(info, models, "")
    merged = continued_card(card, previous, info, {"data_dir": "fsdd/recordings"})
    assert merged["step"] == 4200 and merged["cpu_seconds"] == 26900.0 and merged["wall_seconds"] == 30500.0
    assert [c["step"] for c in merged["curve"]] == [3500, 3800, 4200]  # one curve over the voice's whole life
    assert merged["finetune"] == {"steps": 400, "from_step": 3800, "checkpoint": "ckpt-00000400",
                                  "cpu_seconds": 900.0, "wall_seconds": 500.0,
                                  "model_changes": {"lpc_inputs": [False, True]}}  # a grown model, named so
    assert merged["continues"]["training_command"] == "wavenet-edge train ..."
    assert "export_report" not in merged["continues"] and merged["checkpoint"] == "ckpt-00000400"
    assert merged["training_command"] == (
        "python tools/recover_run.py edge_runtime/models/default-float16 --out SOURCE_RUN --data fsdd/recordings; "
        "wavenet-edge train --finetune-from SOURCE_RUN --out RUN_DIR --steps 400 "
        "--set learning_rate=0.00025 --set lr_schedule=cosine --set lpc_inputs=true")
    # the next fine-tune recovers the new voice (its run's step is the fine-tune's own 400) and adds on
    (models / "training.json").write_text(json.dumps(merged))
    (tmp_path / "rec" / "run.json").write_text(json.dumps({"recovered_from": {"model": "default-float16",
                                                                             "checkpoint": "ckpt-00000400"}}))
    info2 = {**info, "finetune_from": {**info["finetune_from"], "checkpoint": "ckpt-00000400", "step": 400}}
    again = continued_card({**card, "step": 100}, previous_card(info2, models, ""), info2, {})
    assert again["step"] == 4300 and again["finetune"]["from_step"] == 4200 and again["cpu_seconds"] == 27800.0
    assert again["finetune"]["model_changes"] == {}  # the source had the inputs already


def test_a_card_of_another_checkpoint_is_refused(tmp_path):
    from ship_model import continued_card, previous_card

    models, info, card = shipped_lineage(tmp_path, card_checkpoint="ckpt-00002600")
    with pytest.raises(SystemExit, match="describes ckpt-00002600, not the recovered ckpt-00003800"):
        previous_card(info, models, "")
    assert previous_card({}, models, "") is None and continued_card(card, None, {}, {}) is card


def test_a_finetune_of_the_shipped_run_itself_continues_its_card(tmp_path):
    """The run a voice was shipped from, still on disk, fine-tuned again (e.g. new LPC targets): no recovery step."""
    from ship_model import continued_card, previous_card

    models, run = tmp_path / "models", tmp_path / "grow"
    models.mkdir()
    run.mkdir()
    old = {"step": 5500, "checkpoint": "ckpt-00001700", "cpu_seconds": 33000.0, "wall_seconds": 43000.0,
           "config": {"learning_rate": 2.5e-4, "lr_schedule": "cosine", "lpc_gamma": 0.9, "steps": 1700},
           "curve": [{"step": 5500, "val_nll_bits": 5.017}], "finetune": {"steps": 1700, "from_step": 3800},
           "export_report": {"run": "grow", "checkpoint": "ckpt-00001700"}}
    (models / "training.json").write_text(json.dumps(old))
    info = {"finetune_from": {"run": str(run), "checkpoint": "ckpt-00001700", "step": 1700}, "cpu_seconds": 3300.0}
    card = {"step": 800, "checkpoint": "ckpt-00000800", "wall_seconds": 3600.0,
            "config": {"learning_rate": 2.5e-4, "lr_schedule": "cosine", "lpc_gamma": 0.95, "steps": 800},
            "curve": [{"step": 800, "val_nll_bits": 5.054}]}
    merged = continued_card(card, previous_card(info, models, ""), info, {})
    assert merged["step"] == 6300 and merged["cpu_seconds"] == 36300.0
    assert merged["finetune"]["model_changes"] == {"lpc_gamma": [0.9, 0.95]}
    # the learning rate is always named: a fine-tune's default is where the source's schedule ended
    assert merged["training_command"] == ("wavenet-edge train --finetune-from SOURCE_RUN --out RUN_DIR --steps 800 "
                                          "--set learning_rate=0.00025 --set lpc_gamma=0.95")
    assert merged["continues"]["finetune"] == {"steps": 1700, "from_step": 3800}
    (models / "training.json").write_text(json.dumps({**old, "export_report": {"run": "other"}}))
    with pytest.raises(SystemExit, match="neither the run of the voice shipped"):
        previous_card(info, models, "")


def test_the_training_curve_marks_each_leg_that_changed_the_model():
    from figures import fine_tune_changes

    card = {"finetune": {"from_step": 5500, "model_changes": {"lpc_gamma": [0.9, 0.95]}},
            "continues": {"finetune": {"from_step": 3800, "model_changes": {"lpc_inputs": [False, True]}},
                          "continues": {"finetune": {"from_step": 3000, "model_changes": {}}}}}
    assert fine_tune_changes(card) == [(3800, {"lpc_inputs": [False, True]}), (5500, {"lpc_gamma": [0.9, 0.95]})]
    assert fine_tune_changes({"step": 100}) == []
