"""tools/pair_reports.py: one method of a quality report paired clip by clip with one of another report."""

import json

import numpy as np
import pytest

from tests.helpers import REPO  # noqa: F401 (puts tools/ on the path)


def report(scores: dict[str, list[float]], seeds=(0, 1)) -> dict:
    files = [f"{i}_x_0.wav" for i in range(len(next(iter(scores.values()))))]
    return {"settings": {"seeds": list(seeds)},
            "per_clip": {label: [{"file": f, "pesq": v, "stoi": None if v is None else v / 4, "lmd_db": 7.0}
                                 for f, v in reversed(list(zip(files, values)))]  # order does not matter
                         for label, values in scores.items()}}


def test_pairs_by_file_and_skips_unscored_clips():
    from pair_reports import pair

    new = report({"A": [3.0, 3.5, None, 2.0, 3.1]})
    old = report({"B": [2.8, 3.6, 3.0, 1.5, 3.0]})
    result = pair(new, old, "A", "B")
    diff = np.array([3.0 - 2.8, 3.5 - 3.6, 2.0 - 1.5, 3.1 - 3.0])[::-1]
    half = 1.96 * diff.std(ddof=1) / 2
    assert result["pesq"]["clips"] == 4 and result["pesq"]["wins"] == 3
    assert result["pesq"]["mean_difference"] == pytest.approx(diff.mean(), abs=1e-12)
    assert result["pesq"]["ci95"] == pytest.approx([diff.mean() - half, diff.mean() + half], abs=1e-12)
    assert result["stoi"]["mean_difference"] == pytest.approx(diff.mean() / 4, abs=1e-12)
    assert result["lmd_db"]["wins"] == 0 and result["lmd_db"]["mean_difference"] == 0
    assert "gpe" not in result  # reports made before the pitch errors: only the metrics both have


def test_lower_is_better_for_distances_and_error_rates():
    from pair_reports import pair

    new, old = report({"A": [3.0, 3.0, 3.0]}), report({"A": [3.0, 3.0, 3.0]})
    for clips, lmd, gpe in ((new, [6.0, 8.0, 6.5], [0.1, 0.3, 0.0]), (old, [7.0, 7.0, 7.0], [0.2, 0.2, 0.2])):
        for clip, d, g in zip(sorted(clips["per_clip"]["A"], key=lambda c: c["file"]), lmd, gpe):
            clip.update(lmd_db=d, gpe=g, vde=g)
    result = pair(new, old, "A", "A")
    assert result["lmd_db"]["wins"] == 2 and result["gpe"]["wins"] == 2 and result["vde"]["wins"] == 2
    assert result["gpe"]["mean_difference"] == pytest.approx(-0.2 / 3, abs=1e-12)


def test_unpairable_reports_are_one_line_errors(tmp_path, capsys):
    from pair_reports import main

    paths = {}
    for name, content in {"a": report({"A": [3.0, 2.0]}), "b": report({"A": [3.0, 2.0, 1.0]}),
                          "c": report({"A": [3.0, 2.0]}, seeds=(0,)), "d": "not json"}.items():
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(content if isinstance(content, str) else json.dumps(content))
    for args, message in [((paths["a"], paths["b"], "A"), "different clips"),
                          ((paths["a"], paths["c"], "A"), "seeds differ"),
                          ((paths["a"], paths["a"], "Z"), "has no method 'Z' (has: A)"),
                          ((paths["a"], paths["d"], "A"), "JSONDecodeError")]:
        assert main([str(a) for a in args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert main([str(paths["a"]), str(paths["a"]), "A"]) == 0
    assert json.loads(capsys.readouterr().out)["pesq"]["mean_difference"] == 0
