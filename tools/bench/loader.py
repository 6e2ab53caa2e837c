"""Loader throughput of the on-the-fly fbank front end: audio-seconds per second per worker.

What a data-loader worker of a fbank-input model (w2v-BERT / Fast-HuBERT style) does per
utterance: read it from a Kaldi data dir (``speechssl.train.data.KaldiAudioReader``, i.e.
soundfile through ``speechssl.data``), scale to the int16 range and compute the front end's
80-dim Kaldi fbank (``FbankStackConfig().fbank_options()``). Each pass runs a
``torch.utils.data.DataLoader`` with ``--workers`` worker processes over all utterances,
once per backend, the backends interleaved pass by pass (``read-only``: loading alone;
``auto``: what the library picks in a worker, the fused numba kernels on one thread;
``torch``: the reference torch path), so machine drift hits every side alike. Medians of
``--repeats`` passes after one warm-up pass (worker start-up, numba's cached kernels).

``audio_s_per_s_per_worker = audio seconds / median pass seconds / workers``;
``ratio`` is torch-path time / ours (> 1: ours is faster); ``fbank_share`` is the part of
the ``auto`` pass not spent reading audio.

The corpus is written by the script: ``--utts`` utterances of ``--min-seconds`` to
``--max-seconds`` (a speech-like harmonic signal plus noise, 16 kHz int16 FLAC files in a
Kaldi data dir), or ``--data-dir`` to use an existing one.

    OMP_NUM_THREADS=2 python tools/bench/loader.py --workers 1 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from speechssl.features import compute_features, kaldi  # noqa: E402
from speechssl.features.kaldi import Backend  # noqa: E402
from speechssl.frontends.fbank_stack import FbankStackConfig  # noqa: E402
from speechssl.train.data import KaldiAudioReader  # noqa: E402

RATE = 16000
BACKENDS = ("read-only", "auto", "torch")


class FbankItems(torch.utils.data.Dataset[int]):
    """Utterance ``i`` -> its fbank frame count (the features themselves stay in the worker,
    so the pass measures loading + features, not inter-process copies)."""

    def __init__(self, data_dir: str, utt_ids: list[str], backend: str) -> None:
        self.reader = KaldiAudioReader(data_dir, RATE)
        self.utt_ids = utt_ids
        self.backend = backend
        self.opts = FbankStackConfig().fbank_options()

    def __len__(self) -> int:
        return len(self.utt_ids)

    def __getitem__(self, index: int) -> int:
        wave = torch.from_numpy(self.reader(self.utt_ids[index])).float() * 32768.0
        if self.backend == "read-only":
            return int(wave.numel())
        feats, _ = compute_features(
            wave.unsqueeze(0), None, self.opts, backend=cast(Backend, self.backend)
        )
        return int(feats.shape[1])


def worker_backend(_: int) -> str:
    """The backend ``auto`` picks inside a worker (one torch thread there)."""
    opts = FbankStackConfig().fbank_options()
    return f"{kaldi.select_backend(torch.zeros(1, RATE), opts)} threads={torch.get_num_threads()}"


def write_corpus(root: Path, utts: int, lo: float, hi: float, seed: int) -> float:
    rng = np.random.default_rng(seed)
    (root / "wav").mkdir(parents=True)
    lines, total = [], 0.0
    for i in range(utts):
        n = int(rng.uniform(lo, hi) * RATE)
        t = np.arange(n) / RATE
        x = sum(np.sin(2 * np.pi * 130 * k * t) / k for k in range(1, 12))
        x = np.clip(3000 * x + 300 * rng.standard_normal(n), -32768, 32767).astype(np.int16)
        path = root / "wav" / f"u{i:04d}.flac"
        sf.write(path, x, RATE, subtype="PCM_16")
        lines.append(f"u{i:04d} {path}\n")
        total += n / RATE
    (root / "wav.scp").write_text("".join(lines))
    (root / "utt2spk").write_text("".join(f"u{i:04d} s0\n" for i in range(utts)))
    (root / "spk2utt").write_text("s0 " + " ".join(f"u{i:04d}" for i in range(utts)) + "\n")
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--data-dir", help="an existing Kaldi data dir (16 kHz) instead of the synthetic one"
    )
    ap.add_argument("--utts", type=int, default=48)
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--max-seconds", type=float, default=20.0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or str(Path(tmp) / "data")
        if args.data_dir is None:
            write_corpus(Path(data_dir), args.utts, args.min_seconds, args.max_seconds, args.seed)
        utt_ids = [
            line.split(maxsplit=1)[0] for line in Path(data_dir, "wav.scp").read_text().splitlines()
        ]
        audio_s = sum(
            sf.info(line.split(maxsplit=1)[1]).duration
            for line in Path(data_dir, "wav.scp").read_text().splitlines()
        )
        loaders = {}
        for backend in BACKENDS:
            loaders[backend] = torch.utils.data.DataLoader(
                FbankItems(data_dir, utt_ids, backend),
                batch_size=None,
                num_workers=args.workers,
                persistent_workers=True,
                prefetch_factor=4,
            )
        probe: Any = torch.utils.data.DataLoader(
            list(range(1)),  # type: ignore[arg-type]
            batch_size=None,
            num_workers=1,
            collate_fn=worker_backend,  # type: ignore[arg-type]
        )
        in_worker = next(iter(probe))
        times: dict[str, list[float]] = {b: [] for b in BACKENDS}
        for rep in range(args.repeats + 1):
            for backend, loader in loaders.items():
                start = time.perf_counter()
                for _ in loader:
                    pass
                if rep:  # the first pass warms up
                    times[backend].append(time.perf_counter() - start)
        med = {b: statistics.median(t) for b, t in times.items()}
        record: dict[str, Any] = {
            "what": "fbank loader (w2v-BERT front end in data-loader workers)",
            "device": "cpu",
            "workers": args.workers,
            "auto_in_worker": in_worker,
            "utterances": len(utt_ids),
            "audio_s": round(audio_s, 2),
            "repeats": args.repeats,
            "pass_s": {b: round(v, 4) for b, v in med.items()},
            "audio_s_per_s_per_worker": {
                b: round(audio_s / v / args.workers, 1) for b, v in med.items()
            },
            "ratio": round(med["torch"] / med["auto"], 2),
            "ratio_fbank_only": round(
                (med["torch"] - med["read-only"]) / max(med["auto"] - med["read-only"], 1e-9), 2
            ),
            "fbank_share": round(1 - med["read-only"] / med["auto"], 2),
        }
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
