"""`speechssl export hf`: every family through the command line, the model card (read back
with ``huggingface_hub.ModelCard.load``, its loading snippet executed), atomic refusal of an
existing OUT, and pushes to a stand-in hub on 127.0.0.1 (``HF_ENDPOINT``) run as real
subprocesses so ``huggingface_hub`` reads its environment as a user's shell would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hub_server import start_hub_stub
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForPreTraining

from speechssl.cli.main import main
from speechssl.models import create_model
from speechssl.models.io import save_model_dir

REPO = Path(__file__).resolve().parents[2]
TOKEN = "hf_speechsslTestToken0123456789abcdef"
TINY = ["hubert_tiny", "wav2vec2_tiny", "w2v_bert_tiny", "data2vec_audio_tiny", "wavlm_tiny",
        "best_rq_tiny"]  # fmt: skip
BARE_CLASS = {
    "hubert_tiny": "HubertModel",
    "wav2vec2_tiny": "Wav2Vec2Model",
    "w2v_bert_tiny": "Wav2Vec2BertModel",
    "data2vec_audio_tiny": "Data2VecAudioModel",
    "wavlm_tiny": "WavLMModel",
    "best_rq_tiny": "Wav2Vec2BertModel",  # BEST-RQ's encoder is w2v-BERT's
}


def _model_dir(tmp_path: Path, name: str) -> Path:
    torch.manual_seed(0)
    return save_model_dir(create_model(name), tmp_path / f"{name}-md")


def _cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(
        [sys.executable, "-m", "speechssl.cli.main", *args],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _no_absolute_paths(out: Path, tmp_path: Path) -> None:
    for f in out.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".md"):
            text = f.read_text()
            assert str(tmp_path) not in text and str(REPO) not in text, f


@pytest.mark.parametrize("name", TINY)
def test_export_bare_and_default_load_cleanly(name, tmp_path, capsys):
    md = _model_dir(tmp_path, name)
    assert main(["export", "hf", str(md), str(tmp_path / "bare"), "--bare"]) == 0
    assert main(["export", "hf", str(md), str(tmp_path / "full")]) == 0
    bare, full = tmp_path / "bare", tmp_path / "full"
    assert not (bare / "speechssl").exists() and (full / "speechssl" / "model.json").is_file()
    hf, info = AutoModel.from_pretrained(bare, output_loading_info=True)
    assert type(hf).__name__ == BARE_CLASS[name]
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    if name == "wav2vec2_tiny":
        pre, info = AutoModelForPreTraining.from_pretrained(full, output_loading_info=True)
        assert type(pre).__name__ == "Wav2Vec2ForPreTraining"
        assert not info["missing_keys"] and not info["unexpected_keys"], info
    else:  # the default export is the bare class plus the side dir
        hf, info = AutoModel.from_pretrained(full, output_loading_info=True)
        assert type(hf).__name__ == BARE_CLASS[name]
        assert not info["missing_keys"] and not info["unexpected_keys"], info
    if name == "best_rq_tiny":  # the random quantizer travels in the side dir
        side = load_file(str(full / "speechssl" / "heads.safetensors"))
        assert {"quantizers.0.codebook", "quantizers.0.projection"} <= set(side)
        assert "head.classifiers.0.weight" in side
        assert main(["import", "hf", str(full), str(tmp_path / "back")]) == 0
        assert json.loads((tmp_path / "back" / "model.json").read_text())["name"] == name
    for out in (bare, full):
        names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
        assert "README.md" in names and not any(n.endswith((".bin", ".pt", ".pth")) for n in names)
        _no_absolute_paths(out, tmp_path)
        card = ModelCard.load(out / "README.md")
        assert card.data.library_name == "transformers"
        assert card.data.pipeline_tag == "feature-extraction"
        assert {"speechssl", create_model(name).family} <= set(card.data.tags)


def test_card_snippet_runs_and_existing_out_is_refused(tmp_path, capsys):
    md = _model_dir(tmp_path, "w2v_bert_tiny")
    out = tmp_path / "w2vbert-export"
    assert main(["export", "hf", str(md), str(out), "--license", "apache-2.0"]) == 0
    card = ModelCard.load(out / "README.md")
    assert card.data.license == "apache-2.0"
    code = card.text.split("```python\n", 1)[1].split("```", 1)[0]
    assert 'model_id = "w2vbert-export"' in code  # relative: runs from the export's parent
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        scope: dict = {}
        exec(compile(code, "README.md", "exec"), scope)  # the card's own snippet
    finally:
        os.chdir(cwd)
    hidden = scope["features"]
    assert len(hidden) == 5 and hidden[-1].shape[0] == 1 and hidden[-1].shape[2] == 128
    before = (out / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["export", "hf", str(md), str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "exists" in err and "--overwrite" in err
    assert (out / "model.safetensors").read_bytes() == before
    # the option the error recommends works
    assert main(["export", "hf", str(md), str(out), "--bare", "--overwrite"]) == 0
    assert not (out / "speechssl").exists()


def _training_record(tmp_path: Path, synth_corpus: Path, name: str = "hubert_tiny") -> Path:
    """A model dir with the training record ``speechssl-train`` writes into ``final/``
    (``extra.training``), its experiment dir's ``log.jsonl``/``config.yaml`` in the trainer's
    layout, and a recipe summary (results.json from ``speechssl recipe summary``'s schema,
    probe.json rows ``{upstream, task, metric, value}``)."""
    exp = tmp_path / "exp" / "hubert" / "iter1" / "train"
    exp.mkdir(parents=True)
    (exp / "log.jsonl").write_text(
        json.dumps(
            {"kind": "event", "event": "data", "split": "train", "kept": 12, "kept_hours": 0.0081}
        )
        + "\n"
    )
    (exp / "config.yaml").write_text(
        yaml.safe_dump(
            {"optim": {"name": "adamw", "lr": 0.0005, "schedule": "polynomial_decay"},
             "trainer": {"max_steps": 40, "precision": "fp32", "exp_dir": str(exp)}}
        )
    )  # fmt: skip
    km = tmp_path / "exp" / "hubert" / "iter1" / "kmeans"
    km.mkdir()
    (km / "model.json").write_text('{"k": 32}\n')
    torch.manual_seed(0)
    training = {
        "exp_dir": str(exp),
        "step": 40,
        "data": str(synth_corpus / "train"),
        "labels": [{"stream": "km", "dir": str(tmp_path / "labels"), "k": 32, "label_rate": 50.0,
                    "kmeans": str(km), "source": "mfcc"}],
    }  # fmt: skip
    md = save_model_dir(
        create_model(name, num_classes=(32,)), exp / "final", extra={"training": training}
    )
    summary = tmp_path / "exp" / "hubert" / "summary"
    summary.mkdir()
    (summary / "results.json").write_text(
        json.dumps(
            {"units": [{"name": "iter1", "features": "mfcc", "k": 32, "pnmi": 0.4321,
                        "phone_purity": 0.5, "cluster_purity": 0.25, "perplexity": 20.5}],
             "train": [{"name": "iter1", "model": "hubert_tiny", "step": 40, "loss": 3.25,
                        "dev_loss": 3.5}], "checks": [], "failed_checks": []}
        )
    )  # fmt: skip
    (summary / "probe.json").write_text(
        json.dumps([{"upstream": "iter1", "task": "ks", "metric": "accuracy", "value": 0.8125}])
    )
    return md


def test_card_tells_what_was_trained_on_what(tmp_path, synth_corpus, capsys):
    md = _training_record(tmp_path, synth_corpus)
    summary = tmp_path / "exp" / "hubert" / "summary"
    out = tmp_path / "export"
    args = ["export", "hf", str(md), str(out), "--summary", str(summary)]
    assert main([*args, "--base-model", "facebook/hubert-base-ls960"]) == 0
    assert "SYNTHETIC" in capsys.readouterr().out
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "facebook/hubert-base-ls960"
    assert "synthetic-data" in card.data.tags
    text = card.text
    assert "Warning: trained on synthetic speech" in text
    assert "| data dir | `train` (0.01 h kept) |" in text
    assert "| updates | 40 |" in text and "K=32 at 50.0 Hz from mfcc" in text
    assert "| lr | 0.0005 |" in text and "| max_steps | 40 |" in text
    assert "| iter1 | mfcc | 32 | 0.432 |" in text  # unit quality
    assert "| iter1 | ks | accuracy | 0.8125 |" in text  # probe rows
    assert (out / "speechssl" / "kmeans" / "model.json").read_text() == '{"k": 32}\n'
    desc = json.loads((out / "speechssl" / "model.json").read_text())
    assert desc["export"]["kmeans"] == {"source": "kmeans", "copy": "speechssl/kmeans"}
    _no_absolute_paths(out, tmp_path)
    # a malformed probe table is named, not skipped
    (summary / "probe.json").write_text('[{"task": "ks"}]')
    assert main([*args, "--overwrite"]) == 1
    assert "probe.json" in capsys.readouterr().err


def test_wavlm_export_carries_its_kmeans_model(tmp_path, synth_corpus):
    """WavLM trains on k-means labels like HuBERT: the default export copies the k-means
    model its training record names; --bare has no place for it."""
    md = _training_record(tmp_path, synth_corpus, "wavlm_tiny")
    assert main(["export", "hf", str(md), str(tmp_path / "full")]) == 0
    assert (tmp_path / "full" / "speechssl" / "kmeans" / "model.json").is_file()
    card = ModelCard.load(tmp_path / "full" / "README.md")
    assert "wavlm" in card.data.tags and "WavLMModel" in card.text
    assert main(["export", "hf", str(md), str(tmp_path / "bare"), "--bare"]) == 0
    assert not (tmp_path / "bare" / "speechssl").exists()


def test_dry_run_lists_the_upload(tmp_path, capsys):
    md = _model_dir(tmp_path, "hubert_tiny")
    out = tmp_path / "dry"
    assert main(["export", "hf", str(md), str(out), "--push", "me/tiny", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "dry run: would upload to me/tiny:" in printed
    listed = dict(line.strip().split("\t") for line in printed.splitlines() if "\t" in line)
    on_disk = {p.relative_to(out).as_posix(): str(p.stat().st_size)
               for p in out.rglob("*") if p.is_file()}  # fmt: skip
    assert listed == on_disk and "model.safetensors" in listed
    # the card's snippet names the repo it is pushed to
    assert 'model_id = "me/tiny"' in (out / "README.md").read_text()


def test_push_sends_the_export_and_never_the_token(tmp_path):
    md = _model_dir(tmp_path, "hubert_tiny")
    stub, server = start_hub_stub()
    try:
        env = {"HF_ENDPOINT": stub.url, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf")}
        res = _cli(
            "-vv", "export", "hf", str(md), "out", "--push", "me/tiny", "--private",
            "--revision", "exp1", "--commit-message", "tiny hubert", cwd=tmp_path, **env,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert f"{stub.url}/me/tiny/commit/" in res.stdout
        for text in (res.stdout, res.stderr):
            assert TOKEN not in text
        # (huggingface_hub may also send requests of its own, e.g. telemetry: look ours up)
        create = next(r for r in stub.requests if r.path == "/api/repos/create")
        assert create.body["name"] == "tiny" and create.body["organization"] == "me"
        assert create.body.get("visibility") == "private" or create.body.get("private") is True
        paths = stub.paths()
        branch = paths.index("POST /api/models/me/tiny/branch/exp1")
        assert paths.index("POST /api/repos/create") < branch
        assert branch < paths.index("POST /api/models/me/tiny/preupload/exp1")
        commit = next(r for r in stub.requests if "/commit/" in r.path)
        assert commit.path == "/api/models/me/tiny/commit/exp1"
        assert commit.body[0]["value"]["summary"] == "tiny hubert"
        ours = [r for r in stub.requests if "/api/repos/" in r.path or "/api/models/" in r.path]
        assert len(ours) >= 4
        assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in ours)
        local = {p.relative_to(tmp_path / "out").as_posix(): p.read_bytes()
                 for p in (tmp_path / "out").rglob("*") if p.is_file()}  # fmt: skip
        assert stub.files == local
        # --create-pr: the commit asks for a pull request and the PR url is printed
        pr = _cli("export", "hf", str(md), "out", "--overwrite", "--push", "me/tiny",
                  "--create-pr", cwd=tmp_path, **env)  # fmt: skip
        assert pr.returncode == 0, pr.stderr
        assert "discussions/1" in pr.stdout
        last = [r for r in stub.requests if "/commit/" in r.path][-1]
        opened = [r for r in stub.requests if r.path == "/api/models/me/tiny/discussions"]
        if opened:  # huggingface_hub's xet pipeline: open the PR, then commit to its ref
            assert len(opened) == 1 and opened[0].body["pullRequest"] is True
            assert "pr" in last.path.split("/commit/")[1]
        else:  # plain create_commit: the commit itself asks for the PR
            assert last.query == {"create_pr": ["1"]}
    finally:
        server.shutdown()


def test_push_failures_are_one_line_and_keep_the_export(tmp_path):
    md = _model_dir(tmp_path, "hubert_tiny")
    env = {"HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf")}
    offline = _cli("export", "hf", str(md), "a", "--push", "me/tiny", cwd=tmp_path,
                   HF_HUB_OFFLINE="1", **env)  # fmt: skip
    assert offline.returncode == 1
    assert offline.stderr.strip().count("\n") == 0 and "HF_HUB_OFFLINE" in offline.stderr
    # nothing listens on this port: a network failure
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = _cli("export", "hf", str(md), "b", "--push", "me/tiny", cwd=tmp_path,
                HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HUB_ETAG_TIMEOUT="2", **env)  # fmt: skip
    assert down.returncode == 1, down.stdout
    lines = down.stderr.strip().splitlines()
    assert len(lines) == 1 and "push to me/tiny failed" in lines[0], down.stderr
    for res in (offline, down):
        assert TOKEN not in res.stdout + res.stderr
    for name in ("a", "b"):
        weights = load_file(str(tmp_path / name / "model.safetensors"))
        assert weights and (tmp_path / name / "README.md").is_file()


def test_option_mistakes_are_one_line_errors(tmp_path, capsys):
    md = _model_dir(tmp_path, "hubert_tiny")
    out = str(tmp_path / "out")
    cases = [
        (["--dry-run"], "give --push too"),
        (["--private"], "--private only applies with --push"),
        (["--push", "me/x", "--create-pr", "--revision", "b"], "drop --revision"),
        (["--summary", str(tmp_path / "nope")], "does not exist"),
        (["--bare", "--kmeans", str(tmp_path)], "bare export has no side directory"),
    ]
    for extra, message in cases:
        assert main(["export", "hf", str(md), out, *extra]) == 1, extra
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, (extra, err)
    assert not (tmp_path / "out").exists()
    # an experiment dir is pointed to its model dir
    exp = tmp_path / "exp"
    save_model_dir(create_model("hubert_tiny"), exp / "final")
    assert main(["export", "hf", str(exp), out]) == 1
    assert f"export its model dir {exp / 'final'}" in capsys.readouterr().err
    assert main(["export", "hf", str(exp / "final"), out]) == 0  # the recommended dir works
