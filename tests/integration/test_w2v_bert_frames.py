"""w2v-BERT frame counts against ``SeamlessM4TFeatureExtractor`` (saved in every w2v-BERT
export). For an odd number of fbank frames the extractor pads to even and returns one more
stacked frame than we do (12,960 samples: 79 fbank frames -> its 40 vs our 39), but its
``attention_mask`` marks that frame as padding: the real frame counts agree, the extra frame
changes nothing, and the exported model fed the extractor's own output reproduces our
hidden states on the real frames."""

from __future__ import annotations

import torch
from model_fixtures import load_synth
from transformers import AutoFeatureExtractor, AutoModel

from speechssl.interop.hf import export_to_transformers
from speechssl.models import create_model

TOL = 1e-4


def test_frame_counts_agree_with_seamless_extractor(synth_corpus, tmp_path):
    torch.manual_seed(0)
    model = create_model("w2v_bert_tiny").eval()
    path = export_to_transformers(model, tmp_path / "export")
    fe = AutoFeatureExtractor.from_pretrained(path)
    hf = AutoModel.from_pretrained(path).eval()
    waves, lengths, _ = load_synth(synth_corpus, 1, 1.5)
    speech = waves[0, : int(lengths[0])]
    for n in (12960, 12800, 13120, 16000, 16160):
        x = speech[:n]
        inputs = fe(x.numpy(), sampling_rate=16000, return_tensors="pt")
        ours_frames = int(model.frontend.output_lengths(torch.tensor([n]))[0])
        real = int(inputs["attention_mask"].sum())
        assert real == ours_frames, (n, real, ours_frames)
        with torch.no_grad():
            ours = model.extract(x[None], torch.tensor([n]))
            theirs = hf(**inputs, output_hidden_states=True)
            cut = hf(input_features=inputs["input_features"][:, :real], output_hidden_states=True)
        assert ours.hidden_states[0].shape[1] == real
        for a, b, c in zip(
            ours.hidden_states, theirs.hidden_states, cut.hidden_states, strict=True
        ):
            # the extra (padding) frame is inert: up to float32 rounding, since a matmul over
            # 40 rows may round differently from one over 39 (measured: up to 1.9e-6 on an
            # AMD EPYC CPU, exactly equal on another machine)
            torch.testing.assert_close(b[:, :real], c, rtol=0.0, atol=1e-5)
            assert float((a - b[:, :real]).abs().max()) <= TOL
        if n == 12960:  # the case of the issue: 40 stacked frames there, 39 real
            assert inputs["input_features"].shape[1] == 40 and real == 39
