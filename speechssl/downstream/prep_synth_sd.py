"""Speaker-diarization data from the bundled SYNTHETIC corpus: two-speaker mixtures.

Within each split of the corpus, every utterance is mixed with the next utterance (in
seeded order) of another speaker: the second starts so that the two speakers' speech
overlaps by ``overlap`` (a fraction of the shorter speech span, default 0.2); a negative
value leaves a pause of that fraction instead. A speaker's turn runs from its first to
its last non-silence frame of the synthesizer's alignment (``ali.phones``). The mixer writes
a LibriMix-style Kaldi dir per split (``OUT/kaldi/<split>``: ``wav.scp`` of the mixtures,
``segments``, ``utt2spk``, ``reco2dur``, ``rttm``) and :func:`prepare_diarization` turns
it into the probing dirs ``OUT/{train,dev,test}`` (``utt2activity``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from speechssl.errors import ConfigError

SAMPLE_RATE = 16000
FRAME = 0.01  # the alignment's frame step (s)
SPLITS = ("train", "dev", "test")


def _speech_span(frames: list[str], silence: str = "SIL") -> tuple[float, float] | None:
    idx = [i for i, p in enumerate(frames) if p != silence]
    return (idx[0] * FRAME, (idx[-1] + 1) * FRAME) if idx else None


def prepare_synth_sd(
    corpus: str | os.PathLike[str], out: str | os.PathLike[str], *, seed: int = 0,
    overlap: float = 0.2,
) -> dict[str, int]:  # fmt: skip
    """Write the mixtures and ``out/{train,dev,test}``; returns mixtures per split."""
    import soundfile as sf

    from speechssl.data.kaldi_dir import Segment, write_data_dir
    from speechssl.data.prep.diarization import prepare_diarization
    from speechssl.data.synth.alignment import read_alignments
    from speechssl.data.tables import read_table
    from speechssl.utils.atomic import atomic_dir, atomic_write_text

    if not -1.0 <= overlap < 1.0:
        raise ConfigError(f"overlap={overlap}: must be in [-1, 1)")
    root, out = Path(corpus), Path(out)
    counts: dict[str, int] = {}
    for split in SPLITS:
        d = root / split
        for name in ("wav.scp", "utt2spk", "ali.phones"):
            if not (d / name).is_file():
                raise ConfigError(f"{d}: no {name} (not a bundled synth corpus split)")
        scp, u2s = read_table(d / "wav.scp"), read_table(d / "utt2spk")
        ali = read_alignments(d / "ali.phones")
        utts = sorted(scp, key=lambda u: hashlib.sha256(f"{seed}:{u}".encode()).hexdigest())
        spans = {u: _speech_span(ali[u]) for u in utts if u in ali}
        utts = [u for u in utts if spans.get(u) is not None]
        if len({u2s[u] for u in utts}) < 2:
            raise ConfigError(f"{d}: fewer than 2 speakers, no two-speaker mixture possible")
        wav: dict[str, str] = {}
        reco2dur: dict[str, float] = {}
        segs: dict[str, Segment] = {}
        seg2spk: dict[str, str] = {}
        rttm: list[str] = []
        wav_dir = out / "wav" / split
        with atomic_dir(wav_dir, overwrite=True) as tmp:
            for i, first in enumerate(utts):
                second = next(u for u in utts[i + 1 :] + utts[:i] if u2s[u] != u2s[first])
                a, _ = sf.read(scp[first], dtype="float32")
                b, _ = sf.read(scp[second], dtype="float32")
                sa, sb = spans[first], spans[second]
                assert sa is not None and sb is not None
                shorter = min(sa[1] - sa[0], sb[1] - sb[0])
                # b's speech starts where a's ends, moved back by the overlap; whichever
                # would start before 0 s stays at 0 and the other is delayed
                offset = sa[1] - overlap * shorter - sb[0]
                off_a, off_b = max(0.0, -offset), max(0.0, offset)
                shift_a, shift_b = round(off_a * SAMPLE_RATE), round(off_b * SAMPLE_RATE)
                mix = np.zeros(max(shift_a + len(a), shift_b + len(b)), dtype=np.float64)
                mix[shift_a : shift_a + len(a)] += a
                mix[shift_b : shift_b + len(b)] += b
                mix = mix / (np.abs(mix).max() + 1e-9) * 0.5
                reco = f"mix-{first}-{second}"
                sf.write(tmp / f"{reco}.wav", mix.astype(np.float32), SAMPLE_RATE,
                         subtype="PCM_16")  # fmt: skip
                wav[reco] = str((wav_dir / f"{reco}.wav").resolve())
                reco2dur[reco] = len(mix) / SAMPLE_RATE
                for spk, (start, end) in (
                    (u2s[first], (sa[0] + shift_a / SAMPLE_RATE, sa[1] + shift_a / SAMPLE_RATE)),
                    (u2s[second], (sb[0] + shift_b / SAMPLE_RATE, sb[1] + shift_b / SAMPLE_RATE)),
                ):
                    seg = f"{reco}-{spk}"
                    segs[seg] = Segment(reco, start, end)
                    seg2spk[seg] = spk
                    rttm.append(
                        f"SPEAKER {reco} 1 {start:.3f} {end - start:.3f} <NA> <NA> {spk} <NA> <NA>"
                    )
        kdir = out / "kaldi" / split
        write_data_dir(
            kdir, wav_scp=wav, utt2spk=seg2spk, segments=segs, reco2dur=reco2dur,
        )  # fmt: skip
        atomic_write_text(kdir / "rttm", "\n".join(rttm) + "\n")
        counts[split] = len(wav)
    prepare_diarization(out / "kaldi", out)
    return counts
