"""Issue 17's loop from the command line, in one run: a local `transformers` HubertModel ->
`speechssl import hf` -> `speechssl-train model.init_from=DIR` for two steps on the bundled
corpus (synthetic speech) -> `speechssl export hf` with a model card -> `--push --dry-run`.
Each command is the one a user types (python -m for the venv-independent entry points)."""

from __future__ import annotations

import json

import torch
from train_helpers import base_overrides, run_train

from speechssl.cli.main import main


def test_import_continue_export_dry_run(synth_corpus, synth_km_labels, tmp_path, capsys) -> None:
    import transformers as tr
    from huggingface_hub import ModelCard

    hf = tmp_path / "hf"
    torch.manual_seed(0)
    # a small HubertModel with the published conv stack (20 ms frames, as the labels expect)
    config = tr.HubertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=96, conv_dim=(32,) * 7,
                             num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)  # fmt: skip
    tr.HubertModel(config).save_pretrained(hf)
    tr.Wav2Vec2FeatureExtractor(do_normalize=False).save_pretrained(hf)
    ours = tmp_path / "ours"
    assert main(["import", "hf", str(hf), str(ours)]) == 0
    capsys.readouterr()

    exp = tmp_path / "exp"
    res = run_train(
        [*base_overrides(), f"data.dir={synth_corpus / 'train'}",
         f"data.labels=[{synth_km_labels['train']}]", f"trainer.exp_dir={exp}",
         "trainer.max_steps=2", "trainer.export_final=true", f"model.init_from={ours}"],
        cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    # a transformers HubertModel has no label embeddings: they start fresh, and the log says so
    assert "initialised fresh: head.label_embeddings" in res.stdout + res.stderr
    final = exp / "final"
    desc = json.loads((final / "model.json").read_text())
    assert desc["config"]["encoder"]["num_layers"] == 2  # the import's architecture

    out = tmp_path / "export"
    args = ["export", "hf", str(final), str(out), "--push", "me/hubert-continued", "--dry-run"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "would upload to me/hubert-continued" in printed
    assert "model.safetensors" in printed and "README.md" in printed
    card = ModelCard.load(out / "README.md")
    assert "speechssl" in card.data.tags and "hubert" in card.data.tags
    assert "synthetic" in card.text.lower()  # trained on the bundled corpus: a plain warning
    # only relative paths inside the export
    for path in out.rglob("*.json"):
        assert str(tmp_path) not in path.read_text(), path

    # the export loads with transformers and runs
    from transformers import AutoModel

    model = AutoModel.from_pretrained(out).eval()
    with torch.no_grad():
        hidden = model(torch.randn(1, 16000)).last_hidden_state
    assert hidden.shape[-1] == desc["config"]["encoder"]["dim"]
