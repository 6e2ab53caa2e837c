"""Issue 15's probe families, as a careless or hostile user would run them: bad data dirs,
kills during writes, tampered files, malicious pickles (Hydra routes included), concurrent
writers, secrets in the environment. Every probe goes through the commands users run (the
``speechssl`` CLI in process, ``speechssl-train`` as a real subprocess) on the bundled
synthetic corpus, and checks the one-line refusal, that nothing ran or was written, and that
the recommended option works.

Older, narrower regression tests of the same issue stay where their code lives (data dirs:
tests/unit/test_validate.py, test_fix_info.py, test_kaldi_dir.py; optimizer checks:
test_train_config.py; k-means models: test_units_kmeans_reliability.py; exp-dir refusals:
tests/integration/test_train_state.py; the lock itself: tests/unit/test_utils_lock.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from train_helpers import REPO, base_overrides, events, run_train, start_train, utt_ids, wait_for

from speechssl.cli.main import main
from speechssl.data.kaldi_dir import write_data_dir
from speechssl.errors import CheckpointError
from speechssl.features.dump import shard_lock_name
from speechssl.features.store import FeatureStore
from speechssl.models.io import CONFIG_NAME, WEIGHTS_NAME, file_record, load_model_dir
from speechssl.train import checkpoint as ckpt
from speechssl.utils.lock import exclusive_lock

SECRETS = {
    "HF_TOKEN": "hf_probeSecretToken0123456789abcdef",
    "HUGGING_FACE_HUB_TOKEN": "hf_probeSecondToken9876543210",
    "WANDB_API_KEY": "probe-wandb-key-5f3e2d1c",
    "AWS_SECRET_ACCESS_KEY": "probe/aws+secret/0123456789",
}


def _dump(*args: str) -> int:
    return main(["features", "dump", *args])


def _error_line(err: str, prog: str = "speechssl features: error: ") -> str:
    """The one error line a refused command prints (no traceback, nothing else)."""
    lines = [line for line in err.strip().splitlines() if "WARNING" not in line]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith(prog), err
    return lines[0]


@pytest.fixture
def small_dir(synth_corpus: Path, tmp_path: Path) -> Path:
    """A writable data dir: the synthetic train set's audio, wav.scp + utt2spk + spk2utt."""
    train = synth_corpus / "train"
    wav = dict(line.split(maxsplit=1) for line in (train / "wav.scp").read_text().splitlines())
    spk = dict(line.split(maxsplit=1) for line in (train / "utt2spk").read_text().splitlines())
    write_data_dir(tmp_path / "data", wav_scp=wav, utt2spk=spk)
    return tmp_path / "data"


def _drop_utterance(data: Path, utt: str) -> None:
    for name in ("wav.scp", "utt2spk"):
        lines = (data / name).read_text().splitlines(keepends=True)
        (data / name).write_text("".join(x for x in lines if x.split()[0] != utt))
    wav = dict(x.split(maxsplit=1) for x in (data / "wav.scp").read_text().splitlines())
    spk = dict(x.split(maxsplit=1) for x in (data / "utt2spk").read_text().splitlines())
    shutil.rmtree(data)
    write_data_dir(data, wav_scp=wav, utt2spk=spk)


# --- bad data dirs ---------------------------------------------------------------------


def test_dump_of_an_empty_data_dir_is_an_error(tmp_path: Path, capsys) -> None:
    data = tmp_path / "empty"
    data.mkdir()
    for name in ("wav.scp", "utt2spk", "spk2utt"):
        (data / name).write_text("")
    assert _dump("--data", str(data), "--kind", "mfcc", "--out", str(tmp_path / "s")) == 1
    line = _error_line(capsys.readouterr().err)
    assert "has no utterances" in line and str(data) in line
    assert not (tmp_path / "s" / "meta.json").exists()


def test_wav_scp_line_without_a_path_gets_the_validation_reason(
    small_dir: Path, tmp_path: Path, capsys
) -> None:
    utt = utt_ids(small_dir)[1]
    lines = (small_dir / "wav.scp").read_text().splitlines(keepends=True)
    (small_dir / "wav.scp").write_text("".join(f"{utt}\n" if x.startswith(utt + " ") else x
                                               for x in lines))  # fmt: skip
    args = ["--data", str(small_dir), "--kind", "mfcc"]
    assert _dump(*args, "--out", str(tmp_path / "strict")) == 1
    line = _error_line(capsys.readouterr().err)
    assert f"{utt} (" in line and "wav.scp:2): no path/command after the key" in line
    assert "regular file" not in line
    assert _dump(*args, "--out", str(tmp_path / "tol"), "--tolerant") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["skipped"] == 1 and summary["written"] + 1 == summary["inputs"]
    store = FeatureStore(tmp_path / "tol")
    assert store.skipped() == [{"utt": utt, "reason": "data-dir: no path/command after the key"}]


