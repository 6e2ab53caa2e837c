"""Quantizers: the Gumbel product quantizer (wav2vec 2.0) and the random-projection
quantizer (BEST-RQ), both modality-free over ``[..., D]`` inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechssl.distributed import all_reduce_mean
from speechssl.errors import ConfigError


def perplexity(probs: Tensor) -> Tensor:
    """``exp(entropy)`` of each distribution along the last axis, summed over the rest.

    ``probs [G, V]`` (one marginal distribution per group) -> scalar in ``[G, G * V]``.
    """
    return torch.exp(-torch.xlogy(probs, probs).sum(dim=-1)).sum()


def gumbel_temperature(num_updates: int, max_temp: float, min_temp: float, decay: float) -> float:
    """wav2vec 2.0's annealing: ``max(max_temp * decay ** num_updates, min_temp)``."""
    return max(max_temp * decay**num_updates, min_temp)


@dataclass
class QuantizerOutput:
    """Result of :class:`GumbelVectorQuantizer`.

    Attributes:
        quantized: ``[..., vq_dim]`` concatenated code vectors of every group.
        codes: ``[..., G]`` long, the chosen entry per group (argmax of the logits).
        code_perplexity: perplexity of the hard code histogram, summed over groups.
        prob_perplexity: perplexity of the mean softmax, summed over groups (differentiable;
            the diversity loss pushes it up).
        num_codes: ``G * V``.
        temperature: the Gumbel-softmax temperature used.
    """

    quantized: Tensor
    codes: Tensor
    code_perplexity: Tensor
    prob_perplexity: Tensor
    num_codes: int
    temperature: float


