"""Every image model trains from the command line (``python -m speechssl.train``) on a tiny
image folder written by the test (real PNG files, one subdirectory per class, as
``torchvision.datasets.ImageFolder`` reads it); a model/data modality mismatch and a bad
image folder are refused with one line; the digits linear probe runs on the exported model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from train_helpers import losses, run_train, train_env

from speechssl.data.images import ImageError, load_image_folder
from speechssl.models import list_models

# two representative models run in the default suite (a joint-embedding and a masked one;
# the task and data path are the same for all); every image model in the slow suite
FAST = ("simclr_vision_tiny", "mae_vision_tiny")
IMAGE = [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in list_models("image")]
COMMON = ["optim=tiny", "trainer=cpu_demo", "trainer.progress_bar=false", "trainer.tensorboard=false"]  # fmt: skip


def write_image_folder(root: Path, per_class: int = 6, size: int = 12) -> Path:
    """Three classes of RGB PNGs (bars of different orientation plus noise), 12x12: the
    loader converts them to the tiny presets' 8x8 grey."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(["horizontal", "vertical", "diagonal"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            x = rng.uniform(0, 60, (size, size, 3))
            k = int(rng.integers(2, size - 2))
            if c == 0:
                x[k - 1 : k + 1, :, :] = 255
            elif c == 1:
                x[:, k - 1 : k + 1, :] = 255
            else:
                np.fill_diagonal(x[:, :, 0], 255)
                np.fill_diagonal(x[:, :, 1], 255)
            Image.fromarray(x.astype(np.uint8), "RGB").save(root / name / f"img{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("images") / "train")


@pytest.mark.parametrize("name", IMAGE)
def test_image_model_trains_from_the_command_line(name, image_folder, tmp_path):
    exp = tmp_path / "exp"
    proc = run_train(
        [f"model={name}", "data=images", f"data.dir={image_folder}", "data.max_batch_utts=6",
         "trainer.max_steps=3", "trainer.log_every=1", f"trainer.exp_dir={exp}", *COMMON],
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]
    steps = losses(exp)
    assert sorted(steps) == [1, 2, 3] and all(np.isfinite(v) for v in steps.values())
    desc = json.loads((exp / "final" / "model.json").read_text())
    assert desc["name"] == name if "name" in desc else name in json.dumps(desc)
    assert "18 images in 3 classes" in proc.stdout


def test_modality_mismatch_is_refused_up_front(image_folder, tmp_path):
    proc = run_train(
        ["model=simclr_vision_tiny", "data=synth", f"data.dir={tmp_path}",
         f"trainer.exp_dir={tmp_path / 'a'}", *COMMON],
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "takes image input" in err[0] and "data=images" in err[0]
    assert not (tmp_path / "a").exists()
    proc = run_train(
        ["model=hubert_tiny", "data=images", f"data.dir={image_folder}",
         f"trainer.exp_dir={tmp_path / 'b'}", *COMMON],
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "takes audio input" in proc.stderr and "Traceback" not in proc.stderr
    # the recommended group works: data=images with the image model
    proc = run_train(
        ["model=simclr_vision_tiny", "data=images", f"data.dir={image_folder}",
         "data.max_batch_utts=6", "trainer.max_steps=1", f"trainer.exp_dir={tmp_path / 'c'}",
         *COMMON],
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_bad_image_folders_are_named(tmp_path):
    from PIL import Image

    with pytest.raises(ImageError, match="not an image folder"):
        load_image_folder(tmp_path / "missing", 1, (8, 8))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="no class subdirectory"):
        load_image_folder(tmp_path / "empty", 1, (8, 8))
    root = tmp_path / "f"
    (root / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(root / "a" / "ok.png")
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ImageError, match=r"broken\.png.*cannot decode"):
        load_image_folder(root, 1, (8, 8))
    (root / "a" / "broken.png").unlink()
    (root / "a" / "notes.txt").write_text("hi")
    with pytest.raises(ImageError, match=r"notes\.txt.*not an image file"):
        load_image_folder(root, 1, (8, 8))
    (root / "a" / "notes.txt").unlink()
    loaded = load_image_folder(root, 3, (4, 4))  # grey -> RGB, resized
    assert loaded.images.shape == (1, 3, 4, 4) and loaded.image_ids == ["a/ok.png"]
    # from the command line: one line naming the file
    (root / "a" / "broken.png").write_bytes(b"garbage")
    proc = run_train(
        ["model=mae_vision_tiny", "data=images", f"data.dir={root}", "data.max_batch_utts=1",
         f"trainer.exp_dir={tmp_path / 'x'}", *COMMON],
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "broken.png" in lines[0], proc.stderr


def test_digits_probe_reads_the_exported_model(tmp_path):
    exp = tmp_path / "exp"
    proc = run_train(
        ["model=mae_vision_tiny", "data=digits", "trainer.max_steps=2", f"trainer.exp_dir={exp}",
         *COMMON],
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    probe = subprocess.run(
        [sys.executable, "-m", "speechssl.models.vision_probe", "--model-dir", str(exp / "final")],
        cwd=tmp_path, env=train_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    rows = [json.loads(line) for line in probe.stdout.splitlines()]
    assert [r["encoder"] for r in rows] == ["pretrained", "random_init"]
    assert all(r["train_images"] == 1000 and r["test_images"] == 797 for r in rows)
    # a 10-class probe on real digits is far above chance even on random features
    assert all(0.3 < r["accuracy"] <= 1.0 for r in rows)


def test_batch_statistics_losses_need_two_images(image_folder, tmp_path):
    """VICReg / Barlow Twins refuse one-image batches with the option to change, and the
    recommended value works (in-process, through the same config composition)."""
    from speechssl.distributed import current_env
    from speechssl.errors import ConfigError
    from speechssl.train.cli import compose
    from speechssl.train.config import to_train_config
    from speechssl.train.images import ImageTrainTask

    def task(batch: int) -> ImageTrainTask:
        cfg = compose(
            ["model=barlow_twins_vision_tiny", "data=images", f"data.dir={image_folder}",
             f"data.max_batch_utts={batch}", f"trainer.exp_dir={tmp_path / 'exp'}"]
        )  # fmt: skip
        return ImageTrainTask(to_train_config(cfg), current_env("cpu"))

    with pytest.raises(ConfigError, match=r"data\.max_batch_utts to 2 or more"):
        task(1)
    t = task(2)
    batch = next(iter(t.batches(0, 0)))
    assert len(batch.image_ids) == 2 and t.batches_per_rank(0) == 9
    out = t.forward(t.model, batch)
    assert np.isfinite(out.loss.item()) and "loss/redundancy" in out.scalars


@pytest.mark.parametrize(
    "name", ["dino_vision_tiny", pytest.param("simclr_vision_tiny", marks=pytest.mark.slow)]
)
def test_image_training_resumes_bitwise(name, image_folder, tmp_path):
    """Views, masks and batch order are functions of (seed, epoch, batch), and the EMA
    teacher and DINO centre are checkpointed: a run resumed from step 2 logs the same
    losses at steps 3 and 4 as an uninterrupted one."""
    from speechssl.train import checkpoint as ckpt

    common = [f"model={name}", "data=images", f"data.dir={image_folder}", "data.max_batch_utts=6",
              "trainer.max_steps=4", "trainer.save_every=2", "trainer.log_every=1", *COMMON]  # fmt: skip
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    proc = run_train([*common, f"trainer.exp_dir={straight}"], cwd=tmp_path, OMP_NUM_THREADS="1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    first = straight / "checkpoints" / ckpt.step_dir_name(2)
    proc = run_train(
        [*common, f"trainer.exp_dir={resumed}", f"resume={first}"],
        cwd=tmp_path,
        OMP_NUM_THREADS="1",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    want, got = losses(straight), losses(resumed)
    assert sorted(want) == [1, 2, 3, 4] and sorted(got) == [3, 4]
    for step in (3, 4):
        assert got[step] == want[step], f"step {step}: {got[step]!r} != {want[step]!r}"
