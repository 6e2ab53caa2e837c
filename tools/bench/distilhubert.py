"""DistilHuBERT student vs its teacher: parameters and inference time, same process.

The teacher is a speechssl model dir (``--teacher DIR``) or, by default, a randomly
initialised ``hubert_base`` (12 layers of 768: the paper's setting; weights do not change
the speed). The student is built from it as ``speechssl-train model=distilhubert_*
model.teacher=DIR`` builds it (its conv stack, 2 layers, heads for the default target
layers). Both run ``extract`` (all hidden states, eval mode, no grad) on the same random
batch, alternating, and one JSON line per case is printed: median seconds of ``--repeats``
runs of the student (``ours``) and the teacher (``peer``), their ratio, parameter counts
(the student's with and without its prediction heads) and the batch size::

    python tools/bench/distilhubert.py                      # hubert_base teacher, CPU
    python tools/bench/distilhubert.py --teacher egs/synth/hubert/exp/hubert/iter2/train/final
    python tools/bench/distilhubert.py --device cuda --batch 8 --seconds 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def _params(module: torch.nn.Module, skip: str = "") -> int:
    return sum(p.numel() for n, p in module.named_parameters() if not (skip and n.startswith(skip)))


def _timed(fn, device: torch.device) -> float:  # type: ignore[no-untyped-def]
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    from speechssl.models import create_model
    from speechssl.models.distilhubert import init_student_from_teacher, student_overrides
    from speechssl.models.io import load_model_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="", help="teacher model dir (default: hubert_base)")
    parser.add_argument("--student", default="", help="student preset (default: by size)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    teacher = load_model_dir(args.teacher) if args.teacher else create_model("hubert_base")
    dim = teacher.config.encoder.dim
    name = args.student or ("distilhubert_base" if dim >= 768 else "distilhubert_tiny")
    student = create_model(name, **student_overrides(teacher))
    init_student_from_teacher(student, teacher)  # type: ignore[arg-type]
    teacher.to(device).eval()
    student.to(device).eval()
    waves = 0.1 * torch.randn(args.batch, round(args.seconds * 16000), device=device)
    lengths = torch.full((args.batch,), waves.shape[1], device=device)
    times: dict[str, list[float]] = {"student": [], "teacher": []}
    with torch.inference_mode():
        student.extract(waves, lengths), teacher.extract(waves, lengths)  # warm-up
        for _ in range(args.repeats):
            times["student"].append(_timed(lambda: student.extract(waves, lengths), device))
            times["teacher"].append(_timed(lambda: teacher.extract(waves, lengths), device))
    ours, peer = statistics.median(times["student"]), statistics.median(times["teacher"])
    print(
        json.dumps(
            {
                "what": "distilhubert_extract",
                "device": str(device),
                "teacher": args.teacher or "hubert_base (random weights)",
                "student": name,
                "ours": round(ours, 5),
                "peer": round(peer, 5),
                "ratio": round(ours / peer, 4),
                "speedup": round(peer / ours, 3),
                "teacher_layers": teacher.config.encoder.num_layers,
                "student_layers": student.config.encoder.num_layers,
                "teacher_params": _params(teacher),
                "student_params": _params(student),
                "student_params_without_heads": _params(student, "heads."),
                "batch": args.batch,
                "seconds_per_utt": args.seconds,
                "repeats": args.repeats,
            }
        )
    )


if __name__ == "__main__":
    main()
