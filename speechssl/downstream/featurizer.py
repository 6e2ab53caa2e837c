"""The featurizer: one learned weight per upstream layer (s3prl's semantics).

Weights start at zero (a uniform average after the softmax); the output is
``sum_l softmax(w)_l * h_l`` over hidden states ``h_l``, each optionally layer-normalised
first (no affine parameters, as s3prl's ``layer_norm`` option). With ``layer`` set, the
featurizer picks that one hidden state and learns nothing. Given ``stats`` (per-layer mean
and standard deviation over the training split's frames, for upstreams whose features are
raw, e.g. fbank/MFCC), each hidden state is standardised first; the statistics are buffers,
saved with the probe.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechssl.errors import ConfigError
from speechssl.utils.atomic import atomic_write_text


class Featurizer(nn.Module):
    """``[N, T, L, D]`` stacked hidden states -> ``[N, T, D]``.

    Args:
        layers: indices (into the upstream's hidden states) of the ``L`` stacked states.
        layer: pick this hidden state (one of ``layers``) instead of a weighted sum.
        layer_norm: layer-normalise each hidden state before the sum.
        stats: ``(mean, std)``, each ``[L, D]``: standardise every hidden state first.
    """

    def __init__(
        self,
        layers: list[int],
        layer: int | None = None,
        layer_norm: bool = False,
        stats: tuple[Tensor, Tensor] | None = None,
    ):
        super().__init__()
        if not layers:
            raise ConfigError("the featurizer needs at least one layer")
        self.standardized = stats is not None
        if stats is not None:
            mean, std = stats
            if mean.shape != std.shape or mean.dim() != 2 or mean.shape[0] != len(layers):
                raise ConfigError(
                    f"featurizer stats must be two [{len(layers)}, D] tensors, got "
                    f"{tuple(mean.shape)} and {tuple(std.shape)}"
                )
            self.register_buffer("mean", mean.float().clone())
            self.register_buffer("inv_std", 1.0 / std.float().clamp_min(1e-5))
        self.layers = list(layers)
        self.layer_norm = layer_norm
        self.pick: int | None = None
        if layer is not None:
            if layer not in self.layers:
                raise ConfigError(f"layer {layer} is not among the available layers {self.layers}")
            self.pick = self.layers.index(layer)
            self.weights = None
        else:
            self.weights = nn.Parameter(torch.zeros(len(self.layers)))

    def forward(self, stacked: Tensor) -> Tensor:
        if stacked.shape[2] != len(self.layers):
            raise ConfigError(
                f"featurizer expects {len(self.layers)} layers, got {stacked.shape[2]}"
            )
        if self.standardized:
            mean, inv_std = self.get_buffer("mean"), self.get_buffer("inv_std")
            stacked = (stacked - mean.to(stacked.dtype)) * inv_std.to(stacked.dtype)
        if self.pick is not None:
            out = stacked[:, :, self.pick]
            return F.layer_norm(out, out.shape[-1:]) if self.layer_norm else out
        if self.layer_norm:
            stacked = F.layer_norm(stacked, stacked.shape[-1:])
        assert self.weights is not None
        norm = torch.softmax(self.weights, dim=0)
        return torch.einsum("ntld,l->ntd", stacked, norm.to(stacked.dtype))

    def layer_weights(self) -> dict[int, float]:
        """``{layer index: softmax weight}`` (1.0 for a picked layer)."""
        if self.weights is None:
            assert self.pick is not None
            return {self.layers[self.pick]: 1.0}
        norm = torch.softmax(self.weights.detach().float().cpu(), dim=0).tolist()
        return dict(zip(self.layers, norm))

    def save_weights(self, json_path: Path, png_path: Path | None = None, title: str = "") -> None:
        """Write the learned layer weights as JSON (and a bar plot as PNG)."""
        weights = self.layer_weights()
        payload = {"layers": list(weights), "weights": list(weights.values()), "title": title}
        atomic_write_text(json_path, json.dumps(payload, indent=2) + "\n")
        if png_path is not None:
            plot_layer_weights(weights, png_path, title)


def plot_layer_weights(weights: dict[int, float], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(3.0, 0.5 * len(weights) + 1.5), 2.8))
    ax.bar(range(len(weights)), list(weights.values()), color="tab:blue")
    ax.set_xticks(range(len(weights)), [str(k) for k in weights])
    ax.set_xlabel("hidden state (0 = input of layer 1)")
    ax.set_ylabel("softmax weight")
    ax.set_title(title or "learned layer weights", fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
