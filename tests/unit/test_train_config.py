"""`speechssl-train` configuration: Hydra composition, overrides, refusals, plotting CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from speechssl.errors import ConfigError
from speechssl.train.cli import find_config_dir
from speechssl.train.config import TrainConfig, register_configs, to_train_config

REPO = Path(__file__).resolve().parents[2]


def _compose(overrides: list[str]) -> TrainConfig:
    register_configs()
    config_dir = find_config_dir()
    assert config_dir is not None and config_dir == REPO / "speechssl" / "configs"
    with initialize_config_dir(str(config_dir), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    return to_train_config(cfg)


def test_groups_and_overrides_compose_into_the_schema() -> None:
    cfg = _compose(
        [
            "model=wav2vec2_tiny",
            "data=synth",
            "optim=tiny",
            "data.dir=d",
            "data.labels=[l1,l2]",
            "trainer.exp_dir=e",
            "trainer.precision=bf16",
            "optim.lr=3e-4",
            "+model.overrides.encoder.num_layers=2",
            "resume=never",
        ]
    )
    assert cfg.model.name == "wav2vec2_tiny" and cfg.model.overrides == {
        "encoder": {"num_layers": 2}
    }
    assert cfg.data.labels == ["l1", "l2"] and cfg.data.crop_seconds == 4.0  # from data=synth
    assert cfg.optim.lr == 3e-4 and cfg.optim.warmup_steps == 20  # optim=tiny, then override
    assert cfg.trainer.precision == "bf16" and cfg.resume == "never"


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("+model._target_=os.system", "may not instantiate"),
        ("+model.overrides.head._target_=builtins.eval", "model.overrides.head._target_"),
        ("trainer.precision=fp8", "trainer.precision"),
        ("data.crop_mode=random", "data.crop_mode"),
        ("trainer.grad_accum=0", "trainer.grad_accum"),
        # optimizer fields: finite and in range (issue 15: lr=inf/nan, eps=0 trained NaNs)
        ("optim.lr=inf", r"optim\.lr must be finite"),
        ("optim.lr=nan", r"optim\.lr must be finite"),
        ("optim.lr=0", r"optim\.lr must be > 0"),
        ("optim.eps=0", r"optim\.eps must be > 0"),
        ("optim.eps=-1e-8", r"optim\.eps must be > 0"),
        ("optim.eps=nan", r"optim\.eps must be finite"),
        ("optim.betas=[0.9,1.0]", r"optim\.betas must be two values in \[0, 1\)"),
        ("optim.betas=[-0.1,0.98]", r"optim\.betas"),
        ("optim.betas=[0.9,nan]", r"optim\.betas"),
        ("optim.betas=[0.9]", r"optim\.betas"),
        ("optim.weight_decay=-0.01", r"optim\.weight_decay must be >= 0"),
        ("optim.weight_decay=inf", r"optim\.weight_decay must be finite"),
        ("trainer.clip_norm=-1", r"trainer\.clip_norm must be a finite value > 0, or 0"),
        ("trainer.clip_norm=inf", r"trainer\.clip_norm"),
        ("trainer.clip_norm=nan", r"trainer\.clip_norm"),
        ("data.channels=left", r"data\.channels must be error, mean or select:N"),
        ("data.channels=select:x", r"data\.channels"),
    ],
)
def test_bad_configs_are_refused(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _compose(["data.dir=d", "trainer.exp_dir=e", override])


def test_clip_norm_zero_means_no_clipping_and_channel_policies_compose() -> None:
    cfg = _compose(["data.dir=d", "trainer.exp_dir=e", "trainer.clip_norm=0",
                    "data.channels=select:1", "data.allow_pipes=true"])  # fmt: skip
    assert cfg.trainer.clip_norm == 0.0
    assert cfg.data.channels == "select:1" and cfg.data.allow_pipes is True


def test_missing_mandatory_value_is_named() -> None:
    with pytest.raises(ConfigError, match=r"data\.dir"):
        _compose(["trainer.exp_dir=e"])


def _run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "speechssl.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_user_config_dir_adds_and_overrides_group_options(tmp_path: Path) -> None:
    user = tmp_path / "myconf"
    (user / "model").mkdir(parents=True)
    (user / "model" / "my_hubert.yaml").write_text(
        "name: hubert_tiny\noverrides:\n  final_dim: 32\n"
    )
    res = _run_cli(
        [
            "--config-dir",
            str(user),
            "--cfg",
            "job",
            "model=my_hubert",
            "data.dir=d",
            f"trainer.exp_dir={tmp_path}/e",
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert "final_dim: 32" in res.stdout and "name: hubert_tiny" in res.stdout


def test_cli_refuses_target_with_a_clear_message(tmp_path: Path) -> None:
    res = _run_cli(
        ["data.dir=d", f"trainer.exp_dir={tmp_path}/e", "+optim._target_=os.system"], cwd=tmp_path
    )
    assert res.returncode == 1
    assert "speechssl-train: error: optim._target_: configs may not instantiate" in res.stderr


def test_plot_command_writes_png(tmp_path: Path) -> None:
    from speechssl.cli.main import main

    exp = tmp_path / "exp"
    exp.mkdir()
    lines = [
        {"kind": "event", "event": "start", "step": 0},
        *(
            {
                "kind": "train",
                "step": s,
                "loss": 5.0 / s,
                "loss/masked": 4.0 / s,
                "acc_masked": 0.1 * s,
                "lr": 1e-4 * s,
                "grad_norm": 1.0,
                "loss_scale": 1.0,
                "audio_sec_per_sec": 100.0,
                "padding_fraction": 0.0,
                "crop_waste": 0.2,
            }
            for s in range(1, 6)
        ),
        {"kind": "dev", "step": 5, "loss": 1.2, "acc_masked": 0.4},
    ]
    (exp / "log.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in lines) + '{"kind": "tr'
    )  # torn
    assert main(["train", "plot", str(exp)]) == 0
    png = exp / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["train", "plot", str(tmp_path / "nope")]) == 1
