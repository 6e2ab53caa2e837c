"""Model cards and pushes to the Hugging Face hub.

:func:`collect_card_facts` reads what is known about a model dir -- its ``model.json``
(registry name, config, ``extra.training``: step, data dir, labels), the training
experiment's ``log.jsonl`` (hours of audio kept) and ``config.yaml`` (optimiser), the
bundled-corpus marker (``meta.json`` with ``"synthetic": true`` above the audio), and the
recipe's ``summary/`` (``results.json`` unit-quality and pretraining rows, ``probe.json``
probe rows) -- and :func:`render_card` turns it into a ``README.md`` that
``huggingface_hub.ModelCard.load`` reads. Only names relative to the export appear in it,
never local absolute paths.

:func:`push_folder` uploads an export with ``huggingface_hub`` (``create_repo(exist_ok=True)``
then ``upload_folder``); the token comes from ``HF_TOKEN`` or the login cache, as
``huggingface_hub`` finds it, and is never printed or logged by us.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speechssl.errors import CheckpointError, HubError

#: the HF model classes whose ``from_pretrained`` the card's snippet calls
_SNIPPET_AUTO = {"Wav2Vec2ForPreTraining": "AutoModelForPreTraining"}


@dataclass
class CardFacts:
    """Everything the model card says (all optional except the model's identity)."""

    model_name: str
    family: str
    architecture: str
    hf_class: str
    bare: bool
    license: str = "other"
    repo_id: str | None = None
    base_model: str | None = None
    datasets: list[str] = field(default_factory=list)
    data_name: str | None = None
    hours: float | None = None
    steps: int | None = None
    labels: list[dict[str, Any]] = field(default_factory=list)
    optim: dict[str, Any] = field(default_factory=dict)
    synthetic: bool = False
    units: list[dict[str, Any]] = field(default_factory=list)
    trains: list[dict[str, Any]] = field(default_factory=list)
    probes: list[dict[str, Any]] = field(default_factory=list)
    sample_rate: int = 16000


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None


def _is_synthetic(data_dir: Path) -> bool:
    """True if the data dir, or the audio its ``wav.scp`` points at, sits in a corpus made
    by ``speechssl data synth`` (a ``meta.json`` with ``"synthetic": true`` above it)."""
    starts = [data_dir]
    scp = data_dir / "wav.scp"
    if scp.is_file():
        with open(scp, encoding="utf-8") as fh:
            first = fh.readline().split(maxsplit=1)
        if len(first) == 2 and not first[1].rstrip().endswith("|"):
            wav = Path(first[1].strip())
            starts.append(wav if wav.is_absolute() else data_dir / wav)
    for start in starts:
        for parent in [start, *start.parents][:5]:
            meta = parent / "meta.json"
            if meta.is_file():
                try:
                    if json.loads(meta.read_text()).get("synthetic") is True:
                        return True
                except (json.JSONDecodeError, AttributeError, OSError):
                    continue
    return False


def _train_hours(exp_dir: Path) -> float | None:
    log_path = exp_dir / "log.jsonl"
    if not log_path.is_file():
        return None
    hours = None
    with open(log_path, encoding="utf-8") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("event") == "data" and rec.get("split") == "train":
                hours = rec.get("kept_hours", hours)
    return None if hours is None else float(hours)


def _optim(exp_dir: Path) -> dict[str, Any]:
    path = exp_dir / "config.yaml"
    if not path.is_file():
        return {}
    import yaml

    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return {}
    optim = cfg.get("optim") or {}
    trainer = cfg.get("trainer") or {}
    keep = {k: v for k, v in optim.items() if isinstance(v, (int, float, str)) and k != "name"}
    out: dict[str, Any] = {"optimizer": optim.get("name")} if optim.get("name") else {}
    out.update(
        {k: keep[k] for k in ("lr", "schedule", "warmup_steps", "weight_decay") if k in keep}
    )
    for key in ("max_steps", "precision", "grad_accum"):
        if key in trainer:
            out[key] = trainer[key]
    return out


def collect_card_facts(
    model_dir: str | os.PathLike[str],
    desc: dict[str, Any],
    *,
    architecture: str,
    hf_class: str,
    bare: bool,
    summary_dir: str | os.PathLike[str] | None = None,
    license: str = "other",
    repo_id: str | None = None,
    base_model: str | None = None,
    datasets: tuple[str, ...] | list[str] = (),
) -> CardFacts:
    """Gather the card's facts from a model dir's description (``model.json``) and the
    files next to it; ``summary_dir`` is a recipe's ``summary/`` (``results.json``,
    ``probe.json``), which must exist when given."""
    extra = desc.get("extra") or {}
    training = extra.get("training") or {}
    facts = CardFacts(
        model_name=str(desc.get("name")),
        family=str(desc.get("family")),
        architecture=architecture,
        hf_class=hf_class,
        bare=bare,
        license=license,
        repo_id=repo_id,
        base_model=base_model,
        datasets=list(datasets),
    )
    cfg = desc.get("config") or {}
    facts.sample_rate = int((cfg.get("frontend") or {}).get("sample_rate", 16000))
    if training:
        facts.steps = training.get("step")
        data = training.get("data")
        if data:
            data_dir = Path(data)
            facts.data_name = data_dir.name
            facts.synthetic = _is_synthetic(data_dir)
        facts.labels = [
            {"k": lab.get("k"), "label_rate": lab.get("label_rate"), "source": lab.get("source")}
            for lab in training.get("labels") or []
        ]
        exp = training.get("exp_dir")
        if exp:
            facts.hours = _train_hours(Path(exp))
            facts.optim = _optim(Path(exp))
    if summary_dir is not None:
        sdir = Path(summary_dir)
        if not sdir.is_dir():
            raise CheckpointError(f"summary dir {sdir} does not exist")
        results = sdir / "results.json"
        if results.is_file():
            res = _read_json(results)
            facts.units = list(res.get("units") or [])
            facts.trains = list(res.get("train") or [])
        probe = sdir / "probe.json"
        if probe.is_file():
            rows = _read_json(probe)
            rows = rows.get("rows", rows) if isinstance(rows, dict) else rows
            for row in rows:
                if not isinstance(row, dict) or not {"upstream", "task", "metric", "value"} <= set(
                    row
                ):
                    raise CheckpointError(
                        f"{probe}: rows need upstream, task, metric and value, got {row!r}"
                    )
            facts.probes = list(rows)
    return facts


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _snippet(facts: CardFacts, model_id: str) -> str:
    auto = "AutoModel" if facts.bare else _SNIPPET_AUTO.get(facts.hf_class, "AutoModel")
    return "\n".join(
        [
            "```python",
            "import numpy as np",
            "import torch",
            f"from transformers import AutoFeatureExtractor, {auto}",
            "",
            f'model_id = "{model_id}"',
            "extractor = AutoFeatureExtractor.from_pretrained(model_id)",
            f"model = {auto}.from_pretrained(model_id).eval()",
            f"sr = {facts.sample_rate}",
            "# one second of audio at the model's sample rate: use your own waveform",
            "waveform = (0.1 * np.sin(2 * np.pi * 220 * np.arange(sr) / sr)).astype(np.float32)",
            'inputs = extractor(waveform, sampling_rate=sr, return_tensors="pt")',
            "with torch.no_grad():",
            "    out = model(**inputs, output_hidden_states=True)",
            "features = out.hidden_states  # embeddings + one tensor per layer, [1, frames, dim]",
            "print(len(features), tuple(features[-1].shape))",
            "```",
        ]
    )


def render_card(facts: CardFacts, model_id: str) -> str:
    """The model card (YAML metadata + markdown body); ``model_id`` is what the loading
    snippet passes to ``from_pretrained`` (the repo id, or the export's relative path)."""
    from huggingface_hub import ModelCardData

    tags = ["speechssl", facts.family, "self-supervised-learning", "audio"]
    if facts.synthetic:
        tags.append("synthetic-data")
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="feature-extraction",
        license=facts.license,
        tags=tags,
        datasets=facts.datasets or None,
        base_model=facts.base_model,
    )
    lines = [
        "---",
        data.to_yaml(),
        "---",
        "",
        f"# {facts.repo_id or facts.model_name}",
        "",
        f"A self-supervised speech encoder pretrained with speechssl ({facts.architecture}; "
        f"registry preset `{facts.model_name}`), exported as `transformers.{facts.hf_class}`.",
        "",
    ]
    if facts.synthetic:
        lines += [
            "> **Warning: trained on synthetic speech.** The training data was the corpus bundled "
            "with speechssl (`speechssl data synth`: eSpeak NG speech of a small vocabulary). "
            "This model is a demonstration of the toolkit, not a useful speech representation; "
            "its numbers below say nothing about real speech.",
            "",
        ]
    lines += ["## Training", "", "| what | value |", "|---|---|"]
    lines.append(f"| model | `{facts.model_name}` ({facts.architecture}) |")
    if facts.base_model:
        lines.append(f"| continued from | `{facts.base_model}` |")
    if facts.data_name:
        hours = f" ({facts.hours:.2f} h kept)" if facts.hours is not None else ""
        lines.append(f"| data dir | `{facts.data_name}`{hours} |")
    if facts.datasets:
        lines.append(f"| datasets | {', '.join(facts.datasets)} |")
    if facts.steps is not None:
        lines.append(f"| updates | {facts.steps} |")
    for lab in facts.labels:
        lines.append(
            f"| unit labels | K={lab['k']} at {_fmt(lab['label_rate'], 1)} Hz from {lab['source']} |"
        )
    for key, value in facts.optim.items():
        lines.append(f"| {key} | {value} |")
    if not (facts.data_name or facts.steps):
        lines.append(
            "| training record | none in the model dir (not exported from a training run) |"
        )
    lines += [
        "",
        "The full model config is in `speechssl/model.json`."
        if not facts.bare
        else "This is a bare encoder export (no pretraining heads).",
        "",
    ]
    if facts.units:
        lines += [
            "## Unit quality",
            "",
            "| units | features | K | PNMI | phone purity | cluster purity | perplexity |",
            "|---|---|---|---|---|---|---|",
        ]
        for u in facts.units:
            lines.append(
                f"| {u.get('name')} | {u.get('features')} | {u.get('k')} | {_fmt(u.get('pnmi'))} "
                f"| {_fmt(u.get('phone_purity'))} | {_fmt(u.get('cluster_purity'))} "
                f"| {_fmt(u.get('perplexity'), 1)} |"
            )
        lines.append("")
    if facts.trains:
        lines += ["## Pretraining runs", "", "| run | model | steps | train loss | dev loss |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for t in facts.trains:
            lines.append(
                f"| {t.get('name')} | {t.get('model')} | {t.get('step')} | {_fmt(t.get('loss'))} "
                f"| {_fmt(t.get('dev_loss'))} |"
            )
        lines.append("")
    if facts.probes:
        lines += ["## Probing", "", "| upstream | task | metric | value |", "|---|---|---|---|"]
        for p in facts.probes:
            lines.append(
                f"| {p['upstream']} | {p['task']} | {p['metric']} | {_fmt(p['value'], 4)} |"
            )
        lines.append("")
    lines += ["## Usage", "", _snippet(facts, model_id), ""]
    if not facts.bare:
        lines += [
            "Continue pretraining with speechssl: `speechssl import hf "
            f"{model_id} MODEL_DIR`, then `speechssl-train model.init_from=MODEL_DIR ...`.",
            "",
        ]
    lines += [f"Exported with speechssl {_version()}.", ""]
    return "\n".join(lines)


def _version() -> str:
    from speechssl import __version__

    return str(__version__)


def list_upload(folder: str | os.PathLike[str]) -> list[tuple[str, int]]:
    """``(path relative to folder, bytes)`` of every file ``upload_folder`` would send."""
    root = Path(folder)
    return sorted(
        (p.relative_to(root).as_posix(), p.stat().st_size) for p in root.rglob("*") if p.is_file()
    )


def push_folder(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
) -> str:
    """Upload ``folder`` to the model repo ``repo_id`` (created if missing); returns the
    commit (or pull request) URL. Any failure is a one-line :class:`HubError` naming the
    repo and the reason; the local folder is left as it is."""
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        raise HubError(
            f"cannot push to {repo_id}: HF_HUB_OFFLINE is set (the export is kept at {folder})"
        )
    api = HfApi()
    message = commit_message or f"Upload speechssl export {Path(folder).name}"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision and revision != "main" and not create_pr:
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="model",
            revision=revision,
            create_pr=create_pr,
            commit_message=message,
        )
    except Exception as exc:  # any library/network failure becomes one clear line
        raise HubError(
            f"push to {repo_id} failed ({type(exc).__name__}: {_first_line(exc)}); "
            f"the export is kept at {folder}"
        ) from None
    url = info.pr_url if create_pr and info.pr_url else info.commit_url
    return str(url)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    token = os.environ.get("HF_TOKEN")
    if token:
        line = line.replace(token, "***")
    return line[:300]


__all__ = [
    "CardFacts",
    "collect_card_facts",
    "list_upload",
    "push_folder",
    "render_card",
]
