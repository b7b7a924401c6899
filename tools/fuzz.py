"""Mutation fuzzing of everything the edge runtime reads: WAV files, ``.npy`` mels, manifests, ``.tflite`` graphs
and the CLI's options. Every case must end in a result or a clean error (an ``EdgeError``; for the CLI exit 0, or
exit 2 with one ``error:`` line or click's usage error): anything else counts as a bug, a crash or a hang.

Cases run in worker processes, so a crash of the interpreter (a signal) is caught, counted and the worker
restarted; each case is rebuilt from ``(target, seed, index)`` alone, and failing inputs are saved for replay::

    python tools/fuzz.py --cases 2000 --json fuzz.json --save fuzz-failures
    python tools/fuzz.py --targets tflite --seed 3 --replay 117      # one case, in this process

The seeds of the mutations are real inputs: a shipped example clip, its log-mel, the shipped model folder.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_runtime.errors import EdgeError  # noqa: E402
from edge_runtime.manifest import sha256_file  # noqa: E402
from edge_runtime.synth import Synthesizer, default_model_dir, example_clips  # noqa: E402
from edge_runtime.wavio import read_wav  # noqa: E402

TARGETS = ("wav", "npy", "manifest", "tflite", "cli")
INTERESTING = [0, 1, 0x7F, 0x80, 0xFF]
JSON_VALUES = [None, True, 0, -1, 1, 2**31, 2**64, 1e308, -0.5, "", "x", "../x", "/etc/passwd", [], [1, 2], {}, {"a": 1}]


# ------------------------------------------------------------------------------------------------ mutations
def havoc(data: bytes, rnd: random.Random) -> bytes:
    """AFL-style byte mutations: flips, interesting bytes, deletions, duplications, random inserts, truncation."""
    b = bytearray(data)
    for _ in range(rnd.choice([1, 1, 2, 4, 8, 32])):
        op, pos = rnd.randrange(6), rnd.randrange(max(1, len(b)))
        if op == 0 and b:
            b[pos] ^= 1 << rnd.randrange(8)
        elif op == 1 and b:
            b[pos] = rnd.choice(INTERESTING)
        elif op == 2 and b:
            del b[pos:pos + rnd.randrange(1, 64)]
        elif op == 3 and b:
            b[pos:pos] = b[pos:pos + rnd.randrange(1, 64)]
        elif op == 4:
            b[pos:pos] = rnd.randbytes(rnd.randrange(1, 16))
        elif op == 5 and b and rnd.random() < 0.3:
            del b[rnd.randrange(len(b)):]
        elif b and len(b) >= 4:  # a 32-bit field (sizes, offsets) set to an extreme
            pos = min(pos, len(b) - 4)
            b[pos:pos + 4] = rnd.choice([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, rnd.getrandbits(32)]).to_bytes(4, "little")
    return bytes(b)


def mutate_json(obj, rnd: random.Random):
    """Replaces, deletes or retypes one value somewhere in a JSON document (structure-aware)."""
    obj = json.loads(json.dumps(obj))
    parent, key, node = None, None, obj
    while isinstance(node, (dict, list)) and node and rnd.random() < 0.75:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        parent, key = node, rnd.choice(keys)
        node = node[key]
    if parent is None:
        return rnd.choice(JSON_VALUES)
    if rnd.random() < 0.3 and isinstance(parent, dict):
        del parent[key]
    elif isinstance(node, (int, float)) and not isinstance(node, bool) and rnd.random() < 0.5:
        parent[key] = rnd.choice([node * 2, node + 1, -node, 0, node * 1000])
    else:
        parent[key] = rnd.choice(JSON_VALUES)
    return obj


# ------------------------------------------------------------------------------------------------ targets
class Fuzzer:
    """Holds the seed inputs (read once per worker) and runs one case of a target."""

    def __init__(self, work: Path):
        self.work = work
        self.model = Path(default_model_dir())
        self.clip = example_clips()[0]
        self.wav = self.clip.read_bytes()
        self.synth = Synthesizer.load(self.model)
        self.mel = self.synth.features(read_wav(self.clip)[0])[0]
        buf = io.BytesIO()
        np.save(buf, self.mel)
        self.npy = buf.getvalue()
        self.manifest = json.loads((self.model / "manifest.json").read_text())
        self.folder = work / "model"
        shutil.copytree(self.model, self.folder, dirs_exist_ok=True)
        self.graphs = {name: (self.model / name).read_bytes() for name in ("step.tflite", "conditioner.tflite")}

    def make(self, target: str, rnd: random.Random):
        """The input of one case (bytes, a JSON document or an argv list)."""
        if target == "wav":
            return havoc(self.wav, rnd) if rnd.random() < 0.95 else rnd.randbytes(rnd.randrange(64))
        if target == "npy":
            return havoc(self.npy, rnd)
        if target == "manifest":
            doc = self.manifest
            for _ in range(rnd.choice([1, 1, 2, 3])):
                doc = mutate_json(doc, rnd)
            return json.dumps(doc).encode() if rnd.random() < 0.8 else havoc(json.dumps(doc).encode(), rnd)
        if target == "tflite":
            name = rnd.choice(sorted(self.graphs))
            return {"file": name, "bytes": havoc(self.graphs[name], rnd)}
        return self._argv(rnd)

    def _argv(self, rnd: random.Random) -> list[str]:
        junk = self.work / "junk.bin"
        paths = [str(self.clip), str(self.work / "missing.wav"), str(self.work), str(junk), "", "-"]
        numbers = ["0", "1", "-1", "0.5", "nan", "inf", "-inf", "1e9", "1e-9", "abc", "", str(2**70)]
        options = {
            "--wav": paths, "--mel": [str(self.work / "mel.npy"), *paths], "--seconds": numbers,
            "--speaker": self.synth.manifest.speakers + ["7", "-1", "", "zoë", "0"], "--temperature": numbers,
            "--seed": numbers, "--device": ["cpu", "edgetpu", "edgetpu:usb:0", "gpu", ""], "--threads": numbers,
            "--out": [str(self.work / "out.wav"), str(self.work), str(self.work / "no/dir/out.wav"), ""],
        }
        command = rnd.choice(["synth", "synth", "synth", "info", "eval", "bench"])
        argv = [command]
        if rnd.random() < 0.7:
            argv.append(rnd.choice([str(self.model), str(self.work / "missing"), str(junk), str(self.work)]))
        if command == "eval":
            argv = ["eval", str(self.model), "--data", rnd.choice(paths[:4] + [str(self.clip.parent)])]
        elif command == "bench":
            argv += ["--seconds", rnd.choice(["0.05", "0", "-1", "nan", "x"]), "--runs", rnd.choice(["1", "0", "-3"])]
        elif command == "synth":
            for _ in range(rnd.randrange(5)):
                opt = rnd.choice(list(options) + ["--raw", "--json", "--bogus"])
                argv += [opt] if opt in ("--raw", "--json", "--bogus") else [opt, rnd.choice(options[opt])]
        return argv

    def run(self, target: str, case) -> str:
        """Runs one case: ``accepted`` or ``rejected`` (a clean error); raises on anything else."""
        try:
            if target == "wav":
                path = self.work / "case.wav"
                path.write_bytes(case)
                audio, rate = read_wav(path)
                assert audio.dtype == np.float32 and rate > 0 and np.all(np.abs(audio) <= 1), "bad WAV result"
            elif target == "npy":
                from wavenet_edge.synth_cli import _load_mel

                path = self.work / "case.npy"
                path.write_bytes(case)
                mel = _load_mel(str(path))
                chunk = next(iter(self.synth.stream(mel[:64], seed=0)), np.zeros(0, np.float32))
                assert np.all(np.isfinite(chunk)), "non-finite audio"
            elif target in ("manifest", "tflite"):
                shutil.copy(self.model / "manifest.json", self.folder / "manifest.json")
                for name, data in self.graphs.items():
                    (self.folder / name).write_bytes(data)
                if target == "manifest":
                    (self.folder / "manifest.json").write_bytes(case)
                else:  # a damaged graph whose checksum was updated too: the interpreter itself must cope
                    (self.folder / case["file"]).write_bytes(case["bytes"])
                    doc = dict(self.manifest, files={**self.manifest["files"],
                                                     case["file"]: sha256_file(self.folder / case["file"])})
                    (self.folder / "manifest.json").write_text(json.dumps(doc))
                synth = Synthesizer.load(self.folder)
                chunk = next(iter(synth.stream(self.mel[:32] if synth.use_mel else None, seconds=0.01, seed=0)))
                assert chunk.dtype == np.float32, "bad audio"
            else:
                return self._run_cli(case)
        except EdgeError:
            return "rejected"
        return "accepted"

    def _run_cli(self, argv: list[str]) -> str:
        from wavenet_edge.cli import main

        (self.work / "junk.bin").write_bytes(b"\x00junk" * 10)
        np.save(self.work / "mel.npy", self.mel)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.TextIOWrapper(io.BytesIO())):
            try:
                main.main(argv, prog_name="wavenet-edge", standalone_mode=True)
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
        lines = [line for line in err.getvalue().splitlines() if line.strip()]
        if code == 0:
            return "accepted"
        usage = any(line.startswith("Error: ") for line in lines) and lines[0].startswith("Usage: ")
        one_line = len([line for line in lines if line.startswith("error: ")]) == 1 and lines[-1].startswith("error: ")
        assert code == 2 and (usage or one_line), f"exit {code}: {lines[-3:]}"
        return "rejected"


def case_rng(target: str, seed: int, index: int) -> random.Random:
    """The one source of a case's randomness: replaying (target, seed, index) rebuilds the same input."""
    return random.Random(f"{target}/{seed}/{index}")


