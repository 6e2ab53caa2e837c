"""fairseq / fairseq2 checkpoints written in those projects' layouts, without either installed.

fairseq (github.com/facebookresearch/fairseq, v0.12): ``checkpoint_utils.save_state`` writes
``{"args", "cfg", "model", "criterion", "optimizer_history", "task_state", "extra_state",
"last_optimizer_state"}`` with ``torch.save``; the state-dict names are those of
``fairseq/models/wav2vec/wav2vec2.py`` (``ConvFeatureExtractionModel``: ``conv_layers.i`` =
``Sequential(Conv1d, Dropout, [Fp32GroupNorm | Sequential(TransposeLast, Fp32LayerNorm,
TransposeLast)], GELU)``; ``post_extract_proj``, ``layer_norm``, ``mask_emb``;
``TransformerEncoder``: ``pos_conv = Sequential(weight_norm(Conv1d, dim=2), SamePad, GELU)``,
``layers.N`` = ``TransformerSentenceEncoderLayer`` with ``self_attn.{q,k,v,out}_proj``,
``self_attn_layer_norm``, ``fc1``, ``fc2``, ``final_layer_norm``; ``GumbelVectorQuantizer``:
``vars [1, G*V, D/G]``, ``weight_proj``; ``project_q``, ``final_proj``) and of
``fairseq/models/hubert/hubert.py`` (``label_embs_concat [sum(len(dict)), final_dim]``,
``final_proj``). Fine-tuned checkpoints (``wav2vec2_asr.py``) nest the encoder under
``w2v_encoder.w2v_model.`` with the CTC output layer ``w2v_encoder.proj`` and the
pretraining config in ``cfg.model.w2v_args``; ``remove_pretraining_modules`` drops the
quantizer, ``project_q``, ``final_proj`` and ``label_embs_concat``.

fairseq2 (github.com/facebookresearch/fairseq2, ``fairseq2/models/wav2vec2``,
``fairseq2/models/w2vbert``): ``{"model": state_dict, ...}`` with the names of
``Wav2Vec2Model`` / ``W2VBertModel`` (see ``fairseq2_state``).
"""

from __future__ import annotations

import argparse
import sys
import types
from collections import OrderedDict
from typing import Any

import torch


def _ln(prefix: str, dim: int) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.weight": 1 + 0.1 * torch.randn(dim),
        f"{prefix}.bias": 0.1 * torch.randn(dim),
    }


def _lin(prefix: str, out_dim: int, in_dim: int, bias: bool = True) -> dict[str, torch.Tensor]:
    out = {f"{prefix}.weight": torch.randn(out_dim, in_dim) / in_dim**0.5}
    if bias:
        out[f"{prefix}.bias"] = 0.1 * torch.randn(out_dim)
    return out


#: fairseq's base conv layout (20 ms frames) with 32 channels
SMALL_CONV = ((32, 10, 5),) + ((32, 3, 2),) * 4 + ((32, 2, 2),) * 2
SMALL_CONV_TEXT = "[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2"


def fairseq_arch(**changes: Any) -> dict[str, Any]:
    """A small fairseq model config (``Wav2Vec2Config`` / ``HubertConfig`` field names)."""
    cfg = {
        "extractor_mode": "default",
        "conv_feature_layers": SMALL_CONV_TEXT,
        "conv_bias": False,
        "encoder_embed_dim": 48,
        "encoder_layers": 2,
        "encoder_attention_heads": 4,
        "encoder_ffn_embed_dim": 96,
        "layer_norm_first": False,
        "conv_pos": 8,
        "conv_pos_groups": 4,
        "final_dim": 24,
        "dropout": 0.1,
        "attention_dropout": 0.1,
        "activation_dropout": 0.0,
        "encoder_layerdrop": 0.05,
        "dropout_input": 0.1,
        "dropout_features": 0.1,
        "activation_fn": "gelu",
        "layer_type": "transformer",
        "logit_temp": 0.1,
        "mask_prob": 0.65,
        "mask_length": 10,
        "feature_grad_mult": 0.1,
        "quantize_targets": True,
        "latent_vars": 16,
        "latent_groups": 2,
        "latent_dim": 0,
        "latent_temp": [2.0, 0.5, 0.999995],
        "num_negatives": 100,
        "label_rate": 50,
        "untie_final_proj": False,
    }
    cfg.update(changes)
    return cfg


