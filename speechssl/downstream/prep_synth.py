"""Probing data from the bundled SYNTHETIC corpus (``speechssl data synth``).

:func:`prepare_synth_probing` turns a synth corpus root (``train/ dev/ test/``) into one task
root per task, each with ``train/ dev/ test/`` Kaldi data dirs and the task's label file:

* ``pr/``: the corpus's own (speaker-disjoint) splits; ``utt2phones`` is the phone sequence
  of the synthesizer's frame alignment (``ali.phones``): runs merged, silence dropped;
  ``pr/phones.txt`` is the corpus's phone inventory (without silence).
* ``sid/``: every utterance of every split, re-split *by utterance within each speaker*
  (60/20/20, deterministic), so test speakers are training speakers; label ``utt2spk``.
* ``asr/``: the corpus's own (speaker-disjoint) splits with their ``text``;
  ``asr/chars.txt`` lists every character of the corpus's transcripts (the output units).
* ``asv/``: the corpus's own splits, which hold disjoint speakers: the head trains on the
  ``train`` speakers; ``dev/trials`` and ``test/trials`` pair every two utterances of the
  split (``target`` when they share a speaker; at most :data:`MAX_TRIALS` pairs, a seeded
  sample beyond that).
* ``ks/``: the isolated-word utterances (``utt2keyword``: the ten keywords or
  ``_unknown_``) plus generated ``_silence_`` clips (1 s of low-level white/pink background
  noise, about one clip per eleven words, written as WAV under ``ks/noise/``), split 60/20/20
  within each class so every class is in training.
* ``ic/`` (only when asked for): spoken smart-home commands with action/object/location
  slots, synthesized with the corpus speakers' voices
  (:mod:`speechssl.downstream.prep_synth_ic`); ``utt2intent``.
* ``sd/`` (only when asked for): two-speaker mixtures with controlled overlap and the
  mixer's RTTM (:mod:`speechssl.downstream.prep_synth_sd`); ``utt2activity``.
* ``qbe/`` (only when asked for): spoken single-word queries searched in the corpus's
  multi-word utterances (:func:`speechssl.downstream.qbe.prepare_synth_qbe`).

Audio is referenced, not copied (``wav.scp`` keeps the corpus's absolute paths). Every output
file is written atomically; the task roots are rebuilt on each call.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from speechssl.data.kaldi_dir import KaldiDataDir, write_data_dir
from speechssl.data.tables import read_table
from speechssl.downstream.asv import Trial, write_trials
from speechssl.errors import ConfigError
from speechssl.utils.atomic import atomic_write_text

SIL = "SIL"
"""The synthesizer's silence phone (dropped from PR targets)."""
SILENCE_LABEL = "_silence_"
UNKNOWN_LABEL = "_unknown_"
NOISE_SPEAKER = "noise"
#: split of the n-th (shuffled) utterance of a class/speaker, cycling: 60/20/20
_PATTERN = ("train", "dev", "test", "train", "train", "train", "train", "train", "dev", "test")
SPLITS = ("train", "dev", "test")
TASKS = ("pr", "asr", "ks", "sid", "asv", "ic", "qbe", "sd")
MAX_TRIALS = 20000


def _order(utts: list[str], seed: int) -> list[str]:
    def key(u: str) -> str:
        return hashlib.sha256(f"{seed}:{u}".encode()).hexdigest()

    return sorted(utts, key=key)


def split_within(groups: Mapping[str, list[str]], seed: int) -> dict[str, str]:
    """utt -> split: each group's utterances in a seeded order dealt 60/20/20 (the first
    to train, so every group is trained on)."""
    out: dict[str, str] = {}
    for _, utts in sorted(groups.items()):
        for i, u in enumerate(_order(utts, seed)):
            out[u] = _PATTERN[i % len(_PATTERN)]
    return out


def phones_from_alignment(frames: list[str], silence: str = SIL) -> list[str]:
    """The phone sequence of a frame alignment: runs merged, silence dropped."""
    seq: list[str] = []
    prev = None
    for p in frames:
        if p != prev and p != silence:
            seq.append(p)
        prev = p
    return seq


