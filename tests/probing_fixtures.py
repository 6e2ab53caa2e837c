"""Tiny corpora in the real layouts of the probing tasks' corpora (import as a module).

Every audio file is written with soundfile, so the preparers read real FLAC/WAV headers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
from audio_fixtures import write_audio

# LibriSpeech lexicon format: WORD<TAB>PHONES, stress digits on vowels, alternatives repeated
LEXICON = """\
A\tAH0
A\tEY1
CAT\tK AE1 T
HELLO\tHH AH0 L OW1
SAT\tS AE1 T
THE\tDH AH0
WORLD\tW ER1 L D
"""

TRANSCRIPTS = {
    ("84", "121123"): ["HELLO WORLD", "THE CAT SAT"],
    ("174", "50561"): ["A CAT", "THE ZEBRA SAT"],  # ZEBRA is not in the lexicon
}


def make_librispeech_pr(root: Path) -> Path:
    """ROOT/LibriSpeech/dev-clean/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac + trans.txt."""
    for c, ((spk, ch), lines) in enumerate(TRANSCRIPTS.items()):
        d = root / "LibriSpeech" / "dev-clean" / spk / ch
        trans = []
        for i, words in enumerate(lines):
            utt = f"{spk}-{ch}-{i:04d}"
            write_audio(d / f"{utt}.flac", 0.3, seed=10 * c + i)  # distinct audio each
            trans.append(f"{utt} {words}\n")
        (d / f"{spk}-{ch}.trans.txt").write_text("".join(trans))
    (root / "lexicon.txt").write_text(LEXICON)
    return root


POOL = ["id10001", "id10002", "id10003", "id10004"]  # VoxCeleb1 dev part
TEST = ["id10270", "id10271"]  # speakers of the verification trials
VIDEOS = ["x6uYqmx31kE", "8jEAjG6-SegY"]


def rel(spk: str, video: int, n: int) -> str:
    return f"{spk}/{VIDEOS[video]}/{n:05d}.wav"


def write_voice(path: Path, seconds: float, speaker: int, seed: int) -> Path:
    """16 kHz mono WAV: a speaker-specific tone (its "voice": 150 + 110 * speaker Hz and one
    harmonic) under noise, so same-speaker utterances have similar spectra."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * 16000)) / 16000
    f0 = 150.0 + 110.0 * speaker
    phase = rng.uniform(0, 2 * np.pi)
    wave = 0.3 * np.sin(2 * np.pi * f0 * t + phase) + 0.15 * np.sin(4 * np.pi * f0 * t)
    wave += 0.02 * rng.standard_normal(t.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wave.astype(np.float32), 16000, subtype="PCM_16")
    return path


def make_voxceleb1(root: Path, *, split_archives: bool = False) -> Path:
    """ROOT/wav/id*/<video>/<n>.wav (or vox1_dev_wav/ + vox1_test_wav/), iden_split.txt,
    veri_test.txt. Each speaker's utterances carry its own tone (:func:`write_voice`)."""
    iden = []
    for s, spk in enumerate(POOL + TEST):
        archive = "vox1_test_wav" if spk in TEST else "vox1_dev_wav"
        base = root / archive / "wav" if split_archives else root / "wav"
        for k, (v, n) in enumerate([(0, 1), (0, 2), (1, 1), (1, 8)]):
            write_voice(base / rel(spk, v, n), 0.2 + 0.01 * k, s, seed=10 * s + k)
            iden.append(f"{[1, 1, 2, 3][k]} {rel(spk, v, n)}\n")
    (root / "iden_split.txt").write_text("".join(iden))
    (root / "veri_test.txt").write_text(
        f"1 {rel('id10270', 0, 1)} {rel('id10270', 1, 8)}\n"
        f"0 {rel('id10270', 0, 1)} {rel('id10271', 0, 2)}\n"
        f"1 {rel('id10271', 0, 1)} {rel('id10271', 1, 1)}\n"
        f"0 {rel('id10271', 0, 1)} {rel('id10270', 1, 1)}\n"
    )
    return root


