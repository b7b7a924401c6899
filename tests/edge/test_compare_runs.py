"""tools/compare_runs.py: validation NLL at equal CPU time, from the runs' log.jsonl."""

import json

from compare_runs import at_budget, history, main


def _run(folder, rows):
    folder.mkdir()
    lines = [json.dumps({"step": s, "val_nll_bits": v, "cpu_seconds": c, "time": 0.0}) for s, v, c in rows]
    (folder / "log.jsonl").write_text("\n".join(lines + ['{"step": 9, "val_nll_bits": null}']) + "\n")
    return folder


def test_equal_cpu_budget_picks_the_last_validation_within_it(tmp_path, capsys):
    fast = _run(tmp_path / "fast", [(100, 5.0, 100.0), (200, 4.5, 210.0), (300, 4.2, 330.0)])
    slow = _run(tmp_path / "slow", [(100, 4.9, 150.0), (200, 4.4, 290.0)])
    assert [e["step"] for e in history(fast)] == [100, 200, 300]  # entries without an NLL are left out
    assert at_budget(history(fast), 300.0)["step"] == 200 and at_budget(history(slow), 100.0) is None
    assert main([str(fast), str(slow)]) == 0  # default budget: the smaller of the two runs' last CPU times
    out = capsys.readouterr().out
    assert "| 290 | 4.500 (step 200) | 4.400 (step 200) |" in out
    assert main([str(fast), str(tmp_path / "missing")]) == 2