def fairseq_state(family: str, arch: dict[str, Any], label_rows: int = 0) -> OrderedDict:
    """Random weights under fairseq's names and shapes for ``arch``."""
    convs = SMALL_CONV
    assert arch["conv_feature_layers"] == SMALL_CONV_TEXT
    d, f = arch["encoder_embed_dim"], arch["encoder_ffn_embed_dim"]
    k, g = arch["conv_pos"], arch["conv_pos_groups"]
    s: dict[str, torch.Tensor] = {}
    c_in = 1
    for i, (c, kernel, _) in enumerate(convs):
        s[f"feature_extractor.conv_layers.{i}.0.weight"] = (
            torch.randn(c, c_in, kernel) / (c_in * kernel) ** 0.5
        )
        if arch["conv_bias"]:
            s[f"feature_extractor.conv_layers.{i}.0.bias"] = 0.1 * torch.randn(c)
        if arch["extractor_mode"] == "layer_norm":
            s.update(_ln(f"feature_extractor.conv_layers.{i}.2.1", c))
        elif i == 0:
            s.update(_ln("feature_extractor.conv_layers.0.2", c))
        c_in = c
    s.update(_ln("layer_norm", c_in))
    s.update(_lin("post_extract_proj", d, c_in))
    s["mask_emb"] = torch.rand(d)
    s["encoder.pos_conv.0.bias"] = 0.1 * torch.randn(d)
    s["encoder.pos_conv.0.weight_g"] = 1 + 0.1 * torch.rand(1, 1, k)
    s["encoder.pos_conv.0.weight_v"] = torch.randn(d, d // g, k)
    s.update(_ln("encoder.layer_norm", d))
    for n in range(arch["encoder_layers"]):
        p = f"encoder.layers.{n}"
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            s.update(_lin(f"{p}.self_attn.{proj}", d, d))
        s.update(_ln(f"{p}.self_attn_layer_norm", d))
        s.update(_lin(f"{p}.fc1", f, d))
        s.update(_lin(f"{p}.fc2", d, f))
        s.update(_ln(f"{p}.final_layer_norm", d))
    fd = arch["final_dim"] or d
    if family == "hubert":
        s["label_embs_concat"] = torch.rand(label_rows, fd)
        s.update(_lin("final_proj", fd, d))
    elif family == "wav2vec2":
        gv = arch["latent_groups"] * arch["latent_vars"]
        vq = arch["latent_dim"] or fd
        s["quantizer.vars"] = torch.rand(1, gv, vq // arch["latent_groups"])
        s.update(_lin("quantizer.weight_proj", gv, c_in))
        s.update(_lin("project_q", fd, vq))
        s.update(_lin("final_proj", fd, d))
    return OrderedDict(s)


PRETRAINING_KEYS = ("quantizer.", "project_q.", "final_proj.", "label_embs_concat")


def finetuned_state(state: dict[str, torch.Tensor], vocab: int = 12) -> OrderedDict:
    """``Wav2VecEncoder`` / ``HubertEncoder`` layout of a CTC fine-tuned model."""
    out = OrderedDict(
        (f"w2v_encoder.w2v_model.{k}", v)
        for k, v in state.items()
        if not k.startswith(PRETRAINING_KEYS)
    )
    d = state["mask_emb"].shape[0]
    out.update(_lin("w2v_encoder.proj", vocab, d))
    return out


class FakeFairseqModules:
    """Registers stand-in ``fairseq.data.dictionary.Dictionary`` (same pickled name and
    state attributes as fairseq's) in ``sys.modules`` while writing a checkpoint, the way
    a real fairseq checkpoint names it. Use with pytest's ``monkeypatch``."""

    def __init__(self, monkeypatch: Any) -> None:
        names = ["fairseq", "fairseq.data", "fairseq.data.dictionary"]
        mods = {n: types.ModuleType(n) for n in names}

        class Dictionary:
            def __init__(self, units: list[str]) -> None:
                self.bos_word, self.unk_word = "<s>", "<unk>"
                self.pad_word, self.eos_word = "<pad>", "</s>"
                self.symbols = ["<s>", "<pad>", "</s>", "<unk>", *units]
                self.count = [1] * len(self.symbols)
                self.indices = {s: i for i, s in enumerate(self.symbols)}
                self.bos_index, self.pad_index, self.eos_index, self.unk_index = 0, 1, 2, 3
                self.nspecial = 4

        Dictionary.__module__ = "fairseq.data.dictionary"
        Dictionary.__qualname__ = "Dictionary"
        mods["fairseq.data.dictionary"].Dictionary = Dictionary  # type: ignore[attr-defined]
        for n, m in mods.items():
            monkeypatch.setitem(sys.modules, n, m)
        self.Dictionary = Dictionary


def write_fairseq_checkpoint(
    path: Any,
    family: str,
    arch: dict[str, Any],
    state: dict[str, torch.Tensor],
    *,
    layout: str = "cfg",
    finetuned: bool = False,
    task: dict[str, Any] | None = None,
    criterion: dict[str, Any] | None = None,
    task_state: dict[str, Any] | None = None,
    num_updates: int = 1234,
) -> None:
    """``torch.save`` a checkpoint as fairseq's ``save_state`` does: ``layout="cfg"``
    (omegaconf ``DictConfig`` under ``cfg``, ``args`` None), ``"cfg_dict"`` (the same as
    plain containers) or ``layout="args"`` (``argparse.Namespace`` under ``args``, fairseq
    < 0.10)."""
    from omegaconf import OmegaConf

    name = family if not finetuned else f"{'wav2vec' if family == 'wav2vec2' else 'hubert'}_ctc"
    task = task or {"_name": "audio_pretraining", "normalize": False, "sample_rate": 16000}
    criterion = criterion or {"_name": family, "loss_weights": [0.1, 10.0]}
    model_cfg = {"_name": family, **arch}
    flat = {k: v for k, v in {**task, **criterion}.items() if k != "_name"}
    if finetuned:
        inner = {"model": model_cfg, "task": task, "criterion": criterion}
        if layout == "args":
            inner_ns = argparse.Namespace(arch=family, **arch, **flat)
            outer: dict[str, Any] = {"arch": name, "w2v_args": inner_ns, "w2v_path": "pre.pt"}
        else:
            outer = {"_name": name, "w2v_args": inner, "w2v_path": "pre.pt"}
        model_cfg = outer
    ckpt: dict[str, Any] = {
        "model": state,
        "optimizer_history": [{"criterion_name": "X", "num_updates": num_updates}],
        "task_state": task_state or {},
        "extra_state": {"epoch": 3, "best": torch.tensor(1.5).numpy()},
        "last_optimizer_state": None,
    }
    if layout == "args":
        if finetuned:
            ns = argparse.Namespace(**model_cfg)
        else:
            ns = argparse.Namespace(arch=family, **arch, **flat)
        ckpt.update(args=ns, cfg=None)
    else:
        cfg = {"model": model_cfg, "task": task, "criterion": criterion}
        # "cfg": the omegaconf config (fairseq 0.10); "cfg_dict": OmegaConf.to_container of
        # it, as fairseq 0.12's save_state writes
        ckpt.update(args=None, cfg=cfg if layout == "cfg_dict" else OmegaConf.create(cfg))
    torch.save(ckpt, str(path))


# fairseq2 ------------------------------------------------------------------------------
# fairseq -> fairseq2 names, as fairseq2's own converter states them
# (fairseq2/models/wav2vec2/_checkpoint.py, convert_wav2vec2_checkpoint): post-LN models
# move fairseq's encoder.layer_norm to encoder_frontend.layer_norm, and the quantizer gets
# a num_updates buffer
FAIRSEQ_TO_FAIRSEQ2 = [
    (r"^encoder\.layers\.([0-9]+)\.self_attn\.out_proj\.", r"encoder.layers.\1.self_attn.output_proj."),
    (r"^encoder\.layers\.([0-9]+)\.fc1\.", r"encoder.layers.\1.ffn.inner_proj."),
    (r"^encoder\.layers\.([0-9]+)\.fc2\.", r"encoder.layers.\1.ffn.output_proj."),
    (r"^encoder\.layers\.([0-9]+)\.final_layer_norm\.", r"encoder.layers.\1.ffn_layer_norm."),
    (r"^encoder\.pos_conv\.0\.", r"encoder_frontend.pos_encoder.conv."),
    (r"^feature_extractor\.conv_layers\.([0-9]+)\.0\.", r"encoder_frontend.feature_extractor.layers.\1.conv."),
    (r"^feature_extractor\.conv_layers\.([0-9]+)\.2\.1\.", r"encoder_frontend.feature_extractor.layers.\1.layer_norm."),
    (r"^feature_extractor\.conv_layers\.0\.2\.", r"encoder_frontend.feature_extractor.layers.0.group_norm."),
    (r"^layer_norm\.", r"encoder_frontend.post_extract_layer_norm."),
    (r"^post_extract_proj\.", r"encoder_frontend.model_dim_proj."),
    (r"^mask_emb", r"masker.temporal_mask_embed"),
    (r"^quantizer\.vars", r"quantizer.entries"),
    (r"^quantizer\.weight_proj\.", r"quantizer.entry_proj."),
    (r"^project_q\.", r"final_target_proj."),
]  # fmt: skip


def fairseq2_wav2vec2_state(fairseq_sd: dict[str, torch.Tensor], pre_ln: bool) -> OrderedDict:
    import re

    out: OrderedDict = OrderedDict()
    for key, value in fairseq_sd.items():
        if key.startswith("encoder.layer_norm.") and not pre_ln:
            out[key.replace("encoder.", "encoder_frontend.", 1)] = value
            continue
        for pattern, repl in FAIRSEQ_TO_FAIRSEQ2:
            if re.match(pattern, key):
                key = re.sub(pattern, repl, key)
                break
        out[key] = value
    out["quantizer.num_updates"] = torch.tensor(777)
    return out


# our w2v-BERT names -> fairseq2 W2VBertModel names (fairseq2/models/w2vbert/_model.py:
# w2v2_model + final_bert_proj; fairseq2/models/conformer/_block.py: ffn1_layer_norm, ffn1,
# self_attn_layer_norm, self_attn, conv_layer_norm, conv, ffn2_layer_norm, ffn2, layer_norm;
# _convolution.py: pointwise_conv1, depthwise_conv, layer_norm, pointwise_conv2;
# StandardFeedForwardNetwork: inner_proj, output_proj; StandardMultiheadAttention: q/k/v_proj,
# output_proj, sdpa.rel_k_embed (Shaw relative positions))
OURS_TO_FAIRSEQ2_W2VBERT = [
    (r"frontend\.layer_norm\.", "w2v2_model.encoder_frontend.post_extract_layer_norm."),
    (r"frontend\.projection\.", "w2v2_model.encoder_frontend.model_dim_proj."),
    (r"masker\.mask_embedding", "w2v2_model.masker.temporal_mask_embed"),
    (r"encoder\.layers\.(\d+)\.(ffn[12])\.fc1\.", r"w2v2_model.encoder.layers.\1.\2.inner_proj."),
    (r"encoder\.layers\.(\d+)\.(ffn[12])\.fc2\.", r"w2v2_model.encoder.layers.\1.\2.output_proj."),
    (r"encoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"w2v2_model.encoder.layers.\1.self_attn.output_proj."),
    (r"encoder\.layers\.(\d+)\.self_attn\.distance_embedding\.", r"w2v2_model.encoder.layers.\1.self_attn.sdpa.rel_k_embed."),
    (r"encoder\.layers\.(\d+)\.conv_module\.layer_norm\.", r"w2v2_model.encoder.layers.\1.conv_layer_norm."),
    (r"encoder\.layers\.(\d+)\.conv_module\.depthwise_layer_norm\.", r"w2v2_model.encoder.layers.\1.conv.layer_norm."),
    (r"encoder\.layers\.(\d+)\.conv_module\.", r"w2v2_model.encoder.layers.\1.conv."),
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.", r"w2v2_model.encoder.layers.\1.layer_norm."),
    (r"encoder\.layers\.", "w2v2_model.encoder.layers."),
    (r"quantizer\.codevectors", "w2v2_model.quantizer.entries"),
    (r"quantizer\.weight_proj\.", "w2v2_model.quantizer.entry_proj."),
    (r"project_q\.", "w2v2_model.final_target_proj."),
    (r"final_proj\.", "w2v2_model.final_proj."),
]  # fmt: skip


def fairseq2_w2v_bert_state(ours: dict[str, torch.Tensor], num_targets: int) -> OrderedDict:
    """A fairseq2 ``W2VBertModel`` state dict holding the weights of our w2v-BERT state."""
    import re

    out: OrderedDict = OrderedDict()
    heads: dict[str, list[torch.Tensor]] = {"weight": [], "bias": []}
    for key, value in ours.items():
        if key == "num_updates":
            out["w2v2_model.quantizer.num_updates"] = value.clone()
            continue
        m = re.fullmatch(r"mlm_head\.classifiers\.(\d+)\.(weight|bias)", key)
        if m:
            heads[m.group(2)].append(value)
            continue
        m = re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.qkv\.(weight|bias)", key)
        if m:
            for name, part in zip("qkv", value.chunk(3, dim=0), strict=True):
                out[
                    f"w2v2_model.encoder.layers.{m.group(1)}.self_attn.{name}_proj.{m.group(2)}"
                ] = part
            continue
        for pattern, repl in OURS_TO_FAIRSEQ2_W2VBERT:
            if re.match(pattern, key):
                key = re.sub(pattern, repl, key, count=1)
                break
        else:
            raise AssertionError(f"no fairseq2 name for {key}")
        out[key] = value
    assert len(heads["weight"]) == num_targets
    # final_bert_proj: logits viewed as [..., V, G], so row v * G + g scores codebook g
    for kind, parts in heads.items():
        stacked = torch.stack(parts, dim=1)  # [V, G, ...]
        out[f"final_bert_proj.{kind}"] = stacked.reshape(-1, *stacked.shape[2:])
    return out
