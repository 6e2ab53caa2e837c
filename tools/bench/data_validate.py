"""Benchmark ``speechssl data validate`` on big generated data dirs: seconds and peak RSS.

Generates a valid data dir of N utterances (wav.scp, text, utt2spk, spk2utt, utt2dur;
100 utterances per speaker) in a temporary folder, every wav.scp entry pointing into a
small pool of real WAV files so audio checks pass, then runs the validate command in a fresh
process per case and prints one JSON line per case (median of ``--repeats`` runs)::

    python tools/bench/data_validate.py --sizes 100000,1000000
    python tools/bench/data_validate.py --sizes 10000 --levels fast --repeats 1   # quick

``seconds`` is wall time, ``cpu_seconds`` user+system time of the run and its workers (less
sensitive to a busy machine). Peak RSS is that of the largest process of the run (``wait4``'s ``ru_maxrss``). There is no
peer: Kaldi's ``validate_data_dir.sh`` needs a Kaldi checkout, which is not installed here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

POOL = 64
UTTS_PER_SPEAKER = 100


def generate(root: Path, n: int) -> Path:
    """Write a valid n-utterance data dir under ``root``; returns its path."""
    audio = root / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pool: list[tuple[str, float]] = []
    for i in range(POOL):
        frames = 8000 + 160 * i
        path = audio / f"pool{i:03d}.wav"
        sf.write(str(path), (0.1 * rng.standard_normal(frames)).astype(np.float32), 16000)
        pool.append((str(path), frames / 16000))
    ddir = root / "data"
    ddir.mkdir(exist_ok=True)
    words = ["ALPHA", "BRAVO", "CHARLIE", "DELTA", "ECHO", "FOXTROT", "GOLF", "HOTEL"]
    nspk = (n + UTTS_PER_SPEAKER - 1) // UTTS_PER_SPEAKER
    with (
        open(ddir / "wav.scp", "w") as wav,
        open(ddir / "text", "w") as text,
        open(ddir / "utt2spk", "w") as u2s,
        open(ddir / "utt2dur", "w") as u2d,
        open(ddir / "spk2utt", "w") as s2u,
    ):
        i = 0
        for s in range(nspk):
            spk = f"spk{s:06d}"
            utts = []
            for u in range(min(UTTS_PER_SPEAKER, n - i)):
                utt = f"{spk}-{u:04d}"
                wav_path, dur = pool[i % POOL]
                wav.write(f"{utt} {wav_path}\n")
                text.write(f"{utt} {' '.join(words[(i + k) % 8] for k in range(6))}\n")
                u2s.write(f"{utt} {spk}\n")
                u2d.write(f"{utt} {dur:.4f}\n")
                utts.append(utt)
                i += 1
            s2u.write(f"{spk} {' '.join(utts)}\n")
    return ddir


def run_case(
    ddir: Path, level: str, nj: int, audio_sample: int | None
) -> tuple[float, float, float, bool]:
    cmd = [sys.executable, "-m", "speechssl", "data", "validate", str(ddir), "--nj", str(nj)]
    if level != "default":
        cmd.append(f"--{level}")
    if audio_sample is not None:
        cmd += ["--audio-sample", str(audio_sample)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        # wait4 (not Popen.wait) so the child's resource usage comes back with it
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        ok = proc.returncode == 0
        if not ok:
            out.seek(0)
            sys.stderr.write(out.read().decode()[-3000:])
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0, ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000", help="utterance counts, comma-separated")
    ap.add_argument("--levels", default="fast,default", help="validate levels to time")
    ap.add_argument("--nj", default="1,2", help="process counts for the audio checks")
    ap.add_argument("--audio-sample", type=int, default=None, help="passed to validate")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default=None, help="where to generate (default: a temp dir)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for n in (int(x) for x in args.sizes.split(",")):
            t0 = time.perf_counter()
            ddir = generate(Path(tmp) / f"n{n}", n)
            gen_s = time.perf_counter() - t0
            for level in args.levels.split(","):
                for nj in [1] if level == "fast" else [int(x) for x in args.nj.split(",")]:
                    runs = [
                        run_case(ddir, level, nj, args.audio_sample) for _ in range(args.repeats)
                    ]
                    print(
                        json.dumps(
                            {
                                "what": "data validate",
                                "device": "cpu",
                                "level": level,
                                "nj": nj,
                                "utterances": n,
                                "audio_sample": args.audio_sample,
                                "seconds": round(statistics.median(r[0] for r in runs), 3),
                                "cpu_seconds": round(statistics.median(r[1] for r in runs), 3),
                                "peak_rss_mb": round(max(r[2] for r in runs), 1),
                                "ok": all(r[3] for r in runs),
                                "repeats": args.repeats,
                                "generate_seconds": round(gen_s, 2),
                                "ours": "speechssl data validate",
                                "peer": None,
                            }
                        ),
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