class GumbelVectorQuantizer(nn.Module):
    """Product quantizer with ``G`` codebooks of ``V`` entries chosen by Gumbel-softmax.

    Training uses the straight-through hard Gumbel-softmax at the current temperature;
    evaluation takes the argmax. With ``distributed=True`` the marginal code distribution
    behind ``prob_perplexity`` is averaged over all ranks (a differentiable all-reduce), so
    the diversity loss sees the global batch; off by default, as in fairseq.

    Args:
        input_dim: feature dim of the input.
        num_groups: ``G`` (2 in wav2vec 2.0).
        num_vars: ``V`` entries per group (320).
        vq_dim: total output dim; each group's entries have ``vq_dim / G`` dims.
        temperature: ``(max, min, decay)`` of the annealing schedule.
        distributed: all-reduce the marginal distribution over ranks.
    """

    def __init__(
        self,
        input_dim: int,
        num_groups: int,
        num_vars: int,
        vq_dim: int,
        temperature: tuple[float, float, float] = (2.0, 0.5, 0.999995),
        *,
        distributed: bool = False,
    ) -> None:
        super().__init__()
        if vq_dim % num_groups:
            raise ConfigError(f"vq_dim {vq_dim} is not divisible by num_groups {num_groups}")
        self.num_groups = num_groups
        self.num_vars = num_vars
        self.vq_dim = vq_dim
        self.max_temp, self.min_temp, self.temp_decay = (float(t) for t in temperature)
        self.distributed = distributed
        self.weight_proj = nn.Linear(input_dim, num_groups * num_vars)
        self.codevectors = nn.Parameter(torch.empty(1, num_groups * num_vars, vq_dim // num_groups))
        nn.init.normal_(self.weight_proj.weight, mean=0.0, std=1.0)
        nn.init.zeros_(self.weight_proj.bias)
        nn.init.uniform_(self.codevectors)
        self.current_temp = self.max_temp

    @property
    def num_codes(self) -> int:
        return self.num_groups * self.num_vars

    def set_num_updates(self, num_updates: int) -> None:
        self.current_temp = gumbel_temperature(
            num_updates, self.max_temp, self.min_temp, self.temp_decay
        )

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> QuantizerOutput:
        """Quantize ``x [..., input_dim]`` (typically the masked frames, ``[M, C]``)."""
        lead = x.shape[:-1]
        g, v = self.num_groups, self.num_vars
        logits = self.weight_proj(x).reshape(-1, g, v).float()
        codes = logits.argmax(dim=-1)
        hard = F.one_hot(codes, v).to(logits.dtype)
        hard_marginal = hard.mean(dim=0) if hard.shape[0] else hard.sum(dim=0)
        code_ppl = perplexity(hard_marginal)
        soft_marginal = logits.softmax(dim=-1).mean(dim=0) if logits.shape[0] else hard.sum(dim=0)
        if self.distributed:
            soft_marginal = all_reduce_mean(soft_marginal)
        prob_ppl = perplexity(soft_marginal)

        if self.training:
            gumbels = -torch.empty_like(logits).exponential_(generator=generator).log()
            soft = ((logits + gumbels) / self.current_temp).softmax(dim=-1)
            index = soft.argmax(dim=-1, keepdim=True)
            hard_sample = torch.zeros_like(soft).scatter_(-1, index, 1.0)
            onehot = hard_sample - soft.detach() + soft
        else:
            onehot = hard
        onehot = onehot.to(self.codevectors.dtype)
        # [M, G, V] x [G, V, d] -> [M, G, d]: pick (or mix, for the gradient) each group's entry
        book = self.codevectors.view(g, v, -1)
        quantized = torch.einsum("mgv,gvd->mgd", onehot, book).reshape(*lead, self.vq_dim)
        return QuantizerOutput(
            quantized=quantized,
            codes=codes.view(*lead, g),
            code_perplexity=code_ppl.detach(),
            prob_perplexity=prob_ppl,
            num_codes=self.num_codes,
            temperature=self.current_temp,
        )


def diversity_loss(prob_perplexity: Tensor, num_codes: int) -> Tensor:
    """wav2vec 2.0's codebook diversity penalty ``(G*V - prob_perplexity) / (G*V)``: 0 when
    every entry is used equally, near 1 when one entry takes all."""
    return (num_codes - prob_perplexity) / num_codes


class RandomProjectionQuantizer(nn.Module):
    """BEST-RQ label source: a frozen random projection and a frozen random codebook.

    ``labels = argmax_c cos(x P, e_c)`` with ``P`` Xavier-initialised ``[D, d]`` and ``e_c``
    standard normal ``[C, d]``; both are buffers (never trained) drawn from ``seed``, so
    the same seed gives the same labels everywhere. Inputs should be normalised per
    feature (e.g. :meth:`fit_normalizer` or per-utterance mean/variance normalisation).

    Args:
        input_dim: ``D``.
        codebook_size: ``C`` classes.
        codebook_dim: ``d`` (16 in BEST-RQ).
        seed: RNG seed of the projection and the codebook.
    """

    def __init__(
        self, input_dim: int, codebook_size: int, codebook_dim: int = 16, seed: int = 0
    ) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        bound = math.sqrt(6.0 / (input_dim + codebook_dim))
        projection = (torch.rand(input_dim, codebook_dim, generator=gen) * 2 - 1) * bound
        codebook = torch.randn(codebook_size, codebook_dim, generator=gen)
        self.register_buffer("projection", projection)
        self.register_buffer("codebook", F.normalize(codebook, dim=-1))
        self.register_buffer("mean", torch.zeros(input_dim))
        self.register_buffer("std", torch.ones(input_dim))
        self.codebook_size = codebook_size

    projection: Tensor
    codebook: Tensor
    mean: Tensor
    std: Tensor

    @torch.no_grad()
    def fit_normalizer(self, x: Tensor) -> None:
        """Set the per-feature mean/std from samples ``x [..., D]`` (BEST-RQ's global stats)."""
        flat = x.reshape(-1, x.shape[-1]).float()
        self.mean.copy_(flat.mean(dim=0))
        self.std.copy_(flat.std(dim=0).clamp(min=1e-5))

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """``x [..., D]`` -> labels ``[...]`` long in ``[0, C)``."""
        z = ((x.float() - self.mean) / self.std) @ self.projection
        return (F.normalize(z, dim=-1) @ self.codebook.t()).argmax(dim=-1)
