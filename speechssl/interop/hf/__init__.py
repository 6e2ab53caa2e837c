"""Hugging Face ``transformers`` export and import, dispatched by model family.

One module per family holds its key map and config mapping (:mod:`.hubert`,
:mod:`.wav2vec2`, :mod:`.w2v_bert`, :mod:`.data2vec`, :mod:`.wavlm`, :mod:`.best_rq`);
:mod:`.common` holds the export
directory writer/reader they share. The public entry points:

* :func:`export_to_transformers` -- a model -> a ``transformers`` model dir (+ ``speechssl/``
  side dir unless ``bare``); ``speechssl export hf`` calls it.
* :func:`import_from_transformers` -- a ``transformers`` dir (our export or a foreign
  checkpoint) -> our model; :func:`import_transformers_dir` also says which weights started
  fresh; ``speechssl import hf`` calls it.

Which class: HuBERT -> ``HubertModel`` (``transformers`` has no HuBERT pretraining class);
wav2vec 2.0 -> ``Wav2Vec2ForPreTraining`` (``AutoModelForPreTraining``) or, bare,
``Wav2Vec2Model``; w2v-BERT -> ``Wav2Vec2BertModel``; data2vec audio ->
``Data2VecAudioModel``; WavLM -> ``WavLMModel`` (no pretraining class either); BEST-RQ ->
``Wav2Vec2BertModel`` (its encoder is w2v-BERT's; a ``Wav2Vec2Bert`` dir without our side
directory imports as w2v-BERT). ``transformers``' ``output_hidden_states`` equal our ``extract()``
``hidden_states`` one for one. Two settings have no ``transformers`` equivalent and are
mapped to the nearest one: the padding-aware first-layer GroupNorm (``transformers``
normalises over padding too, so padded batches of GroupNorm models differ there) and
waveform normalisation (moved to the feature extractor's ``do_normalize``). The
``transformers`` configs get fine-tuning SpecAugment defaults (``mask_time_prob=0.05``); our
pretraining masking is in ``speechssl/model.json``.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from speechssl.errors import CheckpointError, ConfigError
from speechssl.interop.hf import (
    best_rq,
    data2vec,
    distilhubert,
    hubert,
    speaker,
    ssast,
    vit,
    w2v_bert,
    wav2vec2,
    wavlm,
)
from speechssl.interop.hf.common import (
    DESCRIPTION_NAME,
    HEADS_NAME,
    SIDECAR,
    FamilyInterop,
    fuse_qkv,
    load_safetensors,
    read_hf_weights,
    read_json,
    write_export_dir,
)
from speechssl.models.base import PretrainModel
from speechssl.models.io import build_from_description, load_weights, model_description
from speechssl.models.registry import apply_overrides, get_spec, list_models

log = logging.getLogger(__name__)

#: our family name -> its interop description
INTEROPS: dict[str, FamilyInterop] = {
    m.INTEROP.family: m.INTEROP
    for m in (hubert, wav2vec2, w2v_bert, data2vec, wavlm, best_rq, distilhubert, ssast)
}
INTEROPS.update({fam.family: fam for fam in vit.INTEROPS})
FAMILIES = tuple(INTEROPS)
#: transformers model_type -> the family a dir without our side directory imports as
MODEL_TYPES = {
    fam.model_type: name for name, fam in INTEROPS.items() if fam.config_from_hf is not None
}
#: families trained on k-means labels (`export hf` copies the one their training names)
KMEANS_FAMILIES = ("hubert", "wavlm")
# families whose targets never come from k-means (an export refuses a k-means model)
_NO_KMEANS = ("w2v_bert", "data2vec_audio", "best_rq", "distilhubert", "ssast")
# the export description of these families records the pretraining switch
_RECORDS_PRETRAINING = ("hubert", "wav2vec2")


def interop_for(family: str | None) -> FamilyInterop:
    """The interop of ``family``; other families are a :class:`ConfigError`."""
    if family in speaker.NO_TRANSFORMERS_CLASS:
        raise ConfigError(speaker.NO_TRANSFORMERS_CLASS[family])
    if family not in INTEROPS:
        raise ConfigError(f"export to transformers supports {', '.join(FAMILIES)}, not {family!r}")
    return INTEROPS[family]


def hf_config(model: PretrainModel, pretraining: bool = True) -> Any:
    """The ``transformers`` config matching ``model``'s architecture."""
    fam = interop_for(model.family)
    return fam.hf_config(model.config, fam.hf_class(pretraining))


