"""Instructions per generated sample of the whole streaming loop, by part, on XNNPACK's AVX2 code path.

    python tools/callgrind_profile.py MODEL_DIR [--samples 1600,6400] [--code CHECKOUT] [--json OUT.json]

Why valgrind: its virtual CPU reports AVX2 and FMA but no AVX-512, VNNI or AMX, so on any x86-64 host XNNPACK
dispatches the kernels it runs on AVX2-class CPUs (the JSON lists the kernels that ran, e.g.
``xnn_qd8_f32_qc8w_gemm_minmax_ukernel_1x8c8__avx2``). Callgrind counts executed instructions: deterministic and
independent of other load on the machine, but not time (cache misses and IPC are not in it).

Each mode runs at two lengths; the difference divided by the extra samples is the per-sample cost with loading
and warm-up cancelled out. Modes: ``full`` (the streaming loop), ``noinvoke`` (the step graph's invoke replaced
by a no-op: Python, numpy and the conditioner), ``cond`` (the conditioner alone). glibc is told not to use
``rep movsb`` for copies: callgrind counts each of its byte iterations as an instruction.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "GLIBC_TUNABLES": "glibc.cpu.x86_rep_movsb_threshold=4294967295",
       "OPENBLAS_NUM_THREADS": "1"}  # idle BLAS worker threads spin, and callgrind counts every thread

WORKLOAD = r"""
import sys
import numpy as np
from edge_runtime.bench import bench_mel
from edge_runtime.synth import Synthesizer

model, n, mode, engine = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
try:
    synth = Synthesizer.load(model, engine=engine)
except TypeError:  # code from before the native engine (commit 5137058 and older): LiteRT only
    synth = Synthesizer.load(model)
