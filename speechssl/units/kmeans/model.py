"""The k-means model: centroids (in normalised feature space), the normalisation, metadata;
its file format and the checks on load.

A model directory holds ``kmeans.safetensors`` (``centroids [k, dim]`` float32,
``centroid_norms [k]``, optionally ``mean``/``std [dim]``) and ``kmeans.json`` (format, k,
dim, the weights' SHA-256, the fit's settings, data and history). Loading checks the
checksum, the tensor names, dtypes and shapes, and that every value is finite (a NaN
centroid would silently give one label everywhere); every problem is a one-line
:class:`KMeansError` naming the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from speechssl.errors import ConfigError, ItemError
from speechssl.units.kmeans.lloyd import assign_nearest, chunk_rows, default_chunk_elems
from speechssl.utils.atomic import atomic_dir
from speechssl.utils.files import check_output_dir, sha256_file

MODEL_FORMAT = "speechssl-kmeans/1"
MODEL_WEIGHTS = "kmeans.safetensors"
MODEL_META = "kmeans.json"


class KMeansError(ItemError):
    """A k-means model directory is missing, partial or inconsistent."""

    kind = "kmeans-model"


def check_tensors(where: str, centroids: Tensor, mean: Tensor | None, std: Tensor | None) -> None:
    """Raise a KMeansError naming ``where`` unless the model's tensors are usable: float
    ``[k, dim]`` centroids, ``mean``/``std`` both absent or both ``[dim]`` floats with
    ``std > 0``, every value finite."""
    if not centroids.is_floating_point() or centroids.ndim != 2 or 0 in centroids.shape:
        raise KMeansError(
            where,
            f"centroids must be a non-empty float [k, dim] matrix, got {centroids.dtype} "
            f"{tuple(centroids.shape)}",
        )
    bad_rows = (~torch.isfinite(centroids)).any(1).nonzero().flatten().tolist()
    if bad_rows:
        raise KMeansError(
            where, f"{len(bad_rows)} centroid(s) with NaN/inf values (first: row {bad_rows[0]})"
        )
    if (mean is None) != (std is None):
        raise KMeansError(where, "has one of mean/std without the other")
    dim = centroids.shape[1]
    for name, t in (("mean", mean), ("std", std)):
        if t is None:
            continue
        if not t.is_floating_point() or tuple(t.shape) != (dim,):
            raise KMeansError(
                where,
                f"{name} must be a float vector of size {dim}, got {t.dtype} {tuple(t.shape)}",
            )
        if not bool(torch.isfinite(t).all()):
            raise KMeansError(where, f"{name} has NaN/inf values")
    if std is not None and not bool((std > 0).all()):
        raise KMeansError(where, "std has values <= 0")


@dataclass
class KMeansModel:
    """Centroids (in normalised feature space) plus the normalisation and metadata."""

    centroids: Tensor
    mean: Tensor | None = None
    std: Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    def to(self, device: torch.device | str) -> KMeansModel:
        return KMeansModel(
            centroids=self.centroids.to(device),
            mean=None if self.mean is None else self.mean.to(device),
            std=None if self.std is None else self.std.to(device),
            meta=self.meta,
        )

    def normalize(self, x: Tensor) -> Tensor:
        """float32 copy of ``x`` with the model's normalisation applied."""
        x = x.to(device=self.centroids.device, dtype=torch.float32)
        if self.mean is not None and self.std is not None:
            x = (x - self.mean) / self.std
        return x

    def _checked_input(self, x: Tensor | np.ndarray) -> Tensor:
        """Raw features ``[N, dim]`` (tensor or array) -> normalised float32 on the model's
        device; a ConfigError when the shape does not fit."""
        if isinstance(x, np.ndarray):
            arr = np.ascontiguousarray(x)
            xt = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
        else:
            xt = x
        if xt.ndim != 2 or xt.shape[1] != self.dim:
            raise ConfigError(f"features of shape {tuple(xt.shape)}, model expects [N, {self.dim}]")
        return self.normalize(xt)

    def assign(
        self, x: Tensor | np.ndarray, chunk_elems: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Nearest centroid of each row of ``x`` ``[N, dim]`` (raw features) and its squared
        distance (see :func:`~speechssl.units.kmeans.lloyd.assign_nearest` on precision).

        Returns ``(labels [N] int64, squared distance [N] float32)``.
        """
        xn = self._checked_input(x)
        cnorm = (self.centroids * self.centroids).sum(1)
        rows = chunk_rows(chunk_elems or default_chunk_elems(self.centroids.device), self.k)
        labels, dists = [], []
        for s in range(0, xn.shape[0], rows):
            idx, dist = assign_nearest(xn[s : s + rows], self.centroids, cnorm)
            labels.append(idx)
            dists.append(dist)
        if not labels:
            return torch.empty(0, dtype=torch.int64), torch.empty(0)
        return torch.cat(labels), torch.cat(dists)

    def labels(self, x: Tensor | np.ndarray, chunk_elems: int | None = None) -> Tensor:
        """Nearest centroid of each row of ``x`` ``[N, dim]`` (raw features), ``[N]`` int64;
        like :meth:`assign` without computing the distances."""
        xn = self._checked_input(x)
        cnorm = (self.centroids * self.centroids).sum(1).unsqueeze(0)
        ct = self.centroids.t()
        rows = chunk_rows(chunk_elems or default_chunk_elems(self.centroids.device), self.k)
        out = torch.empty(xn.shape[0], dtype=torch.int64, device=xn.device)
        for s in range(0, xn.shape[0], rows):
            xc = xn[s : s + rows]
            torch.argmin(
                torch.addmm(cnorm, xc, ct, beta=1.0, alpha=-2.0), dim=1, out=out[s : s + rows]
            )
        return out

    def save(self, out_dir: str | os.PathLike[str], overwrite: bool = False) -> None:
        """Write ``kmeans.safetensors`` and ``kmeans.json`` into ``out_dir`` atomically."""
        from safetensors.torch import save_file

        check_tensors(str(out_dir), self.centroids, self.mean, self.std)
        # --overwrite replaces a k-means model dir, never a data dir or anything else
        check_output_dir(out_dir, MODEL_META, "k-means model dir")
        tensors = {"centroids": self.centroids.detach().float().cpu().contiguous()}
        tensors["centroid_norms"] = (tensors["centroids"] ** 2).sum(1)
        if self.mean is not None and self.std is not None:
            tensors["mean"] = self.mean.detach().float().cpu().contiguous()
            tensors["std"] = self.std.detach().float().cpu().contiguous()
        with atomic_dir(out_dir, overwrite=overwrite) as tmp:
            save_file(tensors, str(tmp / MODEL_WEIGHTS))
            meta = dict(self.meta)
            meta.update(
                format=MODEL_FORMAT,
                k=self.k,
                dim=self.dim,
                weights_sha256=sha256_file(tmp / MODEL_WEIGHTS),
            )
            (tmp / MODEL_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        self.meta = meta

    @staticmethod
    def load(model_dir: str | os.PathLike[str], device: str | torch.device = "cpu") -> KMeansModel:
        """Load a model written by :meth:`save`, checking its files agree and its values are
        usable (see the module doc)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        root = Path(model_dir)
        meta_path, weights = root / MODEL_META, root / MODEL_WEIGHTS
        if not meta_path.exists() or not weights.exists():
            raise KMeansError(
                str(root), f"not a k-means model dir (needs {MODEL_META} and {MODEL_WEIGHTS})"
            )
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise KMeansError(str(meta_path), f"corrupt metadata: {exc}") from None
        if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
            got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise KMeansError(str(meta_path), f"format {got!r}, expected {MODEL_FORMAT}")
        if sha256_file(weights) != meta.get("weights_sha256"):
            raise KMeansError(
                str(weights), "checksum differs from kmeans.json (partial or edited?)"
            )
        try:
            t = load_file(str(weights))
        except (SafetensorError, OSError, ValueError) as exc:
            raise KMeansError(str(weights), f"unreadable safetensors file: {exc}") from None
        if "centroids" not in t:
            raise KMeansError(
                str(weights), f"no 'centroids' tensor (has: {', '.join(sorted(t)) or 'none'})"
            )
        check_tensors(str(weights), t["centroids"], t.get("mean"), t.get("std"))
        model = KMeansModel(
            centroids=t["centroids"].float(),
            mean=None if t.get("mean") is None else t["mean"].float(),
            std=None if t.get("std") is None else t["std"].float(),
            meta=meta,
        )
        if (model.k, model.dim) != (meta.get("k"), meta.get("dim")):
            raise KMeansError(
                str(weights),
                f"centroids are {model.k} x {model.dim}, kmeans.json says "
                f"{meta.get('k')} x {meta.get('dim')}",
            )
        return model.to(device)

    @property
    def sha256(self) -> str:
        return str(self.meta.get("weights_sha256", ""))
