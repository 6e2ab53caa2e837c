"""A non-editable install (the built wheel in a fresh venv) has every config group.

Offline: the wheel is built from a copy of the tree with this interpreter's setuptools and
wheel (``--no-build-isolation``), installed with ``--no-deps`` into a fresh venv whose only
view of the heavy dependencies (torch, hydra, ...) is a ``.pth`` line naming this
interpreter's site-packages. A ``.pth`` line adds a plain path, so the editable install of
the shared environment (a finder hook run by its own ``.pth`` file) is not active there: the
speechssl that runs is the one from the wheel, as the test checks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _copy_tree(dest: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split("\0")  # fmt: skip
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_has_every_config_group(tmp_path: Path) -> None:
    src, dist, venv, work = (tmp_path / d for d in ("src", "dist", "venv", "work"))
    for d in (src, dist, work):
        d.mkdir()
    _copy_tree(src)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)],
        env=env, check=True, timeout=300,
    )  # fmt: skip
    (wheel,) = dist.glob("speechssl-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    vpy = venv / "bin" / "python"
    purelib = subprocess.run(
        [vpy, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    # the dependencies from the shared environment, after the venv's own site-packages
    (Path(purelib) / "shared_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [*pip, "--python", str(vpy), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        env=env, check=True, timeout=300,
    )  # fmt: skip

    where = subprocess.run(
        [vpy, "-c", "import speechssl; print(speechssl.__file__)"],
        cwd=work, env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert where.startswith(purelib), where  # the wheel's copy, not the editable checkout

    train = venv / "bin" / "speechssl-train"
    res = subprocess.run(
        [train, "--help"], cwd=work, env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    packaged = sorted(p.stem for p in (REPO / "speechssl" / "configs" / "model").glob("*.yaml"))
    assert f"  model: {' '.join(packaged)}" in res.stdout
    assert "  optim: adamw tiny" in res.stdout and "  trainer: cpu_demo default" in res.stdout
    res = subprocess.run(
        [train, "--cfg", "job", "model=data2vec_audio_base", "data=synth", "optim=tiny",
         "trainer=cpu_demo", "data.dir=d", "trainer.exp_dir=e"],
        cwd=work, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "name: data2vec_audio_base" in res.stdout and "warmup_steps: 20" in res.stdout
    res = subprocess.run(
        [venv / "bin" / "speechssl", "--help"], cwd=work, env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0 and "kmeans" in res.stdout, res.stderr
