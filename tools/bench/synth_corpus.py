"""Benchmark ``speechssl data synth``: wall and CPU seconds to generate the bundled corpus.

Runs the command in a fresh process per case (so torch import and worker start-up count, as
for a user) into a temporary folder and prints one JSON line per case with the median of
``--repeats`` runs::

    python tools/bench/synth_corpus.py --hours 1 --nj 1,2 --repeats 3
    python tools/bench/synth_corpus.py --hours 0.05 --repeats 1 --noise   # quick

``seconds`` is wall time; ``cpu_seconds`` is user+system time of the run and its workers
(less sensitive to a busy machine); ``realtime_factor`` is hours of audio made per hour of
wall time. There is no peer: no other tool makes this corpus.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_case(hours: float, nj: int, noise: bool, reverb: bool, seed: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-synth-") as tmp:
        out = Path(tmp) / "corpus"
        cmd = [sys.executable, "-m", "speechssl.cli", "data", "synth", "--out", str(out)]
        cmd += ["--hours", str(hours), "--nj", str(nj), "--seed", str(seed), "--json"]
        cmd += ["--noise"] * noise + ["--reverb"] * reverb
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        n_utts = sum(int(s["utterances"]) for s in summary["splits"].values())
        return {"seconds": seconds, "cpu_seconds": cpu, "hours": summary["hours"], "utts": n_utts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hours", type=float, default=1.0, help="corpus size (default 1.0)")
    parser.add_argument("--nj", default="2", help="comma-separated worker counts (default 2)")
    parser.add_argument("--noise", action="store_true", help="with --noise")
    parser.add_argument("--reverb", action="store_true", help="with --reverb")
    parser.add_argument("--repeats", type=int, default=3, help="runs per case (median)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for nj in (int(x) for x in args.nj.split(",")):
        runs = [
            run_case(args.hours, nj, args.noise, args.reverb, args.seed)
            for _ in range(args.repeats)
        ]
        seconds = statistics.median(r["seconds"] for r in runs)
        print(
            json.dumps(
                {
                    "what": "data synth",
                    "device": "cpu",
                    "nj": nj,
                    "noise": args.noise,
                    "reverb": args.reverb,
                    "hours": runs[0]["hours"],
                    "utterances": runs[0]["utts"],
                    "seconds": round(seconds, 2),
                    "cpu_seconds": round(statistics.median(r["cpu_seconds"] for r in runs), 2),
                    "realtime_factor": round(runs[0]["hours"] * 3600 / seconds, 1),
                    "repeats": args.repeats,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
