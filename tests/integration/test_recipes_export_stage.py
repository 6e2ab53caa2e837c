"""The recipes' optional last stage: export the last model (and push with --hub-repo), in
--dry-run mode (the command each template would run), off unless asked for."""

from __future__ import annotations

from pathlib import Path

from test_recipes_dryrun import EGS, REPO, run, stages


def test_hubert_export_stage(tmp_path: Path) -> None:
    script = EGS / "synth" / "hubert" / "run.sh"
    off = run(script, "--dry-run", "true", "--exp-dir", tmp_path)
    assert off.returncode == 0, off.stderr
    assert "# stage 13 (export): " in off.stdout and "[not used: do_export is false]" in off.stdout
    assert stages(off.stdout)[13] == []
    on = run(script, "--dry-run", "true", "--exp-dir", tmp_path, "--hub-repo", "me/hubert-synth",
             "--hf-export-opts", "--license apache-2.0 --private")  # fmt: skip
    assert on.returncode == 0, on.stderr
    assert stages(on.stdout)[13] == [
        ["speechssl", "export", "hf", f"{tmp_path}/iter2/train/final", f"{tmp_path}/export/hf",
         "--overwrite", "--summary", f"{tmp_path}/summary", "--push", "me/hubert-synth",
         "--license", "apache-2.0", "--private"]
    ]  # fmt: skip
    one = run(script, "--dry-run", "true", "--exp-dir", tmp_path, "--num-iterations", "1",
              "--hf-export", "true")  # fmt: skip
    assert stages(one.stdout)[13] == [
        ["speechssl", "export", "hf", f"{tmp_path}/iter1/train/final", f"{tmp_path}/export/hf",
         "--overwrite", "--summary", f"{tmp_path}/summary"]
    ]  # fmt: skip
    bad = run(script, "--dry-run", "true", "--exp-dir", tmp_path, "--hf-export", "yes")
    assert bad.returncode != 0 and "--hf-export must be true or false" in bad.stderr


def test_label_free_export_stage(tmp_path: Path) -> None:
    script = REPO / "recipes" / "wav2vec2.sh"
    res = run(script, "--dry-run", "true", "--exp-dir", tmp_path, "--hf-export", "true",
              cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert stages(res.stdout)[6] == [
        ["speechssl", "export", "hf", f"{tmp_path}/train/final", f"{tmp_path}/export/hf",
         "--overwrite", "--summary", f"{tmp_path}/summary"]
    ]  # fmt: skip
