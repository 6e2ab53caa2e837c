"""`speechssl data synth`: synthesize the bundled multi-speaker English corpus (eSpeak NG)."""

from __future__ import annotations

import argparse
import json


def add_verbs(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "synth",
        help="synthesize the bundled eSpeak NG corpus (train/dev/test Kaldi data dirs)",
        description=(
            "Synthesize a multi-speaker English corpus with eSpeak NG: train/dev/test Kaldi "
            "data dirs split by speaker, 16 kHz 16-bit wavs, frame-level phone alignments "
            "(ali.phones, phones.txt) and keyword labels (utt2keyword). Deterministic given "
            "--seed (any --nj). A rerun with the same settings is a no-op."
        ),
    )
    p.add_argument("--out", required=True, help="corpus directory to create")
    p.add_argument("--hours", type=float, default=1.0, help="hours of audio (default 1.0)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--nj", type=int, default=1, help="worker processes (default 1)")
    p.add_argument(
        "--num-speakers", type=int, default=40, help="speakers over all splits (default 40)"
    )
    p.add_argument(
        "--noise",
        action="store_true",
        help="add white/pink/babble noise to 80%% of utterances (SNR --snr-min..--snr-max)",
    )
    p.add_argument("--snr-min", type=float, default=5.0, help="lowest SNR in dB (default 5)")
    p.add_argument("--snr-max", type=float, default=20.0, help="highest SNR in dB (default 20)")
    p.add_argument(
        "--reverb",
        action="store_true",
        help="convolve 50%% of utterances with a synthetic room response (RT60 0.2-0.8 s)",
    )
    p.add_argument(
        "--no-noise-floor",
        action="store_true",
        help="leave out the faint noise floor (60 dB below speech); silences become digital zero",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out if it holds a corpus made with other settings",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run_synth)


def run_synth(args: argparse.Namespace) -> int:
    from speechssl.data.synth import SpeakerConfig, SynthCorpusConfig, make_corpus

    config = SynthCorpusConfig(
        hours=args.hours,
        speakers=SpeakerConfig(num_speakers=args.num_speakers),
        noise=args.noise,
        snr_db=(args.snr_min, args.snr_max),
        reverb=args.reverb,
        noise_floor_snr=None if args.no_noise_floor else SynthCorpusConfig.noise_floor_snr,
    )
    summary = make_corpus(
        args.out, seed=args.seed, nj=args.nj, config=config, overwrite=args.overwrite
    )
    if args.json:
        print(
            json.dumps(
                {
                    "out": str(summary.out_dir),
                    "seed": summary.seed,
                    "hours": round(summary.hours, 6),
                    "splits": summary.splits,
                    "seconds": round(summary.seconds_taken, 3),
                    "reused": summary.reused,
                }
            )
        )
        return 0
    state = "up to date" if summary.reused else f"written in {summary.seconds_taken:.1f} s"
    print(
        f"{summary.out_dir}: {summary.hours:.3f} h of SYNTHETIC speech, seed {summary.seed}, {state}"
    )
    for split, info in summary.splits.items():
        print(
            f"  {split:5s} {int(info['utterances']):6d} utterances {info['hours']:8.3f} h "
            f"{int(info['speakers']):4d} speakers"
        )
    return 0