# Fluent Speech Commands: (transcription, action, object, location); each intent's audio
# carries its own tone (write_voice's "speaker" argument), so the intent is learnable
FSC_INTENTS = [
    ("Turn on the lights in the kitchen", "activate", "lights", "kitchen"),
    ("Stop the music", "deactivate", "music", "none"),
    ("Change language", "change language", "none", "none"),
]
FSC_SPEAKERS = {"train": ["2BqVo8kVB2Skwgyb", "4aGjX3AG5xcxeL7a"], "valid": ["R3mexpM2YAtdPbL7"],
                "test": ["Xygv5loxdZtrywr9"]}  # fmt: skip


def make_fluent_speech_commands(root: Path) -> Path:
    """ROOT/wavs/speakers/<spk>/<uuid>.wav + ROOT/data/{train,valid,test}_data.csv (with the
    released files' unnamed index column)."""
    n = 0
    for split, speakers in FSC_SPEAKERS.items():
        lines = [",path,speakerId,transcription,action,object,location"]
        for spk in speakers:
            for k, (text, action, obj, loc) in enumerate(FSC_INTENTS):
                for rep in range(2 if split == "train" else 1):
                    rel = f"wavs/speakers/{spk}/{n:04d}a{k}{rep}-cafe.wav"
                    write_voice(root / rel, 0.4 + 0.1 * rep, speaker=k, seed=100 + n)
                    lines.append(f'{n},{rel},{spk},"{text}",{action},{obj},{loc}')
                    n += 1
        (root / "data").mkdir(parents=True, exist_ok=True)
        (root / "data" / f"{split}_data.csv").write_text("\n".join(lines) + "\n")
    return root


def make_quesst14(root: Path) -> Path:
    """quesst14Database: Audio/, dev_queries/, eval_queries/, language_key_*.lst (paths with
    the database folder first, one non-English line each) and the ground-truth RTTMs. Query
    k and the documents that hold it share a tone (:func:`write_voice` "speaker" k)."""
    db = root / "quesst14Database"
    docs = {"quesst14_00001": 0, "quesst14_00002": 1, "quesst14_00003": 2, "quesst14_00004": 0}
    lines = []
    for i, (doc, k) in enumerate(docs.items()):
        write_voice(db / "Audio" / f"{doc}.wav", 1.0, speaker=k, seed=200 + i)
        lines.append(f"quesst14Database/Audio/{doc}.wav nnenglish")
    write_voice(db / "Audio" / "quesst14_00005.wav", 0.5, speaker=3, seed=210)
    lines.append("quesst14Database/Audio/quesst14_00005.wav albanian")
    (db / "language_key_utterances.lst").write_text("\n".join(lines) + "\n")
    for split, pairs in (("dev", [(0, 1), (1, 2)]), ("eval", [(2, 3), (0, 4)])):
        lst, rttm = [], []
        for n, (k, seed) in enumerate(pairs, start=1):
            q = f"quesst14_{split}_{n:04d}"
            write_voice(db / f"{split}_queries" / f"{q}.wav", 0.3, speaker=k, seed=300 + seed)
            lst.append(f"quesst14Database/{split}_queries/{q}.wav nnenglish")
            for doc, dk in docs.items():
                if dk == k:
                    rttm.append(f"LEXEME {doc} 1 0.20 0.30 {q} lex <NA> <NA>")
        lst.append(f"quesst14Database/{split}_queries/quesst14_{split}_0099.wav czech")
        (db / f"language_key_{split}.lst").write_text("\n".join(lst) + "\n")
        gt = db / "scoring" / f"groundtruth_quesst14_{split}"
        gt.mkdir(parents=True)
        (gt / f"quesst14_{split}.rttm").write_text("\n".join(rttm) + "\n")
    return db