# ------------------------------------------------------------------------------------------------ workers
def worker(target: str, seed: int, start: int, stop: int) -> None:
    """Runs cases [start, stop), one protocol line each on the original stdout (the cases' output is dropped)."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # --raw writes audio to stdout: keep it off the protocol
    with tempfile.TemporaryDirectory() as tmp:
        fuzzer = Fuzzer(Path(tmp))
        for i in range(start, stop):
            print(f"START {i}", file=proto)
            try:
                outcome = fuzzer.run(target, fuzzer.make(target, case_rng(target, seed, i)))
            except Exception as e:  # noqa: BLE001 - the point: anything that is not a clean error is a finding
                outcome = "bug " + f"{type(e).__name__}: {e}".replace("\n", " ")[:300]
            print(f"DONE {i} {outcome}", file=proto)


def fuzz_target(target: str, seed: int, cases: int, timeout: float, save: Path | None) -> dict:
    """Runs ``cases`` cases of one target in worker processes; returns the counts and the findings."""
    counts = {"cases": cases, "accepted": 0, "rejected": 0, "bugs": 0, "crashes": 0, "hangs": 0}
    findings, next_case, t0 = [], 0, time.perf_counter()
    while next_case < cases:
        proc = subprocess.Popen([sys.executable, __file__, "--worker", target, "--seed", str(seed), "--start",
                                 str(next_case), "--stop", str(cases)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        current = None
        while True:
            ready, _, _ = select.select([proc.stdout], [], [], timeout if current is not None else 120)
            line = proc.stdout.readline() if ready else None
            if line is None:  # nothing within the timeout: a hang
                proc.kill()
                kind = "hangs"
            elif line == "":  # the worker ended: done, or died inside a case
                proc.wait()
                if current is None and next_case >= cases:
                    break
                if current is None:
                    return {**counts, "error": f"worker failed to start (exit {proc.returncode})"}
                kind = "crashes" if proc.returncode < 0 else "bugs"
            elif line.startswith("START"):
                current = int(line.split()[1])
                continue
            else:
                _, index, outcome = line.rstrip("\n").split(" ", 2)
                if outcome.startswith("bug"):
                    counts["bugs"] += 1
                    findings.append({"case": int(index), "kind": "bug", "message": outcome[4:]})
                else:
                    counts[outcome] += 1
                current, next_case = None, int(index) + 1
                continue
            counts[kind] += 1
            findings.append({"case": current, "kind": kind[:-1], "message": f"exit {proc.returncode}"})
            next_case = current + 1
            break
        proc.wait()
    if save and findings:
        save.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            fuzzer = Fuzzer(Path(tmp))
            for f in findings:
                case = fuzzer.make(target, case_rng(target, seed, f["case"]))
                blob = json.dumps(case).encode() if isinstance(case, list) else case
                blob = case["bytes"] if isinstance(case, dict) else blob
                (save / f"{target}-{seed}-{f['case']}.bin").write_bytes(blob)
    return {**counts, "seconds": round(time.perf_counter() - t0, 1), "findings": findings}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"Comma-separated, of {', '.join(TARGETS)}.")
    parser.add_argument("--cases", type=int, default=200, help="Cases per target.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=30.0, help="Seconds before a case counts as a hang.")
    parser.add_argument("--json", type=Path, help="Write the counts and findings here.")
    parser.add_argument("--save", type=Path, help="Save the inputs of failing cases here.")
    parser.add_argument("--replay", type=int, help="Run this one case in this process (with its traceback).")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--stop", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.seed, args.start, args.stop)
        return 0
    targets = [t for t in args.targets.split(",") if t]
    if unknown := set(targets) - set(TARGETS):
        parser.error(f"unknown targets {sorted(unknown)}")
    if args.replay is not None:
        with tempfile.TemporaryDirectory() as tmp:
            fuzzer = Fuzzer(Path(tmp))
            for t in targets:
                print(t, fuzzer.run(t, fuzzer.make(t, case_rng(t, args.seed, args.replay))))
        return 0
    report = {"seed": args.seed, "targets": {}}
    for t in targets:
        report["targets"][t] = r = fuzz_target(t, args.seed, args.cases, args.timeout, args.save)
        print(f"{t:9s} {r['cases']:6d} cases: {r['accepted']} accepted, {r['rejected']} clean errors, "
              f"{r['bugs']} bugs, {r['crashes']} crashes, {r['hangs']} hangs ({r.get('seconds', 0)} s)", flush=True)
        for f in r.get("findings", [])[:5]:
            print(f"    case {f['case']}: {f['kind']} {f['message']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    bad = sum(r["bugs"] + r["crashes"] + r["hangs"] + ("error" in r) for r in report["targets"].values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