def all_pair_trials(utt2spk: Mapping[str, str], seed: int) -> list[Trial]:
    """Every unordered pair of utterances as a trial (``target`` for the same speaker), in
    sorted order; beyond :data:`MAX_TRIALS` pairs, a seeded sample of them."""
    utts = sorted(utt2spk)
    pairs = [(a, b) for i, a in enumerate(utts) for b in utts[i + 1 :]]
    if len(pairs) > MAX_TRIALS:
        keep = np.random.default_rng(seed).choice(len(pairs), MAX_TRIALS, replace=False)
        pairs = [pairs[i] for i in sorted(keep)]
    return [Trial(a, b, utt2spk[a] == utt2spk[b]) for a, b in pairs]


def _load_corpus(root: Path) -> dict[str, KaldiDataDir]:
    dirs = {}
    for split in SPLITS:
        d = root / split
        if not (d / "wav.scp").is_file():
            raise ConfigError(
                f"{root}: not a bundled synth corpus (no {split}/wav.scp); make one with "
                "speechssl data synth"
            )
        dirs[split] = KaldiDataDir(d)
    return dirs


def _table(d: KaldiDataDir, name: str) -> dict[str, str]:
    path = d.path / name
    if not path.is_file():
        raise ConfigError(f"{d.path}: no {name} (a bundled synth corpus dir has one)")
    return read_table(path)


def _write_subset(
    out: Path,
    members: Mapping[str, tuple[KaldiDataDir, dict[str, str], dict[str, str]]],
    label_file: str,
    labels: Mapping[str, str],
) -> None:
    """Write a data dir of ``members`` (utt -> (source dir, wav.scp, utt2spk))."""
    wav = {u: scp[u] for u, (_, scp, _) in members.items()}
    spk = {u: u2s[u] for u, (_, _, u2s) in members.items()}
    dur = {u: d.duration(u) for u, (d, _, _) in members.items()}
    write_data_dir(
        out, wav_scp=wav, utt2spk=spk, utt2dur=dur, extra={label_file: {u: labels[u] for u in wav}}
    )


def _silence_clips(out_dir: Path, count: int, seed: int) -> dict[str, tuple[str, float]]:
    """``count`` 1 s clips of low-level background noise: utt -> (wav path, seconds)."""
    import soundfile as sf

    from speechssl.data.synth import augment

    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    clips = {}
    for i in range(count):
        noise = augment.pink_noise(rng, 16000) if i % 2 else augment.white_noise(rng, 16000)
        noise = noise / (np.abs(noise).max() + 1e-9) * float(rng.uniform(0.002, 0.05))
        utt = f"{NOISE_SPEAKER}-silence-{i:04d}"
        path = out_dir / f"{utt}.wav"
        tmp = out_dir / f".{utt}.tmp.wav"
        sf.write(tmp, noise.astype(np.float32), 16000, subtype="PCM_16")
        os.replace(tmp, path)
        clips[utt] = (str(path.resolve()), 1.0)
    return clips