# IEMOCAP: per session one improvised and one scripted dialog; each utterance's audio
# carries its emotion's tone (write_voice "speaker" = class index), so the task is learnable.
# fru and xxx are left out by the task; exc is merged into hap.
IEMOCAP_CLASSES = {"ang": 0, "hap": 1, "exc": 1, "neu": 2, "sad": 3}
IEMOCAP_TURNS = [  # (dialog suffix, turn, label)
    ("impro01", "F000", "neu"), ("impro01", "M000", "ang"), ("impro01", "F001", "fru"),
    ("impro01", "M001", "sad"), ("script01_1", "F000", "hap"), ("script01_1", "M000", "exc"),
    ("script01_1", "F001", "xxx"), ("script01_1", "M001", "neu"), ("script01_1", "F002", "ang"),
    ("script01_1", "M002", "sad"),
]  # fmt: skip


def make_iemocap(root: Path) -> Path:
    """IEMOCAP_full_release/Session{1..5}/sentences/wav/<dialog>/<utt>.wav and
    Session{n}/dialog/EmoEvaluation/<dialog>.txt (with the annotators' vote lines)."""
    base = root / "IEMOCAP_full_release"
    n = 0
    for s in range(1, 6):
        sdir = base / f"Session{s}"
        labels: dict[str, list[str]] = {}
        for k, (suffix, turn, label) in enumerate(IEMOCAP_TURNS):
            dialog = f"Ses0{s}F_{suffix}"
            utt = f"{dialog}_{turn}"
            cls = IEMOCAP_CLASSES.get(label, 4)
            write_voice(sdir / "sentences" / "wav" / dialog / f"{utt}.wav", 0.3 + 0.02 * k,
                        speaker=cls, seed=500 + n)  # fmt: skip
            n += 1
            start = 1.0 + 3 * k
            head = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
            labels.setdefault(dialog, head).extend([
                f"[{start:.4f} - {start + 2.1:.4f}]\t{utt}\t{label}\t[2.5000, 2.5000, 2.5000]",
                "C-E2:\tNeutral;\t()",
                "A-E3:\tval 3; act 2; dom  2;\t()",
                "",
            ])  # fmt: skip
        for dialog, lines in labels.items():
            path = sdir / "dialog" / "EmoEvaluation" / f"{dialog}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(lines) + "\n")
    return base


# Audio SNIPS (SUPERB's layout): (words, tags, intent); punctuation and accented letters are
# normalised by the preparer. Each template's audio carries its own tone.
SNIPS_TEMPLATES = [
    ("PLAY BEYONCÉ", "O artist", "PlayMusic"),
    ("ADD SONG TO ROCK LIST .", "O music_item O playlist playlist O", "AddToPlaylist"),
    ("PLAY MUSIC", "O O", "PlayMusic"),
]
SNIPS_SPEAKERS = {"train": ["Ivy", "Joanna"], "valid": ["Aditi"], "test": ["Brian"]}


def make_snips(root: Path) -> Path:
    """SNIPS/all.iob.snips.txt, SNIPS/slots.txt, SNIPS/{train,valid,test}/<spk>-snips-<split>-
    <n>.wav; the train folder also holds a dev speaker's files (left out by the task)."""
    base = root / "SNIPS"
    lines = []
    folders = {split: list(spks) for split, spks in SNIPS_SPEAKERS.items()}
    folders["train"].append("Aditi")  # SUPERB uses Aditi for dev only
    seed = 700
    for split, speakers in folders.items():
        for spk in speakers:
            for n, (words, tags, intent) in enumerate(SNIPS_TEMPLATES):
                utt = f"{spk}-snips-{split}-{n}"
                write_voice(base / split / f"{utt}.wav", 0.7, speaker=n, seed=seed)
                seed += 1
                lines.append(f"{utt} BOS {words} EOS\tO {tags} {intent}")
    (base / "all.iob.snips.txt").write_text("\n".join(lines) + "\n")
    (base / "slots.txt").write_text("O\nplaylist\nmusic_item\nartist")
    return base
