"""Expansion of the embedding into n residual streams (``stream_init``), and the reduction back.

With ``copy`` every stream starts as the embedding, so the n streams are interchangeable at
initialization: the symmetric baseline in which hyper-connections tend to *collapse* (one dominant
stream, mixing stuck near identity). Every other option makes the streams differ at initialization:

| stream_init | stream s (x = embedding [d])                          | parameters                     |
|-------------|-------------------------------------------------------|--------------------------------|
| copy        | H_s = x                                               | none                           |
| lss         | H_s = x ⊙ λ_s                                         | ``stream_scale`` λ [n, d]      |
| rotate      | H_s = R(θ_s) x, R a product of 2-D channel rotations  | ``stream_angle`` θ [n, ⌊d/2⌋]  |
| split       | H_s = x ⊙ softmax_s(ℓ)_s, so Σ_s H_s = x              | ``stream_split_logits`` ℓ [n, d] |
| perturb     | H_s = x; the connections' mixing starts perturbed     | none here (see hyper_connections) |

``lss`` is Learned Stream Scaling of the stream-collapse paper (Alimaskina et al., arXiv 2606.03483);
``rotate``, ``split`` and ``perturb`` are hizoo's own. All parameters are learnable.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from transformers import initialization as init

from .configuration import HizooConfig

LSS_INIT = 0.6  # λ = 0.6 + Xavier-uniform noise (the stream-collapse paper's code default)
SPLIT_LOGIT_STD = 1.0  # ℓ ~ N(0, 1): each channel's share of stream s varies around 1/n by about ±60 % for n = 4


class StreamExpansion(nn.Module):
    """Embedding x [B, S, d] -> streams [B, S, n, d] according to ``config.stream_init``.

    - ``copy``: H_s = x (a broadcast view, no copy is made).
    - ``lss``: H_s = x ⊙ λ_s, λ ∈ R^{n×d} initialized 0.6 + U(−b, b) with the Xavier-uniform bound
      b = √(6 / (d + n)). Different per-channel scales make the streams differ in direction.
    - ``rotate``: H_s = R(θ_s) x where R(θ_s) rotates each channel pair (x_k, x_{k+⌊d/2⌋}) by the angle
      θ_{s,k} (the rotate-half layout of RoPE; with odd d the last channel is kept):
      [x_k, x_{k+h}] ↦ [x_k cos θ − x_{k+h} sin θ, x_k sin θ + x_{k+h} cos θ], h = ⌊d/2⌋.
      R(θ_s) is orthogonal, so every stream keeps the embedding's norm; θ ~ U(−π, π) makes two streams'
      expected cosine similarity 0 at initialization.
    - ``split``: H_s = x ⊙ m_s with m = softmax over streams of logits ℓ ∈ R^{n×d}, ℓ ~ N(0, 1): each
      channel of the embedding is divided among the streams in random, non-uniform shares that sum to
      1, so the reduced sum Σ_s H_s is exactly the embedding.
    - ``perturb``: H_s = x, like ``copy``; the symmetry is broken by each connection's perturbed mixing
      initialization (``ResidualStreams.reset_parameters``), so streams differ after the first branch.
    """

    def __init__(self, config: HizooConfig):
        super().__init__()
        self.kind = config.stream_init
        self.n_streams = n = config.n_streams
        d = config.hidden_size
        if self.kind == "lss":
            self.stream_scale = nn.Parameter(torch.empty(n, d))
        elif self.kind == "rotate":
            self.stream_angle = nn.Parameter(torch.empty(n, d // 2))
        elif self.kind == "split":
            self.stream_split_logits = nn.Parameter(torch.empty(n, d))
        elif self.kind not in ("copy", "perturb"):
            raise ValueError(f"stream_init={self.kind!r} is not allowed; choose one of 'copy', 'lss', 'rotate', "
                             f"'split', 'perturb'")
        if any(True for _ in self.parameters(recurse=False)):
            self.reset_parameters()

    def reset_parameters(self) -> None:
        # transformers.initialization functions leave values loaded by from_pretrained untouched.
        if self.kind == "lss":
            n, d = self.stream_scale.shape
            bound = math.sqrt(6.0 / (d + n))  # Xavier uniform for fan_in = d, fan_out = n
            init.uniform_(self.stream_scale, LSS_INIT - bound, LSS_INIT + bound)
        elif self.kind == "rotate":
            init.uniform_(self.stream_angle, -math.pi, math.pi)
        elif self.kind == "split":
            init.normal_(self.stream_split_logits, mean=0.0, std=SPLIT_LOGIT_STD)

    def forward(self, x: Tensor) -> Tensor:
        n = self.n_streams
        if self.kind in ("copy", "perturb"):
            return x.unsqueeze(-2).expand(*x.shape[:-1], n, x.shape[-1])
        if self.kind == "lss":
            return x.unsqueeze(-2) * self.stream_scale.to(x.dtype)  # [B, S, n, d]
        if self.kind == "split":
            shares = torch.softmax(self.stream_split_logits.float(), dim=0).to(x.dtype)  # [n, d], Σ_s = 1
            return x.unsqueeze(-2) * shares
        # rotate
        h = self.stream_angle.shape[-1]
        cos, sin = self.stream_angle.cos().to(x.dtype), self.stream_angle.sin().to(x.dtype)  # [n, h]
        x1, x2, rest = x[..., None, :h], x[..., None, h:2 * h], x[..., 2 * h:]  # [B, S, 1, h] ×2, [B, S, d-2h]
        parts = [x1 * cos - x2 * sin, x1 * sin + x2 * cos]  # [B, S, n, h] ×2
        if rest.shape[-1]:
            parts.append(rest.unsqueeze(-2).expand(*rest.shape[:-1], n, rest.shape[-1]))
        return torch.cat(parts, dim=-1)


def reduce_streams(streams: Tensor) -> Tensor:
    """Sum the streams: [B, S, n, d] -> [B, S, d] (before the final norm, as in both papers)."""
    return streams.sum(dim=-2)
