"""Linear probe of a frozen image encoder: logistic regression on mean-pooled features.

``python -m speechssl.models.vision_probe --model-dir exp/simclr/final --data builtin:digits``
extracts the encoder output (mean over patches) of every image with the model frozen, fits
a standardised logistic regression on a fixed training split and prints the test accuracy
next to the same probe on a randomly initialised encoder of the same preset (``--baseline``,
on by default), as one JSON line per encoder.

The split is deterministic: images are ordered by id and the first ``--train-fraction``
(default 0.5565: the first 1000 of the 1797 digits) train the probe. This is a small
stand-alone probe for image recipes (``egs/digits``); speech probing lives in the
downstream framework.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import numpy as np
import torch

from speechssl.errors import ConfigError, SpeechSSLError
from speechssl.models.base import PretrainModel


@torch.no_grad()
def pooled_features(
    model: PretrainModel, images: torch.Tensor, batch_size: int = 256
) -> np.ndarray:
    """``[N, D]`` mean over patches of the frozen encoder's output (``last_hidden_state``)."""
    model.eval()
    out = []
    for start in range(0, images.shape[0], batch_size):
        ext = model.extract(images[start : start + batch_size])
        assert ext.last_hidden_state is not None
        out.append(ext.last_hidden_state.mean(dim=1).float().cpu())
    return torch.cat(out).numpy()


def probe_accuracy(
    model: PretrainModel, images: torch.Tensor, classes: np.ndarray, num_train: int
) -> float:
    """Test accuracy of a logistic regression trained on the first ``num_train`` images'
    frozen features and tested on the rest."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if not 0 < num_train < len(classes):
        raise ConfigError(f"the probe needs train and test images; got {num_train} of {len(classes)} for training")  # fmt: skip
    feats = pooled_features(model, images)
    scaler = StandardScaler().fit(feats[:num_train])
    clf = LogisticRegression(max_iter=2000).fit(
        scaler.transform(feats[:num_train]), classes[:num_train]
    )
    return float(clf.score(scaler.transform(feats[num_train:]), classes[num_train:]))


def run_probe(
    model_dir: str, data: str, train_fraction: float = 0.5565, baseline: bool = True, seed: int = 0
) -> list[dict[str, object]]:
    """Probe the model in ``model_dir`` (and a random-init encoder of the same preset) on the
    images of ``data`` (an image folder or ``builtin:digits``); one result dict each."""
    from speechssl.data.images import load_image_folder
    from speechssl.models.io import load_model_dir
    from speechssl.models.registry import create_model, get_spec

    model = load_model_dir(model_dir)
    if get_spec(model.model_name).modality != "image":
        raise ConfigError(f"{model_dir}: {model.model_name} is not an image model")
    patch = model.config.patch
    images = load_image_folder(data, patch.channels, patch.image_size)
    order = sorted(range(len(images)), key=lambda i: images.image_ids[i])
    x = images.images[order]
    y = images.classes[order].numpy()
    num_train = round(train_fraction * len(y))
    results: list[dict[str, object]] = []
    acc = probe_accuracy(model, x, y, num_train)
    results.append({"encoder": "pretrained", "model": model.model_name, "accuracy": round(acc, 4)})
    if baseline:
        torch.manual_seed(seed)
        random_init = create_model(model.model_name, **_config_dict(model))
        base = probe_accuracy(random_init, x, y, num_train)
        results.append(
            {"encoder": "random_init", "model": model.model_name, "accuracy": round(base, 4)}
        )
    for r in results:
        r.update({"data": data, "train_images": num_train, "test_images": len(y) - num_train})
    return results


def _config_dict(model: PretrainModel) -> dict[str, object]:
    from speechssl.models.io import config_to_dict

    return config_to_dict(model.config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m speechssl.models.vision_probe",
        description="Linear probe (logistic regression on mean-pooled frozen features) of an "
        "image model dir, against a random-init encoder of the same preset.",
    )
    parser.add_argument("--model-dir", required=True, help="a model dir (exp/<run>/final)")
    parser.add_argument("--data", default="builtin:digits", help="image folder or builtin:digits")
    parser.add_argument("--train-fraction", type=float, default=0.5565, help="leading share of the id-sorted images that trains the probe")  # fmt: skip
    parser.add_argument("--no-baseline", action="store_true", help="skip the random-init encoder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random-init encoder")
    parser.add_argument("--out", metavar="DIR", help="also write DIR/probe.json and DIR/probe.md (a table)")  # fmt: skip
    return parser


def results_table(results: list[dict[str, object]]) -> str:
    """A markdown table of probe results (encoder, accuracy, split sizes)."""
    lines = [
        "| model | encoder | linear-probe accuracy | train / test images | data |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        acc = float(r["accuracy"])  # type: ignore[arg-type]
        lines.append(
            f"| {r['model']} | {r['encoder']} | {100 * acc:.1f}% | "
            f"{r['train_images']} / {r['test_images']} | {r['data']} |"
        )
    if any(r["data"] == "builtin:digits" for r in results):
        lines.append("")
        lines.append(
            "builtin:digits is scikit-learn's 1797 8x8 handwritten digits: a tiny set, so these "
            "numbers show the pipeline works, not how the method compares at scale."
        )
    return "\n".join(lines) + "\n"


def write_results(out: str, results: list[dict[str, object]]) -> None:
    """``out/probe.json`` and ``out/probe.md``, each written atomically."""
    from pathlib import Path

    from speechssl.utils.atomic import atomic_write_text

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / "probe.json", json.dumps(results, indent=2, sort_keys=True) + "\n")
    atomic_write_text(root / "probe.md", results_table(results))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        results = run_probe(
            args.model_dir, args.data, args.train_fraction, not args.no_baseline, args.seed
        )
    except SpeechSSLError as exc:
        print(f"vision_probe: error: {exc}", file=sys.stderr)
        return 1
    for r in results:
        print(json.dumps(r, sort_keys=True))
    if args.out:
        write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