hop = synth.config["hop_length"]
second = bench_mel(synth, 1.0)
mel = np.tile(second, (n // hop // second.shape[0] + 1, 1))[: max(1, n // hop)]
speaker = 0 if synth.use_speaker else None
if mode == "cond":
    synth.reset(speaker)
    try:
        chunks = synth.conditioner.stream(mel, copy=False)  # as the synthesizer uses it
    except TypeError:  # code from before copy=False (commit 5137058)
        chunks = synth.conditioner.stream(mel)
    sum(c.shape[0] for c in chunks)
else:
    if mode == "noinvoke":
        synth._invoke = lambda: None
    sum(c.shape[0] for c in synth.stream(mel, speaker=speaker, seed=1, temperature=0.5))
"""

PARTS = [  # (part, regex on the function name or object), first match wins
    ("native engine: int8/float products", r"^gemv_"),
    ("native engine: loop, input quantization, gate, argmax",
     r"_stepkernel|^Engine_|^step$|^matvec$|^(gate|quantize|argmax|finish|dequantize)_(avx2|c)$"),
    ("FC kernels (XNNPACK gemm)", r"gemm.*ukernel|ukernel.*gemm"),
    ("other XNNPACK kernels (tanh, sigmoid, add, mul, copy, quantize)", r"ukernel"),
    ("XNNPACK operator dispatch and input packing", r"xnn|pthreadpool|pack_lh"),
    ("LiteRT interpreter and reference kernels (SPLIT, ...)", r"tflite|litert|ruy|Eigen"),
    ("numpy (noise, gathers, argmax, copies)", r"numpy|_multiarray|_generator|_pcg64|random"),
    ("Python interpreter", r"libpython|python3\.\d+$|ceval|Objects/|Python/"),
    ("libc (memcpy, malloc)", r"libc\.so|libm\.so|ld-linux|memmove|memcpy|malloc"),
]


def run_callgrind(code: Path, model: str, samples: int, mode: str, out: Path, engine: str) -> None:
    script = out.with_suffix(".py")
    script.write_text(WORKLOAD)
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(code), ENV.get("PYTHONPATH", "")])}
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, str(script),
                    model, str(samples), mode, engine], env=env, check=True, capture_output=True)


def exclusive(path: Path) -> dict[tuple[str, str], int]:
    """Instructions per (function, object) of one callgrind output."""
    text = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", "--auto=no", str(path)],
                          capture_output=True, text=True, check=True).stdout
    rows: dict[tuple[str, str], int] = defaultdict(int)
    for line in text.splitlines():
        # "COUNT (PCT)  FILE:FUNCTION [OBJECT]"; code inlined from a header (compiler intrinsics) has no object
        m = re.match(r"\s*([\d,]+) \([^)]*\)\s+(.*?)(?: \[(.*)\])?\s*$", line)
        if m and ":" in m.group(2):
            rows[(m.group(2).split(":", 1)[-1], m.group(3) or "")] += int(m.group(1).replace(",", ""))
    return rows


def part_of(func: str, obj: str) -> str:
    for name, pattern in PARTS:
        if re.search(pattern, func) or re.search(pattern, obj.rsplit("/", 1)[-1]):
            return name
    return "other"


def profile(model: str, n1: int, n2: int, code: Path = REPO, jobs: int = 2, stages: bool = True,
            engine: str = "litert") -> dict:
    modes = ("full", "noinvoke", "cond") if stages else ("full",)
    with tempfile.TemporaryDirectory() as tmp:
        runs = [(mode, n) for mode in modes for n in (n1, n2)]
        paths = {r: Path(tmp) / f"cg.{r[0]}.{r[1]}" for r in runs}
        with ThreadPoolExecutor(jobs) as pool:
            list(pool.map(lambda r: run_callgrind(code, model, r[1], r[0], paths[r], engine), runs))
        tables = {r: exclusive(p) for r, p in paths.items()}
    per = {}
    for mode in modes:
        a, b = tables[(mode, n1)], tables[(mode, n2)]
        per[mode] = {k: (b.get(k, 0) - a.get(k, 0)) / (n2 - n1) for k in set(a) | set(b)}
    full = per["full"]
    total = sum(full.values())
    parts: dict[str, float] = defaultdict(float)
    for (func, obj), v in full.items():
        parts[part_of(func, obj)] += v
    loop = sum(per["noinvoke"].values()) if stages else 0.0
    cond = sum(per["cond"].values()) if stages else 0.0
    kernels = sorted({f for (f, _), v in full.items() if "ukernel" in f and v > 0})
    top = sorted(full.items(), key=lambda kv: -kv[1])[:15]
    return {"model": model, "code": str(code), "engine": engine, "samples": [n1, n2],
            "instructions_per_sample": round(total),
            "by_stage": None if not stages else {
                "step graph invoke": round(total - loop), "conditioner graph": round(cond),
                "Python + numpy loop (ring buffer, noise, sampling, copies)": round(loop - cond)},
            "by_part": {k: round(v) for k, v in sorted(parts.items(), key=lambda kv: -kv[1])},
            "xnnpack_kernels": kernels,
            "top_functions": [{"function": f[:120], "object": o.rsplit("/", 1)[-1], "per_sample": round(v)}
                              for (f, o), v in top]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--samples", default="1600,6400", help="the two lengths whose difference is measured")
    parser.add_argument("--code", default=str(REPO), help="the checkout whose edge_runtime runs (an older version)")
    parser.add_argument("--json", default=None, help="write the result here")
    parser.add_argument("--total-only", action="store_true", help="only the whole loop (a third of the runs)")
    parser.add_argument("--engine", default="litert", choices=["litert", "native", "auto"],
                        help="the step loop (the stages need litert: they replace the step graph's invoke)")
    args = parser.parse_args()
    if args.engine != "litert" and not args.total_only:
        parser.error("--engine native|auto measures the whole loop only: add --total-only")
    n1, n2 = (int(s) for s in args.samples.split(","))
    result = profile(str(Path(args.model).resolve()), n1, n2, Path(args.code).resolve(), stages=not args.total_only,
                     engine=args.engine)
    text = json.dumps(result, indent=1)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