def hf_config_for(family: str, cfg: Any, pretraining: bool = True) -> Any:
    """The ``transformers`` config of a ``family`` model with config ``cfg`` (no weights
    needed, so presets can be compared without building them)."""
    fam = interop_for(family)
    return fam.hf_config(cfg, fam.hf_class(pretraining))


def to_transformers_state(
    model: PretrainModel, pretraining: bool = True
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split our state dict into ``(transformers weights, side weights)``."""
    return interop_for(model.family).to_hf_state(model, pretraining)


def export_to_transformers(
    model: PretrainModel,
    out_dir: str | os.PathLike[str],
    *,
    pretraining: bool = True,
    bare: bool = False,
    kmeans_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    card: str | None = None,
) -> Path:
    """Write ``model`` as a ``transformers`` model directory.

    Args:
        model: a model of one of :data:`FAMILIES` (``create_model``/``load_model_dir``).
        out_dir: target directory (built under a temporary name, then renamed).
        pretraining: export the family's pretraining class where ``transformers`` has one
            (wav2vec 2.0: ``Wav2Vec2ForPreTraining``); False: the bare encoder class (the
            quantizer then goes to the side weights).
        bare: only the bare encoder class, no ``speechssl/`` side directory (what
            ``AutoModel`` loads; pretraining cannot continue from it exactly).
        kmeans_dir: the k-means model the training labels came from; copied to
            ``speechssl/kmeans`` and referenced (by directory name) in
            ``speechssl/model.json``.
        overwrite: replace an existing ``out_dir``.
        card: the model card text written as ``README.md`` (:mod:`speechssl.interop.hub`).
    """
    fam = interop_for(model.family)
    if kmeans_dir is not None and fam.family in _NO_KMEANS:
        raise ConfigError(f"{model.family} models are not trained on k-means labels")
    if bare and kmeans_dir is not None:
        raise ConfigError("a bare export has no side directory for the k-means model")
    pretraining = pretraining and not bare
    hf_class = fam.hf_class(pretraining)
    config = fam.hf_config(model.config, hf_class)
    hf_state, side = fam.to_hf_state(model, pretraining)
    desc: dict[str, Any] | None = None
    if not bare:
        desc = model_description(model)
        desc["export"] = {"transformers_class": hf_class}
        if fam.family in _RECORDS_PRETRAINING:
            desc["export"]["pretraining"] = pretraining
        if kmeans_dir is not None:
            km = Path(kmeans_dir)
            if not km.is_dir():
                raise ConfigError(f"k-means model directory {km} does not exist")
            desc["export"]["kmeans"] = {"source": km.resolve().name, "copy": f"{SIDECAR}/kmeans"}
    return write_export_dir(
        Path(out_dir),
        config=config,
        hf_state=hf_state,
        preprocessor=fam.preprocessor(model),
        side=side,
        description=desc,
        overwrite=overwrite,
        kmeans_dir=None if kmeans_dir is None else Path(kmeans_dir),
        card=card,
    )


@dataclass
class ImportedModel:
    """What :func:`import_transformers_dir` found.

    Attributes:
        model: our model with the imported weights.
        hf_class: the ``transformers`` class of the source (its ``architectures[0]``).
        fresh: our weights the source had no counterpart for (initialised, e.g. HuBERT's
            label embeddings), empty for our own non-bare exports.
        architecture: a plain description (``hubert: 2 layers x 64, 4 heads, FFN 96``).
        exact_preset: True when the architecture equals the preset ``model.model_name``.
    """

    model: PretrainModel
    hf_class: str
    fresh: list[str] = field(default_factory=list)
    architecture: str = ""
    exact_preset: bool = True


def describe_architecture(family: str, cfg: Any) -> str:
    enc = cfg.encoder
    return (
        f"{family}: {enc.num_layers} layers x {enc.dim}, {enc.num_heads} heads, FFN {enc.ffn_dim}"
    )


def _arch_key(cfg: Any) -> tuple[Any, ...]:
    from speechssl.models.io import config_to_dict

    d = config_to_dict(cfg)
    return tuple(
        sorted((k, repr(v)) for k, v in d.items() if k in ("encoder", "extractor", "frontend"))
    )


def _preset_for(
    family: str, arch: dict[str, Any], overrides: dict[str, Any]
) -> tuple[str, Any, bool]:
    """The family preset whose sizes match the imported architecture (exact: also every
    encoder/front-end field), with ``arch`` and ``overrides`` applied on top."""
    names = [n for n in list_models() if get_spec(n).family == family]
    enc = arch["encoder"]
    want = (enc["dim"], enc["num_layers"], enc["num_heads"], enc["ffn_dim"])

    def distance(name: str) -> tuple[int, int]:
        e = get_spec(name).make_config().encoder
        return (abs(e.dim - want[0]) + abs(e.ffn_dim - want[3]), abs(e.num_layers - want[1]))

    best = min(names, key=distance)
    base = get_spec(best).make_config()
    cfg = apply_overrides(apply_overrides(base, arch, best), overrides, best)
    exact = _arch_key(cfg) == _arch_key(base)
    return best, cfg, exact


def _map_hf_weights(
    fam: FamilyInterop, model: PretrainModel, state: dict[str, Tensor], where: str
) -> tuple[dict[str, Tensor], bool]:
    """``transformers`` weights -> ours (q/k/v fused). Unexpected or missing encoder
    weights are a :class:`CheckpointError`; returns ``(weights, heads_present)``."""
    state = fam.hf_state_in(model, state, where)
    enc_map, head_map = fam.hf_names(model)
    prefix = fam.wrapper_prefix
    wrapped = any(k.startswith(prefix) for k in state)
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    seen: set[str] = set()
    unexpected: list[str] = []
    for name, value in state.items():
        key = name[len(prefix) :] if wrapped and name.startswith(prefix) else name
        table = enc_map if (not wrapped or name.startswith(prefix)) else head_map
        if key not in table:
            unexpected.append(name)
            continue
        seen.add(key)
        ours, part = table[key]
        if part:
            m = re.search(r"layers\.(\d+)\.", ours)
            assert m is not None
            qkv.setdefault((m[1], ours.rsplit(".", 1)[1]), {})[part] = value
        else:
            out[ours] = value
    if unexpected:
        raise CheckpointError(
            f"{where}: {len(unexpected)} weight(s) have no counterpart in speechssl "
            f"{fam.family}: {', '.join(sorted(unexpected)[:5])}"
        )
    missing = sorted(k for k in enc_map if k not in seen and k != "masked_spec_embed")
    if missing:
        raise CheckpointError(
            f"{where}: {len(missing)} {fam.family} weight(s) missing: {', '.join(missing[:5])}"
        )
    heads_seen = [k for k in head_map if k in seen]
    if heads_seen and len(heads_seen) != len(head_map):
        lacking = sorted(set(head_map) - set(heads_seen))
        raise CheckpointError(f"{where}: pretraining heads incomplete, missing {lacking[:5]}")
    out.update(fuse_qkv(qkv, where))
    return out, bool(heads_seen)


def _hf_config_dict(root: Path) -> dict[str, Any]:
    """config.json with transformers' defaults filled in (save_pretrained writes only the
    fields that differ from them)."""
    raw = read_json(root / "config.json")
    model_type = raw.get("model_type")
    if model_type not in MODEL_TYPES:
        raise CheckpointError(
            f"{root / 'config.json'}: model_type {model_type!r} is not one of "
            f"{', '.join(MODEL_TYPES)}"
        )
    from transformers import AutoConfig

    try:
        return dict(AutoConfig.for_model(**raw).to_dict())
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{root / 'config.json'}: not a valid config ({exc})") from None


def import_transformers_dir(path: str | os.PathLike[str], **overrides: Any) -> ImportedModel:
    """Load a ``transformers`` dir of a supported family as our model.

    Our own (non-bare) export is restored exactly from its ``speechssl/`` side directory.
    Any other dir (a foreign checkpoint, a bare export) takes *every* architecture field
    from ``config.json`` (and ``preprocessor_config.json``) on top of the family preset of
    the same size, ``overrides`` apply after (e.g. ``num_classes=(500,)``), and our weights
    ``transformers`` has no place for start fresh (listed in ``ImportedModel.fresh``).
    Unexpected and missing ``transformers`` weights are a :class:`CheckpointError`.
    """
    root = Path(path)
    if not (root / "config.json").is_file():
        raise CheckpointError(f"{root}: not a transformers model directory (no config.json)")
    hf_cfg = _hf_config_dict(root)
    fam = INTEROPS[MODEL_TYPES[hf_cfg["model_type"]]]
    hf_class = (hf_cfg.get("architectures") or [fam.encoder_class])[0]
    desc_path = root / SIDECAR / DESCRIPTION_NAME
    if desc_path.is_file():
        desc = read_json(desc_path)
        if overrides:
            spec = get_spec(desc["name"])
            cfg = apply_overrides(spec.make_config(), desc.get("config") or {}, desc["name"])
            cfg = apply_overrides(cfg, overrides, desc["name"])
            model = spec.build(cfg)
            model.model_name, model.family = spec.name, spec.family
        else:
            model = build_from_description(desc)
        exported = INTEROPS.get(model.family)
        if exported is None or exported.model_type != fam.model_type:
            raise CheckpointError(
                f"{desc_path}: family {model.family!r} but config.json is {fam.family}"
            )
        fam = exported  # e.g. BEST-RQ, exported as w2v-BERT's class
        weights, _ = _map_hf_weights(fam, model, read_hf_weights(root), str(root))
        heads = root / SIDECAR / HEADS_NAME
        if heads.is_file():
            weights.update(load_safetensors(heads))
        load_weights(model, weights, str(root))
        return ImportedModel(model, hf_class, [], describe_architecture(fam.family, model.config))
    pre_path = root / "preprocessor_config.json"
    pre = read_json(pre_path) if pre_path.is_file() else {}
    assert fam.config_from_hf is not None  # MODEL_TYPES holds only families that import
    arch = fam.config_from_hf(hf_cfg, pre)
    name, cfg, exact = _preset_for(fam.family, arch, overrides)
    spec = get_spec(name)
    model = spec.build(cfg)
    model.model_name, model.family = spec.name, spec.family
    weights, _ = _map_hf_weights(fam, model, read_hf_weights(root), str(root))
    own = model.state_dict()
    fresh = sorted(k for k in own if k not in weights)
    load_weights(model, {k: weights.get(k, v) for k, v in own.items()}, str(root))
    if fresh:
        log.info("%s: initialised %d weights the source lacks: %s", root, len(fresh), fresh[:8])
    return ImportedModel(
        model, hf_class, fresh, describe_architecture(fam.family, cfg), exact_preset=exact
    )


def import_from_transformers(path: str | os.PathLike[str], **overrides: Any) -> PretrainModel:
    """Load an export (or any supported ``transformers`` directory) as our model; see
    :func:`import_transformers_dir`."""
    return import_transformers_dir(path, **overrides).model


__all__ = [
    "FAMILIES",
    "INTEROPS",
    "KMEANS_FAMILIES",
    "ImportedModel",
    "describe_architecture",
    "export_to_transformers",
    "hf_config",
    "hf_config_for",
    "import_from_transformers",
    "import_transformers_dir",
    "interop_for",
    "to_transformers_state",
]
