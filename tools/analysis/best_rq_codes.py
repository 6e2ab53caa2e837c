"""How a BEST-RQ model's frozen random-projection targets spread over its codebook.

Loads a speechssl BEST-RQ model dir (``final/`` of a run), computes the targets of the first
``--utts`` utterances of a Kaldi data dir (sorted by id) with the model's own fbank front end
and quantizer (``BestRQModel.targets``, first codebook), and prints one JSON line: frames,
codes used, the share of the most frequent code and of the ten most frequent, the code
perplexity, and how quiet the most frequent code's frames are (RMS of the waveform samples of
each target frame's hop, against all frames)::

    python tools/analysis/best_rq_codes.py EXP/best_rq/train/final egs/synth/data/dev --utts 60
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from speechssl.data.kaldi_dir import KaldiDataDir  # noqa: E402
from speechssl.errors import SpeechSSLError  # noqa: E402
from speechssl.models.io import build_from_description, load_weights, read_model_description  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "model_dir", help="a speechssl BEST-RQ model dir (model.json, model.safetensors)"
    )
    ap.add_argument("data_dir", help="a Kaldi data dir (wav.scp)")
    ap.add_argument("--utts", type=int, default=60, help="utterances to read (default 60)")
    ap.add_argument("--quiet-rms", type=float, default=1e-3, help="RMS counted as quiet")
    args = ap.parse_args(argv)
    try:
        desc = read_model_description(args.model_dir)
        model = build_from_description(desc)
        if not hasattr(model, "quantizers"):
            raise SpeechSSLError(f"{args.model_dir}: a {desc['name']} model, not BEST-RQ")
        from safetensors.torch import load_file

        load_weights(
            model, load_file(str(Path(args.model_dir) / "model.safetensors")), args.model_dir
        )
        ddir = KaldiDataDir(args.data_dir)
        utts = ddir.utt_ids()[: args.utts]
        if not utts:
            raise SpeechSSLError(f"{args.data_dir}: no utterances")
        model.eval()
        codes, rms = [], []
        with torch.no_grad():
            for utt in utts:
                wave, _ = ddir.load(utt)
                x = torch.as_tensor(wave, dtype=torch.float32).reshape(1, -1)
                stacked, frames = model.frontend.features(x, torch.tensor([x.shape[1]]))
                c = model.targets(stacked, frames)[0, :, 0]
                hop = max(1, round(x.shape[1] / max(c.shape[0], 1)))
                w = torch.nn.functional.pad(x[0], (0, max(0, c.shape[0] * hop - x.shape[1])))
                rms.append(w[: c.shape[0] * hop].reshape(c.shape[0], hop).pow(2).mean(1).sqrt())
                codes.append(c)
    except (SpeechSSLError, OSError) as exc:
        print(f"best_rq_codes: error: {exc}", file=sys.stderr)
        return 2
    c, r = torch.cat(codes), torch.cat(rms)
    keep = c >= 0
    c, r = c[keep], r[keep]
    k = int(model.quantizers[0].codebook.shape[0])
    p = torch.bincount(c, minlength=k).double() / len(c)
    nz = p[p > 0]
    top = int(p.argmax())
    quiet = r < args.quiet_rms
    print(json.dumps({
        "model": args.model_dir, "data": args.data_dir, "utterances": len(utts),
        "frames": len(c), "codebook": k, "codes_used": int((p > 0).sum()),
        "top1_share": round(float(p.max()), 4),
        "top10_share": round(float(p.sort(descending=True).values[:10].sum()), 4),
        "perplexity": round(float(torch.exp(-(nz * nz.log()).sum())), 1),
        "top_code_quiet_share": round(float(quiet[c == top].float().mean()), 4),
        "top_code_median_rms": float(r[c == top].median()),
        "all_quiet_share": round(float(quiet.float().mean()), 4),
        "quiet_rms": args.quiet_rms,
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
