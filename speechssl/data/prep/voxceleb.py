"""VoxCeleb1 -> speaker identification (SID) and verification (ASV) data dirs (SUPERB).

The real layout (``ROOT`` holds ``wav/``; the two archives' ``vox1_dev_wav/wav`` and
``vox1_test_wav/wav`` are also found, or ``ROOT`` may be the ``wav`` folder itself)::

    ROOT/wav/<speaker: id1NNNN>/<youtube video id>/<NNNNN>.wav     16 kHz mono
    ROOT/iden_split.txt      "<1|2|3> id10003/na8-QEFmj44/00003.wav"   1/2/3 = train/dev/test
    ROOT/veri_test.txt       "<1|0> <enroll wav> <test wav>"            1 = same speaker

Utterance ids are ``<speaker>-<video>-<NNNNN>`` (speaker first, so ``utt2spk`` sorts both
ways), ``utt2spk`` maps to the speaker id (the SID class).

- SID (:func:`prepare_voxceleb1_sid`): ``OUT/{train,dev,test}`` from ``iden_split.txt``;
  every listed file must exist and every wav on disk must be listed.
- ASV (:func:`prepare_voxceleb1_asv`): ``OUT/test`` holds the utterances of the trial list
  and ``trials`` in Kaldi's format (``<enroll-utt> <test-utt> target|nontarget``);
  ``OUT/train`` every utterance of the speakers that no trial names (VoxCeleb1's dev part);
  ``OUT/dev`` the last ``dev_speakers`` of those speakers, held out of train, with seeded
  trials (per utterance one target and one non-target) to pick the learning rate on.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

from speechssl.data.audio import AudioError, AudioSource, probe
from speechssl.data.prep.common import (
    CorpusError,
    MalformedTranscriptError,
    MissingAudioError,
    PrepResult,
    ProblemCollector,
    write_prepared,
)

_REL = re.compile(r"^([^/\s]+)/([^/\s]+)/([^/\s]+)\.wav$")
SID_SPLITS = {"1": "train", "2": "dev", "3": "test"}


class UnlistedAudioError(CorpusError):
    """A wav file on disk is not in the split list."""

    kind = "unlisted"


@dataclass
class _Wav:
    utt: str
    spk: str
    path: Path


def utt_id(rel: str) -> str:
    """``id10270/x6uYqmx31kE/00001.wav`` -> ``id10270-x6uYqmx31kE-00001``."""
    m = _REL.match(rel)
    if m is None:
        raise ValueError(rel)
    return f"{m[1]}-{m[2]}-{m[3]}"


def _wav_roots(root: Path) -> list[Path]:
    found = [
        d
        for d in (root / "wav", root / "vox1_dev_wav" / "wav", root / "vox1_test_wav" / "wav")
        if d.is_dir()
    ]
    if not found and any(p.is_dir() and p.name.startswith("id") for p in root.iterdir()):
        found = [root]
    if not found:
        raise CorpusError(
            str(root),
            "no VoxCeleb1 audio: looked for wav/, vox1_dev_wav/wav/, vox1_test_wav/wav/ "
            "and id*/ folders",
        )
    return found


def scan_wavs(root: Path, collect: ProblemCollector) -> dict[str, _Wav]:
    """Every ``<spk>/<video>/<n>.wav`` under the wav roots, by relative path."""
    wavs: dict[str, _Wav] = {}
    for wav_root in _wav_roots(root):
        for path in sorted(wav_root.glob("*/*/*.wav")):
            rel = path.relative_to(wav_root).as_posix()
            if rel in wavs:
                collect.bad(
                    CorpusError(rel, f"found twice: {wavs[rel].path} and {path}", str(path))
                )
                continue
            wavs[rel] = _Wav(utt_id(rel), path.parent.parent.name, path)
    return wavs


def _read_list(path: Path, fields: int, collect: ProblemCollector) -> list[tuple[int, list[str]]]:
    if not path.is_file():
        raise CorpusError(str(path), "list file not found")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != fields or any(_REL.match(p) is None for p in parts[1:]):
                collect.bad(
                    MalformedTranscriptError(
                        parts[0],
                        f"expected {fields} fields: a label and "
                        f"{'a path' if fields == 2 else 'two paths'} like id10001/<video>/00001.wav",
                        f"{path}:{lineno}",
                    )
                )
                continue
            rows.append((lineno, parts))
    return rows


def _write_split(out: Path, entries: dict[str, tuple[_Wav, float]], **kwargs: object) -> Path:
    return write_prepared(
        out,
        wav_scp={w.utt: str(w.path) for w, _ in entries.values()},
        utt2spk={w.utt: w.spk for w, _ in entries.values()},
        utt2dur={w.utt: d for w, d in entries.values()},
        **kwargs,  # type: ignore[arg-type]
    )


def _probe(wav: _Wav, collect: ProblemCollector) -> float | None:
    try:
        return probe(AudioSource(path=str(wav.path)), utt=wav.utt).duration
    except AudioError as err:
        collect.bad(err)
        return None


def prepare_voxceleb1_sid(
    corpus_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    split_file: str | os.PathLike[str] | None = None,
    tolerant: bool = False,
) -> PrepResult:
    """``out/{train,dev,test}`` for SUPERB speaker identification from ``iden_split.txt``."""
    root = Path(corpus_dir).resolve()
    if not root.is_dir():
        raise CorpusError(str(root), "VoxCeleb1 folder not found")
    collect = ProblemCollector("voxceleb1 sid", tolerant)
    wavs = scan_wavs(root, collect)
    list_path = Path(split_file) if split_file else root / "iden_split.txt"
    rows = _read_list(list_path, 2, collect)
    splits: dict[str, dict[str, tuple[_Wav, float]]] = {s: {} for s in SID_SPLITS.values()}
    listed: set[str] = set()
    for lineno, (label, rel) in rows:
        where = f"{list_path}:{lineno}"
        if label not in SID_SPLITS:
            collect.bad(MalformedTranscriptError(rel, f"split {label!r} is not 1, 2 or 3", where))
            continue
        if rel in listed:
            collect.bad(MalformedTranscriptError(rel, "listed twice", where))
            continue
        listed.add(rel)
        wav = wavs.get(rel)
        if wav is None:
            collect.bad(MissingAudioError(rel, "listed file has no audio file", where))
            continue
        dur = _probe(wav, collect)
        if dur is not None:
            splits[SID_SPLITS[label]][wav.utt] = (wav, dur)
            collect.written()
    for rel in sorted(set(wavs) - listed):
        collect.bad(
            UnlistedAudioError(rel, f"audio file is not in {list_path.name}", str(wavs[rel].path))
        )
    collect.raise_if_any()
    for split, entries in splits.items():
        if not entries:
            raise CorpusError(split, f"no utterance for the {split} split in {list_path}")
    train_spk = {w.spk for w, _ in splits["train"].values()}
    unseen = sorted({w.spk for s in ("dev", "test") for w, _ in splits[s].values()} - train_spk)
    if unseen:
        raise CorpusError(
            list_path.name,
            f"speakers {' '.join(unseen[:5])} are in dev/test but not in train; "
            "SID classifies the training speakers",
        )
    out_root = Path(out)
    notes = []
    for split, entries in splits.items():
        _write_split(out_root / split, entries)
        n_spk = len({w.spk for w, _ in entries.values()})
        notes.append(f"{split}: {len(entries)} utterances of {n_spk} speakers")
    collect.report.check()
    return PrepResult(out_root, collect.report, notes)


def _dev_trials(entries: dict[str, tuple[_Wav, float]], seed: int) -> list[tuple[str, str, bool]]:
    """Per utterance: one target trial (same speaker) and one non-target trial."""
    rng = random.Random(seed)
    by_spk: dict[str, list[str]] = {}
    for utt, (w, _) in sorted(entries.items()):
        by_spk.setdefault(w.spk, []).append(utt)
    trials = []
    for spk, utts in by_spk.items():
        others = [u for s, us in by_spk.items() if s != spk for u in us]
        for utt in utts:
            same = [u for u in utts if u != utt]
            if same:
                trials.append((utt, rng.choice(same), True))
            trials.append((utt, rng.choice(others), False))
    return trials


def prepare_voxceleb1_asv(
    corpus_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    trials_file: str | os.PathLike[str] | None = None,
    dev_speakers: int = 20,
    seed: int = 0,
    tolerant: bool = False,
) -> PrepResult:
    """``out/{train,dev,test}`` for SUPERB speaker verification (see the module doc)."""
    root = Path(corpus_dir).resolve()
    if not root.is_dir():
        raise CorpusError(str(root), "VoxCeleb1 folder not found")
    if dev_speakers == 1 or dev_speakers < 0:
        raise CorpusError(
            "--dev-speakers", f"{dev_speakers}: dev trials need at least 2 speakers (or 0)"
        )
    collect = ProblemCollector("voxceleb1 asv", tolerant)
    wavs = scan_wavs(root, collect)
    list_path = Path(trials_file) if trials_file else root / "veri_test.txt"
    rows = _read_list(list_path, 3, collect)
    test: dict[str, tuple[_Wav, float]] = {}
    trials_lines: list[str] = []
    bad_rels: set[str] = set()
    dropped = 0
    for lineno, (label, enroll, probe_rel) in rows:
        where = f"{list_path}:{lineno}"
        if label not in ("0", "1"):
            collect.bad(
                MalformedTranscriptError(
                    f"{enroll} {probe_rel}", f"trial label {label!r} is not 1 or 0", where
                )
            )
            continue
        ok = True
        for rel in (enroll, probe_rel):
            if rel in bad_rels:
                ok = False
                continue
            wav = wavs.get(rel)
            if wav is None:
                bad_rels.add(rel)
                collect.bad(MissingAudioError(rel, "trial names a file with no audio", where))
                ok = False
            elif wav.utt not in test:
                dur = _probe(wav, collect)
                if dur is None:
                    bad_rels.add(rel)
                    ok = False
                else:
                    test[wav.utt] = (wav, dur)
                    collect.written()
        if not ok:
            dropped += 1
        else:
            word = "target" if label == "1" else "nontarget"
            trials_lines.append(f"{utt_id(enroll)} {utt_id(probe_rel)} {word}\n")
    test_spk = {w.spk for w, _ in test.values()} | {rel.split("/")[0] for rel in bad_rels}
    pool_spk = sorted({w.spk for w in wavs.values()} - test_spk)
    if len(pool_spk) <= dev_speakers:
        raise CorpusError(
            "--dev-speakers",
            f"{dev_speakers} dev speakers leave no training speakers: only {len(pool_spk)} "
            "speakers are not in the trial list; give a smaller --dev-speakers (0 = no dev)",
        )
    dev_set = set(pool_spk[len(pool_spk) - dev_speakers :]) if dev_speakers else set()
    train: dict[str, tuple[_Wav, float]] = {}
    dev: dict[str, tuple[_Wav, float]] = {}
    unused = 0
    for _rel, wav in sorted(wavs.items()):
        if wav.spk in test_spk:
            unused += wav.utt not in test
            continue
        dur = _probe(wav, collect)
        if dur is None:
            continue
        (dev if wav.spk in dev_set else train)[wav.utt] = (wav, dur)
        collect.written()
    collect.raise_if_any()
    if not trials_lines:
        raise CorpusError(str(list_path), "no usable trial")
    out_root = Path(out)
    _write_split(out_root / "train", train)
    notes = [f"train: {len(train)} utterances of {len(pool_spk) - len(dev_set)} speakers"]
    if dev_set:
        dev_trials = _dev_trials(dev, seed)
        text = "".join(f"{a} {b} {'target' if t else 'nontarget'}\n" for a, b, t in dev_trials)
        _write_split(out_root / "dev", dev, files={"trials": text})
        notes.append(
            f"dev: {len(dev)} utterances of {len(dev_set)} held-out speakers, "
            f"{len(dev_trials)} seeded trials"
        )
    else:
        notes.append("dev: none (--dev-speakers 0)")
    _write_split(out_root / "test", test, files={"trials": "".join(trials_lines)})
    notes.append(f"test: {len(test)} utterances, {len(trials_lines)} trials from {list_path.name}")
    if dropped:
        notes.append(f"{dropped} trials dropped: they name a skipped file")
    if unused:
        notes.append(
            f"{unused} utterances of trial speakers are in no trial: left out (a trial speaker "
            "is kept out of train)"
        )
    collect.report.check()
    return PrepResult(out_root, collect.report, notes)
