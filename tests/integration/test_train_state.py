"""Training state probes (issue 15) and the training bugs of issue 14, as real
`speechssl-train` subprocesses: exp-dir lock and refusal, resume of things that are not
checkpoints, a deleted meta.json, bad audio during training and the options that fix it,
tolerant start-up, label-stream names, one data event per split."""

from __future__ import annotations

import shutil
import signal
import socket
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from train_helpers import (
    base_overrides,
    copy_data_dir,
    events,
    records,
    run_train,
    start_train,
    utt_ids,
    wait_for,
)

from speechssl.train import checkpoint as ckpt


@pytest.fixture
def w2v(synth_corpus: Path) -> list[str]:
    return ["model=wav2vec2_tiny", *base_overrides()]


def _one_line_error(stderr: str) -> str:
    """The toolkit's error line; asserts there is no traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("speechssl-train: error:")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def test_second_run_is_refused_naming_the_holder_and_lock_survives_sigkill(
    w2v: list[str], synth_corpus: Path, tmp_path: Path
) -> None:
    exp = tmp_path / "exp"
    args = [*w2v, f"data.dir={synth_corpus / 'train'}", f"trainer.exp_dir={exp}"]
    first = start_train(
        [*args, "trainer.max_steps=100000", "trainer.save_every=100000"],
        cwd=tmp_path,
        log=tmp_path / "first.out",
    )
    log = exp / "log.jsonl"
    wait_for(lambda: log.exists() and '"step": 1,' in log.read_text(), first, 240, "step 1")
    second = run_train([*args, "trainer.max_steps=2"], cwd=tmp_path)
    assert second.returncode == 1
    line = _one_line_error(second.stderr)
    assert f"PID {first.pid} on {socket.gethostname()}" in line and "training exp dir" in line
    assert first.poll() is None  # the holder is untouched
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    # the kernel released the lock with the process: the next run proceeds
    third = run_train([*args, "trainer.max_steps=2"], cwd=tmp_path)
    assert third.returncode == 0, third.stderr[-3000:]


@pytest.mark.parametrize("kind", ["kaldi", "other"])
def test_exp_dir_that_is_not_an_exp_dir_is_refused(
    w2v: list[str], synth_corpus: Path, tmp_path: Path, kind: str
) -> None:
    exp = tmp_path / "exp"
    if kind == "kaldi":
        copy_data_dir(synth_corpus / "dev", exp)
    else:
        exp.mkdir()
        (exp / "notes.txt").write_text("mine\n")
    before = sorted(p.name for p in exp.iterdir())
    res = run_train(
        [*w2v, f"data.dir={synth_corpus / 'train'}", f"trainer.exp_dir={exp}",
         "trainer.max_steps=1"], cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 1
    line = _one_line_error(res.stderr)
    assert ("is a Kaldi data dir" if kind == "kaldi" else "is not a training exp dir") in line
    after = sorted(p.name for p in exp.iterdir())  # no Hydra run dir either
    assert after == before  # no lock, log, config or checkpoint was written into it


def test_resume_from_a_model_dir_says_what_it_is(
    w2v: list[str], synth_corpus: Path, tmp_path: Path
) -> None:
    hf = tmp_path / "hf_model"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "hubert"}\n')
    (hf / "model.safetensors").write_bytes(b"\0" * 16)
    res = run_train(
        [*w2v, f"data.dir={synth_corpus / 'train'}", f"trainer.exp_dir={tmp_path / 'exp'}",
         f"resume={hf}"], cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 1
    line = _one_line_error(res.stderr)
    assert "a Hugging Face model dir" in line and "resume expects" in line
    assert "partial" not in line


def test_resume_auto_sets_aside_a_step_dir_whose_meta_was_deleted(
    w2v: list[str], synth_corpus: Path, tmp_path: Path
) -> None:
    exp = tmp_path / "exp"
    args = [*w2v, f"data.dir={synth_corpus / 'train'}", f"trainer.exp_dir={exp}",
            "trainer.save_every=2"]  # fmt: skip
    assert run_train([*args, "trainer.max_steps=4"], cwd=tmp_path).returncode == 0
    root = exp / "checkpoints"
    newest = root / ckpt.step_dir_name(4)
    weights = (newest / ckpt.MODEL_FILE).read_bytes()
    (newest / ckpt.META_FILE).unlink()
    res = run_train([*args, "trainer.max_steps=6"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert events(exp, "resume")[-1]["step"] == 2  # the newest verifiable one
    aside = sorted(root.glob("step-00000004.no-meta-*"))
    assert len(aside) == 1 and (aside[0] / ckpt.MODEL_FILE).read_bytes() == weights
    assert [c.step for c in ckpt.list_checkpoints(root)[0]][-1] == 6


def _stereo(src: str, dst: Path) -> str:
    data, rate = sf.read(src, dtype="float32")
    sf.write(dst, np.stack([data, 0.5 * data], axis=1), rate)
    return str(dst)


def test_stereo_file_in_training_is_one_line_and_data_channels_fixes_it(
    w2v: list[str], synth_corpus: Path, tmp_path: Path
) -> None:
    train = synth_corpus / "train"
    utt = utt_ids(train)[1]
    wav = dict(line.split(maxsplit=1) for line in (train / "wav.scp").read_text().splitlines())
    data = copy_data_dir(
        train, tmp_path / "data", wav_scp={utt: _stereo(wav[utt].strip(), tmp_path / "st.wav")}
    )
    # data loading in worker processes, where the error used to become a DataLoader traceback
    args = [*w2v, f"data.dir={data}", "data.num_workers=2", "trainer.max_steps=3"]
    res = run_train([*args, f"trainer.exp_dir={tmp_path / 'a'}"], cwd=tmp_path)
    assert res.returncode == 1
    line = _one_line_error(res.stderr)
    assert utt in line and "2 channels" in line and "data.channels=select:N" in line
    # the recommended option exists and works
    res = run_train(
        [*args, f"trainer.exp_dir={tmp_path / 'b'}", "data.channels=mean"], cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr[-3000:]
    res = run_train(
        [*args, f"trainer.exp_dir={tmp_path / 'c'}", "data.channels=select:0"], cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr[-3000:]


def test_pipe_entry_in_training_is_one_line_and_allow_pipes_fixes_it(
    w2v: list[str], synth_corpus: Path, tmp_path: Path
) -> None:
    train = synth_corpus / "train"
    utt = utt_ids(train)[2]
    wav = dict(line.split(maxsplit=1) for line in (train / "wav.scp").read_text().splitlines())
    data = copy_data_dir(train, tmp_path / "data", wav_scp={utt: f"cat {wav[utt].strip()} |"})
    args = [*w2v, f"data.dir={data}", "data.num_workers=1", "trainer.max_steps=3"]
    res = run_train([*args, f"trainer.exp_dir={tmp_path / 'a'}"], cwd=tmp_path)
    assert res.returncode == 1
    line = _one_line_error(res.stderr)
    assert utt in line and "data.allow_pipes=true" in line
    res = run_train(
        [*args, f"trainer.exp_dir={tmp_path / 'b'}", "data.allow_pipes=true"], cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr[-3000:]


def test_tolerant_start_up_skips_and_reports_a_missing_audio_file(
    w2v: list[str], synth_corpus: Path, tmp_path: Path
) -> None:
    train = synth_corpus / "train"
    utt = utt_ids(train)[0]
    data = copy_data_dir(
        train, tmp_path / "data", wav_scp={utt: str(tmp_path / "gone.wav")}, drop_files=("utt2dur",)
    )  # without utt2dur the durations come from the audio headers, at start-up
    args = [*w2v, f"data.dir={data}", "trainer.max_steps=2"]
    res = run_train([*args, f"trainer.exp_dir={tmp_path / 'strict'}"], cwd=tmp_path)
    assert res.returncode == 1 and utt in _one_line_error(res.stderr)
    exp = tmp_path / "tolerant"
    res = run_train([*args, f"trainer.exp_dir={exp}", "data.tolerant=true"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    (data_event,) = events(exp, "data")  # one per split, logged once
    assert data_event["unreadable"] == 1
    assert data_event["total"] == len(utt_ids(train))
    assert data_event["kept"] + data_event["too_short"] + data_event["too_long"] + 1 == len(
        utt_ids(train)
    )
    skipped = events(exp, "skipped_utterance")
    assert [e["utt"] for e in skipped] == [utt]


def test_label_streams_are_named_by_kmeans_not_by_the_dir(
    synth_corpus: Path, synth_km_labels: dict[str, Path], tmp_path: Path
) -> None:
    """A recipe's ``labels/train`` dir must not log ``loss/train``; a resumed run keeps one
    data event per split in the log."""
    labels = tmp_path / "labels" / "train"
    shutil.copytree(synth_km_labels["train"], labels)
    exp = tmp_path / "exp"
    args = ["model=hubert_tiny", *base_overrides(), f"data.dir={synth_corpus / 'train'}",
            f"data.labels=[{labels}]", f"trainer.exp_dir={exp}", "trainer.save_every=1"]  # fmt: skip
    res = run_train([*args, "trainer.max_steps=1"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    keys = set(records(exp, "train")[0])
    assert "loss/km20_mfcc/masked" in keys, sorted(keys)
    assert not any(k.startswith("loss/train") for k in keys)
    res = run_train([*args, "trainer.max_steps=2"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert events(exp, "resume") and len(events(exp, "data")) == 1