def test_store_refuses_a_changed_utterance_set_and_overwrite_redoes_it(
    small_dir: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "store"
    args = ["--data", str(small_dir), "--kind", "mfcc", "--out", str(out), "--nshard", "2"]
    assert _dump(*args) == 0
    before = utt_ids(small_dir)
    assert (out / "utterances.txt").read_text().split() == before
    gone = before[3]
    _drop_utterance(small_dir, gone)
    capsys.readouterr()
    assert _dump(*args) == 1  # used to report every shard complete and keep `gone`
    line = _error_line(capsys.readouterr().err)
    assert "made from other utterances" in line and f"no longer in the data dir: {gone}" in line
    assert f"{len(before)} utterances then, {len(before) - 1} now" in line and "--overwrite" in line
    assert gone in FeatureStore(out)  # the refused rerun changed nothing
    assert _dump(*args, "--overwrite") == 0  # the recommended option works
    store = FeatureStore(out)
    assert sorted(store.utt_ids) == sorted(set(before) - {gone})
    assert json.loads(capsys.readouterr().out)["shards"] == {"0": "written", "1": "written"}
    assert _dump(*args) == 0  # and the redone store is complete for a plain rerun
    assert json.loads(capsys.readouterr().out)["shards"] == {"0": "complete", "1": "complete"}


def test_labels_from_audio_refuse_a_changed_utterance_set(
    synth_km_labels: dict[str, Path], small_dir: Path, tmp_path: Path, capsys
) -> None:
    km = synth_km_labels["dev"].parents[2] / "km"
    out = tmp_path / "labels"
    args = ["kmeans", "apply", "--kmeans", str(km), "--data", str(small_dir), "--out",
            str(out), "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    gone = utt_ids(small_dir)[0]
    _drop_utterance(small_dir, gone)
    capsys.readouterr()
    assert main(args) == 1  # used to report the shard complete, with `gone` still labelled
    line = _error_line(capsys.readouterr().err, "speechssl kmeans: error: ")
    assert "different settings (source)" in line and "--overwrite" in line
    assert main([*args, "--overwrite"]) == 0
    txt = (out / "shard-00000-of-00001.txt").read_text().split("\n")
    assert gone not in {x.split(" ", 1)[0] for x in txt if x}


@pytest.mark.parametrize("command", ["dump", "fit", "apply"])
def test_a_data_dir_given_as_output_is_refused_and_left_intact(
    synth_km_labels: dict[str, Path], small_dir: Path, command: str, capsys
) -> None:
    """``--out DATA``: the dump and apply used to mix their files into the data dir, and
    ``kmeans fit --overwrite`` replaced the whole dir with the model (wav.scp gone)."""
    units = synth_km_labels["dev"].parents[2]
    store, out = str(units / "mfcc" / "dev"), str(small_dir)
    args = {
        "dump": ["features", "dump", "--data", out, "--kind", "mfcc", "--out", out],
        "fit": ["kmeans", "fit", "--features", store, "--k", "4", "--out", out, "--overwrite",
                "--device", "cpu"],
        "apply": ["kmeans", "apply", "--kmeans", str(units / "km"), "--features", store,
                  "--out", out, "--device", "cpu"],
    }[command]  # fmt: skip
    before = {p.name: p.read_bytes() for p in small_dir.iterdir()}
    assert main(args) == 1
    group = "features" if command == "dump" else "kmeans"
    line = _error_line(capsys.readouterr().err, f"speechssl {group}: error: ")
    assert f"{small_dir}: exists and is not a " in line and "wav.scp" in line
    assert {p.name: p.read_bytes() for p in small_dir.iterdir()} == before


def test_rank_of_a_store_another_rank_is_preparing_is_not_refused(
    small_dir: Path, tmp_path: Path
) -> None:
    """Regression (the main job's stage 7): ranks dumping one store at once; rank 1 had
    written ``utterances.txt`` but not yet ``meta.json`` when rank 0 looked, and rank 0 was
    refused as "exists and is not a feature store (it holds utterances.txt)"."""
    out = tmp_path / "store"
    out.mkdir()
    utts = sorted(line.split()[0] for line in (small_dir / "utt2spk").read_text().splitlines())
    (out / "utterances.txt").write_text("".join(f"{u}\n" for u in utts))
    args = ["--data", str(small_dir), "--kind", "mfcc", "--out", str(out), "--device", "cpu"]
    assert _dump(*args, "--nshard", "2", "--rank", "0") == 0
    assert _dump(*args, "--nshard", "2", "--rank", "1") == 0
    assert (out / "meta.json").is_file()


# --- concurrent writers --------------------------------------------------------------------

HOLD_SHARD = (
    "import sys, time\n"
    "from speechssl.utils.lock import exclusive_lock\n"
    "with exclusive_lock(sys.argv[1], 'shard', name=sys.argv[2]):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(60)\n"
)


def _hold(directory: Path, lock_name: str) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_SHARD, str(directory), lock_name],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_second_writer_of_a_store_shard_is_refused_naming_the_holder(
    small_dir: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "store"
    args = ["--data", str(small_dir), "--kind", "mfcc", "--out", str(out), "--nshard", "2"]
    holder = _hold(out, shard_lock_name(1, 2))
    try:
        assert _dump(*args) == 1  # used to crash with a raw FileNotFoundError (temp files)
        line = _error_line(capsys.readouterr().err)
        assert f"shard 1 of 2 of a feature store is in use by PID {holder.pid} on " in line
        assert _dump(*args, "--rank", "0") == 0  # another rank of the same store is free
    finally:
        holder.kill()
        holder.wait()
    assert not list(out.glob(".shard-00001-*.tmp-*"))  # the refused writer touched nothing
    assert _dump(*args) == 0  # the holder is gone: free at once
    assert len(FeatureStore(out)) == len(utt_ids(small_dir))


def test_second_writer_of_a_label_shard_is_refused_naming_the_holder(
    synth_km_labels: dict[str, Path], tmp_path: Path, capsys
) -> None:
    units = synth_km_labels["dev"].parents[2]
    out = tmp_path / "labels"
    args = ["kmeans", "apply", "--kmeans", str(units / "km"), "--features",
            str(units / "mfcc" / "dev"), "--out", str(out), "--device", "cpu"]  # fmt: skip
    holder = _hold(out, ".shard-00000-of-00001.lock")
    try:
        assert main(args) == 1
        line = _error_line(capsys.readouterr().err, "speechssl kmeans: error: ")
        assert f"shard 0 of 1 of a label dir is in use by PID {holder.pid} on " in line
    finally:
        holder.kill()
        holder.wait()
    assert main(args) == 0
    assert (out / "shard-00000-of-00001.done.json").is_file()


def test_second_fit_into_one_kmeans_dir_is_refused_naming_the_holder(
    synth_km_labels: dict[str, Path], tmp_path: Path, capsys
) -> None:
    units = synth_km_labels["dev"].parents[2]
    out = tmp_path / "km"
    args = ["kmeans", "fit", "--features", str(units / "mfcc" / "dev"), "--k", "4",
            "--out", str(out), "--device", "cpu"]  # fmt: skip
    holder = _hold(tmp_path, ".km.kmeans.lock")
    try:
        assert main(args) == 1
        line = _error_line(capsys.readouterr().err, "speechssl kmeans: error: ")
        assert f"k-means output dir km is in use by PID {holder.pid} on " in line
        assert not out.exists()  # the refused fit wrote nothing
    finally:
        holder.kill()
        holder.wait()
    assert main(args) == 0  # the holder is gone: free at once
    assert (out / "kmeans.json").is_file()


def test_labels_from_an_empty_data_dir_are_an_error(
    synth_km_labels: dict[str, Path], tmp_path: Path, capsys
) -> None:
    data = tmp_path / "empty"
    data.mkdir()
    for name in ("wav.scp", "utt2spk", "spk2utt"):
        (data / name).write_text("")
    km = synth_km_labels["dev"].parents[2] / "km"
    args = ["kmeans", "apply", "--kmeans", str(km), "--data", str(data), "--out",
            str(tmp_path / "labels"), "--device", "cpu"]  # fmt: skip
    assert main(args) == 1
    line = _error_line(capsys.readouterr().err, "speechssl kmeans: error: ")
    assert "has no utterances" in line and not (tmp_path / "labels").exists()


# --- a trained run shared by the probes below (secrets in its environment) ----------------


@pytest.fixture(scope="module")
def trained(synth_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("hostile_train")
    exp = root / "exp"
    args = ["model=wav2vec2_tiny", *base_overrides(), f"data.dir={synth_corpus / 'train'}",
            f"trainer.exp_dir={exp}", "trainer.max_steps=2", "trainer.save_every=2",
            "trainer.export_final=true", "trainer.tensorboard=true"]  # fmt: skip
    res = run_train(args, cwd=root, **SECRETS)
    assert res.returncode == 0, res.stderr[-3000:]
    return {"exp": exp, "args": args, "root": root, "out": res.stdout + res.stderr}


def test_secrets_in_the_environment_never_reach_logs_or_outputs(
    trained: dict[str, object], tmp_path: Path
) -> None:
    exp = Path(str(trained["exp"]))
    # a refused run too: its error line is printed with the environment still set
    bad = run_train(["data.dir=/nonexistent", f"trainer.exp_dir={tmp_path / 'e'}"],
                    cwd=tmp_path, **SECRETS)  # fmt: skip
    assert bad.returncode == 1
    texts = {"run output": str(trained["out"]), "refused run": bad.stdout + bad.stderr}
    files = [p for p in exp.rglob("*") if p.is_file()]
    assert any(p.name == "log.jsonl" for p in files) and any(p.parent.name == "tb" for p in files)
    for p in files:
        texts[str(p)] = p.read_bytes().decode("latin-1")
    for name, secret in SECRETS.items():
        for where, text in texts.items():
            assert secret not in text, f"${name} leaked into {where}"


def test_a_config_reading_a_secret_from_the_environment_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from speechssl.downstream.cli import main as probe_main
    from speechssl.train.cli import main as train_main

    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SPEECHSSL_PROBE_DATA", "/data/train")
    for entry, prefix in ((train_main, "speechssl-train"), (probe_main, "speechssl-probe")):
        for var in ("HF_TOKEN", "WANDB_API_KEY", "AWS_SECRET_ACCESS_KEY"):
            with pytest.raises(SystemExit) as exit_:
                entry(["--cfg", "job", f"data.dir=${{oc.env:{var},/tmp}}"])
            assert exit_.value.code == 1
            err = capsys.readouterr().err
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"{prefix}: error: data.dir: "), err
            assert f"reads ${{oc.env:{var}}}, which looks like a secret" in lines[0]
            assert SECRETS[var] not in err
        # other environment variables stay usable in configs (--cfg job prints unresolved)
        with pytest.raises(SystemExit) as exit_:
            entry(["--cfg", "job", "data.dir=${oc.env:SPEECHSSL_PROBE_DATA}"])
        assert exit_.value.code == 0
        assert "dir: ${oc.env:SPEECHSSL_PROBE_DATA}" in capsys.readouterr().out


# --- tampered files -----------------------------------------------------------------------


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x01  # inside the last tensor's data: finite, loads, gives other features
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("which", ["step", "final"])
def test_dump_with_a_tampered_model_dir_is_refused(
    trained: dict[str, object], synth_corpus: Path, tmp_path: Path, which: str, capsys
) -> None:
    exp = Path(str(trained["exp"]))
    src = exp / "checkpoints" / ckpt.step_dir_name(2) if which == "step" else exp / "final"
    model = tmp_path / "model"
    shutil.copytree(src, model)
    args = ["--data", str(synth_corpus / "dev"), "--kind", "model", "--checkpoint", str(model),
            "--layer", "1", "--device", "cpu"]  # fmt: skip
    assert _dump(*args, "--out", str(tmp_path / "good")) == 0  # untouched: it dumps
    _flip_a_byte(model / WEIGHTS_NAME)
    capsys.readouterr()
    assert _dump(*args, "--out", str(tmp_path / "bad")) == 1
    line = _error_line(capsys.readouterr().err)
    record = "meta.json" if which == "step" else CONFIG_NAME
    assert f"{WEIGHTS_NAME}: SHA-256 does not match {record}" in line
    assert not list((tmp_path / "bad").glob("shard-*"))


def test_nan_weights_with_matching_checksums_are_refused(
    trained: dict[str, object], tmp_path: Path
) -> None:
    model = tmp_path / "final"
    shutil.copytree(Path(str(trained["exp"])) / "final", model)
    weights = dict(load_file(str(model / WEIGHTS_NAME)))
    name = next(k for k, v in weights.items() if v.is_floating_point() and v.numel() > 1)
    weights[name][0] = float("nan")
    save_file(weights, str(model / WEIGHTS_NAME), metadata={"format": "pt"})
    desc = json.loads((model / CONFIG_NAME).read_text())
    desc["files"][WEIGHTS_NAME] = file_record(model / WEIGHTS_NAME)  # a consistent tampering
    (model / CONFIG_NAME).write_text(json.dumps(desc))
    with pytest.raises(CheckpointError, match=rf"NaN or infinite values in {name}"):
        load_model_dir(model)


def test_resume_from_nan_weights_with_matching_checksums_is_refused(
    trained: dict[str, object], tmp_path: Path
) -> None:
    exp = tmp_path / "exp"
    shutil.copytree(Path(str(trained["exp"])), exp)
    step = exp / "checkpoints" / ckpt.step_dir_name(2)
    weights = dict(load_file(str(step / ckpt.MODEL_FILE)))
    name = next(k for k, v in weights.items() if v.is_floating_point() and v.numel() > 1)
    weights[name][-1] = float("inf")
    save_file(weights, str(step / ckpt.MODEL_FILE), metadata={"format": "pt"})
    meta = json.loads((step / ckpt.META_FILE).read_text())
    meta["files"][ckpt.MODEL_FILE] = file_record(step / ckpt.MODEL_FILE)
    (step / ckpt.META_FILE).write_text(json.dumps(meta))
    res = run_train([*_args_for(trained, exp), "trainer.max_steps=4"], cwd=tmp_path)
    assert res.returncode == 1
    line = _error_line(res.stderr, "speechssl-train: error: ")
    assert f"NaN or infinite values in {name}" in line and "never resumed from" in line
    assert not (exp / "checkpoints" / ckpt.step_dir_name(4)).exists()


def _args_for(trained: dict[str, object], exp: Path) -> list[str]:
    """The trained run's command line, pointed at another exp dir."""
    args: list[str] = trained["args"]  # type: ignore[assignment]
    return [f"trainer.exp_dir={exp}" if a.startswith("trainer.exp_dir=") else a for a in args]


def test_dump_from_a_transformers_export_with_a_nan_weight_is_refused(
    synth_corpus: Path, tmp_path: Path, capsys
) -> None:
    from speechssl.interop.hf import export_to_transformers
    from speechssl.models import create_model

    export = tmp_path / "export"
    export_to_transformers(create_model("hubert_tiny", **{"encoder.num_layers": 2}), export)
    weights = dict(load_file(str(export / "model.safetensors")))
    name = next(k for k, v in weights.items() if v.is_floating_point() and v.ndim == 2)
    weights[name][0, 0] = float("nan")
    save_file(weights, str(export / "model.safetensors"), metadata={"format": "pt"})
    args = ["--data", str(synth_corpus / "dev"), "--kind", "model", "--checkpoint", str(export),
            "--layer", "1", "--device", "cpu", "--out", str(tmp_path / "s")]  # fmt: skip
    assert _dump(*args) == 1
    line = _error_line(capsys.readouterr().err)
    assert "NaN or inf" in line and str(export) in line and name.split(".")[-2] in line
    assert not list((tmp_path / "s").glob("shard-*"))


# --- malicious pickles --------------------------------------------------------------------


class _Payload:
    """Unpickling this creates a directory: proof that the pickle ran."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.makedirs, (self.target,))


def test_malicious_trainer_state_with_matching_checksums_never_runs(
    trained: dict[str, object], tmp_path: Path
) -> None:
    exp = tmp_path / "exp"
    shutil.copytree(Path(str(trained["exp"])), exp)
    step = exp / "checkpoints" / ckpt.step_dir_name(2)
    target = tmp_path / "pwned"
    with open(step / ckpt.STATE_FILE, "wb") as fh:
        pickle.dump({"optimizer": _Payload(target)}, fh)
    meta = json.loads((step / ckpt.META_FILE).read_text())
    meta["files"][ckpt.STATE_FILE] = file_record(step / ckpt.STATE_FILE)
    (step / ckpt.META_FILE).write_text(json.dumps(meta))
    res = run_train([*_args_for(trained, exp), "trainer.max_steps=4"], cwd=tmp_path)
    assert res.returncode == 1
    line = _error_line(res.stderr, "speechssl-train: error: ")
    assert f"{ckpt.STATE_FILE}: cannot read trainer state" in line
    assert "weights-only load refuses" in line and "nothing in it was run" in line
    assert not target.exists()


@pytest.fixture(scope="module")
def evil_pt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``evil.pt``: a pickle whose payload creates ``pwned/`` when torch.load unpickles it."""
    root = tmp_path_factory.mktemp("evil")
    target = root / "pwned"
    evil = root / "evil.pt"
    with open(evil, "wb") as fh:
        pickle.dump(_Payload(target), fh)
    # the payload is live: a plain unpickling runs it (in a child, to keep this process clean)
    code = f"import torch; torch.load({str(evil)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, timeout=120)
    assert target.is_dir()
    target.rmdir()
    return evil, target


def test_torch_load_through_a_hydra_callback_is_refused_from_the_command_line(
    evil_pt: tuple[Path, Path], tmp_path: Path
) -> None:
    evil, target = evil_pt
    callback = f"+hydra.callbacks.e={{_target_: torch.load, f: {evil}, weights_only: false}}"
    res = run_train(["data.dir=d", f"trainer.exp_dir={tmp_path / 'e'}", callback], cwd=tmp_path)
    assert res.returncode == 1
    assert "Hydra's own settings" in _error_line(res.stderr, "speechssl-train: error: ")
    assert not target.exists() and not (tmp_path / "e").exists()


def test_torch_load_through_a_hydra_callback_is_refused_from_a_config_dir(
    evil_pt: tuple[Path, Path], tmp_path: Path
) -> None:
    evil, target = evil_pt
    user = tmp_path / "conf" / "model"
    user.mkdir(parents=True)
    (user / "evil.yaml").write_text(
        "# @package _global_\nmodel:\n  name: hubert_tiny\nhydra:\n  callbacks:\n    e:\n"
        f"      _target_: torch.load\n      f: {evil}\n      weights_only: false\n"
    )
    res = run_train(["--config-dir", str(user.parent), "model=evil", "data.dir=d",
                     f"trainer.exp_dir={tmp_path / 'e'}"], cwd=tmp_path)  # fmt: skip
    assert res.returncode == 1
    assert "runs no Hydra callbacks" in _error_line(res.stderr, "speechssl-train: error: ")
    assert not target.exists() and not (tmp_path / "e").exists()


# --- kills during writes --------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


@pytest.mark.slow  # ~25 s on a loaded 2-core VM; tests/unit/test_utils_lock.py is the fast twin
def test_killed_trainer_frees_its_exp_dir_at_once_though_its_worker_lives(
    synth_corpus: Path, tmp_path: Path
) -> None:
    """The CI failure: with an ``flock`` the orphaned DataLoader worker kept the lock, and the
    resumed run was refused as 'in use'."""
    exp = tmp_path / "exp"
    args = ["model=wav2vec2_tiny", *base_overrides(), f"data.dir={synth_corpus / 'train'}",
            f"trainer.exp_dir={exp}", "data.num_workers=1", "trainer.save_every=2"]  # fmt: skip
    proc = start_train([*args, "trainer.max_steps=100000"], cwd=tmp_path, log=tmp_path / "a.out")
    workers: list[int] = []
    try:
        first = exp / "checkpoints" / ckpt.step_dir_name(2)
        wait_for(lambda: (first / ckpt.META_FILE).exists(), proc, 240, "checkpoint 2")
        workers = _children(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        alive = [w for w in workers if Path(f"/proc/{w}").exists()]
        assert alive, "no live data-loader worker: the probe would test nothing"
        with exclusive_lock(exp, "training exp dir"):  # free at once, though the worker lives
            pass
        res = run_train([*args, "trainer.max_steps=4"], cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
        assert events(exp, "resume")[-1]["step"] >= 2
    finally:
        for pid in [proc.pid, *workers]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_nonfinite_model_dir_saved_by_hand_is_refused_on_load(tmp_path: Path) -> None:
    """A diverged model saved by hand (outside the trainer) is refused by the one loader."""
    from speechssl.models import create_model
    from speechssl.models.io import save_model_dir

    model = create_model("wav2vec2_tiny")
    with torch.no_grad():
        next(model.parameters()).fill_(float("inf"))
    save_model_dir(model, tmp_path / "m")
    with pytest.raises(CheckpointError, match="NaN or infinite values"):
        load_model_dir(tmp_path / "m")