def prepare_synth_probing(
    corpus: str | os.PathLike[str], out: str | os.PathLike[str], *, seed: int = 0,
    tasks: tuple[str, ...] = ("pr", "sid", "ks"),
) -> dict[str, Any]:  # fmt: skip
    """Write ``<out>/<task>/{train,dev,test}``; returns utterance counts per task and split."""
    from speechssl.data.synth.alignment import read_alignments

    root, out = Path(corpus), Path(out)
    dirs = _load_corpus(root)
    scp = {s: _table(d, "wav.scp") for s, d in dirs.items()}
    u2s = {s: _table(d, "utt2spk") for s, d in dirs.items()}
    counts: dict[str, Any] = {}
    bad = sorted(set(tasks) - set(TASKS))
    if bad:
        raise ConfigError(
            f"unknown probing task(s) {bad}; bundled-corpus tasks: {', '.join(TASKS)}"
        )
    if "sd" in tasks:
        from speechssl.downstream.prep_synth_sd import prepare_synth_sd

        counts["sd"] = prepare_synth_sd(root, out / "sd", seed=seed)
    if "qbe" in tasks:
        from speechssl.downstream.qbe import prepare_synth_qbe

        counts["qbe"] = prepare_synth_qbe(root, out / "qbe", seed=seed)
    if "ic" in tasks:
        from speechssl.downstream.prep_synth_ic import prepare_synth_ic

        counts["ic"] = prepare_synth_ic(root, out / "ic", seed=seed)

    if "pr" in tasks:
        counts["pr"] = {}
        for split, d in dirs.items():
            ali_path = d.path / "ali.phones"
            if not ali_path.is_file():
                raise ConfigError(f"{d.path}: no ali.phones (the synthesizer's alignment)")
            ali = read_alignments(ali_path)
            members = {u: (d, scp[split], u2s[split]) for u in d.utt_ids()}
            missing = [u for u in members if u not in ali]
            if missing:
                raise ConfigError(f"{missing[0]}: no alignment in {ali_path}")
            phones = {u: " ".join(phones_from_alignment(ali[u])) for u in members}
            empty = [u for u, p in phones.items() if not p]
            if empty:
                raise ConfigError(f"{empty[0]}: its alignment in {ali_path} has only silence")
            _write_subset(out / "pr" / split, members, "utt2phones", phones)
            counts["pr"][split] = len(members)
        table = root / "phones.txt"
        if not table.is_file():
            raise ConfigError(f"{root}: no phones.txt (the synth corpus's phone table)")
        inventory = [ln.split()[0] for ln in table.read_text().splitlines() if ln.strip()]
        atomic_write_text(
            out / "pr" / "phones.txt", "\n".join(p for p in inventory if p != SIL) + "\n"
        )

    if "asr" in tasks:
        counts["asr"] = {}
        chars: set[str] = set()
        for split, d in dirs.items():
            text = _table(d, "text")
            members = {u: (d, scp[split], u2s[split]) for u in d.utt_ids()}
            empty = [u for u in members if not text.get(u, "").strip()]
            if empty:
                raise ConfigError(f"{empty[0]}: no transcript in {d.path / 'text'}")
            for u in members:
                chars.update(c for c in text[u] if not c.isspace())
            _write_subset(out / "asr" / split, members, "text", text)
            counts["asr"][split] = len(members)
        atomic_write_text(out / "asr" / "chars.txt", "".join(f"{c}\n" for c in sorted(chars)))

    if "asv" in tasks:
        counts["asv"] = {}
        for split, d in dirs.items():
            members = {u: (d, scp[split], u2s[split]) for u in d.utt_ids()}
            _write_subset(out / "asv" / split, members, "utt2spk", u2s[split])
            counts["asv"][split] = len(members)
            if split != "train":
                trials = all_pair_trials(u2s[split], seed)
                if not any(t.target for t in trials) or all(t.target for t in trials):
                    raise ConfigError(
                        f"{d.path}: asv trials need two speakers and a speaker with two "
                        "utterances (the corpus is too small)"
                    )
                write_trials(out / "asv" / split / "trials", trials)

    everyone = {u: (dirs[s], scp[s], u2s[s]) for s in SPLITS for u in dirs[s].utt_ids()}
    if "sid" in tasks:
        by_spk: dict[str, list[str]] = {}
        for u, (_, _, speakers) in everyone.items():
            by_spk.setdefault(speakers[u], []).append(u)
        where = split_within(by_spk, seed)
        spk_label = {u: m[2][u] for u, m in everyone.items()}
        counts["sid"] = {}
        for split in SPLITS:
            members = {u: m for u, m in everyone.items() if where[u] == split}
            _write_subset(out / "sid" / split, members, "utt2spk", spk_label)
            counts["sid"][split] = len(members)

    if "ks" in tasks:
        keyword: dict[str, str] = {}
        for d in dirs.values():
            path = d.path / "utt2keyword"
            if path.is_file():
                keyword.update(read_table(path))
        if not keyword:
            raise ConfigError(f"{root}: no utt2keyword in any split (no isolated words)")
        n_sil = max(3, round(len(keyword) / 11))
        clips = _silence_clips(out / "ks" / "noise", n_sil, seed)
        by_class: dict[str, list[str]] = {}
        for u, k in keyword.items():
            by_class.setdefault(k, []).append(u)
        by_class[SILENCE_LABEL] = list(clips)
        where = split_within(by_class, seed)
        labels = {**keyword, **dict.fromkeys(clips, SILENCE_LABEL)}
        counts["ks"] = {}
        for split in SPLITS:
            wav: dict[str, str] = {}
            spk: dict[str, str] = {}
            dur: dict[str, float] = {}
            for u in labels:
                if where[u] != split:
                    continue
                if u in clips:
                    wav[u], dur[u], spk[u] = clips[u][0], clips[u][1], NOISE_SPEAKER
                else:
                    d, sc, us = everyone[u]
                    wav[u], dur[u], spk[u] = sc[u], d.duration(u), us[u]
            write_data_dir(
                out / "ks" / split, wav_scp=wav, utt2spk=spk, utt2dur=dur,
                extra={"utt2keyword": {u: labels[u] for u in wav}},
            )  # fmt: skip
            counts["ks"][split] = len(wav)
    return counts
