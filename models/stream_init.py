"""Expansion of the embedding into n residual streams (``stream_init``), and the reduction back.

With ``copy`` every stream starts as the embedding, so the n streams are interchangeable at
initialization: the symmetric baseline in which hyper-connections tend to *collapse* (one dominant
stream, mixing stuck near identity). Every other option makes the streams differ at initialization:

| stream_init     | stream s (x = embedding [d])                            | parameters                       |
|-----------------|---------------------------------------------------------|----------------------------------|
| copy            | H_s = x                                                 | none                             |
| lss             | H_s = x ⊙ λ_s                                           | ``stream_scale`` λ [n, d]        |
| rotate          | H_s = R(θ_s) x, R a product of 2-D channel rotations    | ``stream_angle`` θ [n, ⌊d/2⌋]    |
| split           | H_s = x ⊙ softmax_s(ℓ)_s, so Σ_s H_s = x                | ``stream_split_logits`` ℓ [n, d] |
| perturb         | H_s = x; the connections' static weights perturbed      | none here (``init_static``)      |
| balanced_rotate | H_s = R(±θ) x, signs balanced over streams per pair:    | ``stream_angle`` θ [n, d/2]      |
|                 | ‖H_s‖ = ‖x‖ and Σ_s H_s = n·cos θ·x exactly             |                                  |

``lss`` is Learned Stream Scaling of the stream-collapse paper (Alimaskina et al., arXiv 2606.03483; its
code's ``StreamExpandLSS``); ``rotate``, ``split``, ``perturb`` and ``balanced_rotate`` are hizoo's own.
All parameters are learnable. ``perturb`` is the one option that acts in the connections rather than in the
expansion: every connection (hc.py, mhc.py) sets its static weights or logits through ``init_static``, which
adds N(0, 0.1²) noise to each under ``perturb``.

Norms at initialization, per token, against ``copy`` (‖H_s‖ = ‖x‖, ‖Σ_s H_s‖ = n‖x‖): ``lss`` scales both
by about 0.6; ``split`` keeps the sum at ‖x‖ (n times smaller) and shrinks each stream; ``rotate`` keeps
each stream's norm but its streams partly cancel in the sum; ``balanced_rotate`` keeps each stream's
norm exactly and the sum parallel to x at cos θ of copy's norm (the closest any set of distinct streams
can come to both, see ``StreamExpansion``).

After the last layer the streams are reduced to one hidden state by ``reduce_streams``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from transformers import initialization as init

from .configuration import STREAM_REDUCES, HizooConfig

LSS_INIT = 0.6  # λ = 0.6 + Xavier-uniform noise (the stream-collapse code's default expand_lss_init)
SPLIT_LOGIT_STD = 1.0  # ℓ ~ N(0, 1): each channel's share of stream s varies around 1/n by about ±60 % for n = 4
PERTURB_STD = 0.1  # stream_init="perturb": N(0, 0.1²) added to every static read/mix/write weight (or logit)


class StreamExpansion(nn.Module):
    """Embedding x [B, S, d] -> streams [B, S, n, d] according to ``config.stream_init``, applied to
    ``config.stream_embedding_scale``·x (1.0 by default; for n = 1 the plain residual's input).

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
    - ``perturb``: H_s = x, like ``copy``; the symmetry is broken by each connection's perturbed static
      weights (``init_static``), so streams differ after the first branch.
    - ``balanced_rotate``: the ``rotate`` map (same parameter ``stream_angle``, same channel pairs) with
      angles θ_{s,k} = ε_{s,k}·θ, θ = ``stream_init_angle``, where for every channel pair k the signs
      ε_{·,k} are a random permutation of n/2 times +1 and n/2 times −1 (odd n: one 0, so one stream keeps
      that pair unrotated). Exactly, per token:
        ‖H_s‖ = ‖x‖                      (each R is orthogonal: the embedding's scale in every stream)
        Σ_s H_s = c·x,  c = Σ_s cos θ_{s,k} = n·cos θ (odd n: (n−1)·cos θ + 1)
      because Σ_s sin θ_{s,k} = 0 cancels every rotated component: the sum stays parallel to the
      embedding, at c/n of copy's norm (0.980 for θ = 0.2). Why not both norms exactly: for streams
      with ‖H_s‖ = ‖x‖, ‖Σ_s H_s‖ ≤ Σ_s ‖H_s‖ = n‖x‖ with equality only if every H_s is the same vector
      (triangle inequality). Exactly, for any streams of norm ‖x‖,
        ‖Σ_s H_s‖² = n‖x‖²·(1 + (n − 1)·ρ̄),  ρ̄ = mean over stream pairs s ≠ s' of cos(H_s, H_s'),
      so the sum's norm is fixed by how much the streams differ; here ρ̄ = (c² − n)/(n(n − 1)), for even n
      (n cos²θ − 1)/(n − 1) (0.947 for n = 4, θ = 0.2; ``lss`` at d = 128 gives about 0.96 while scaling
      both norms by 0.6).
      Keeping the sum exact instead (H_s/cos θ) would grow every stream by 1/cos θ; hizoo keeps the
      per-stream norm exact, since it sets the embedding's weight against the branch outputs added to
      each stream, and under the default ``stream_reduce="norm_sum"`` the output Σ_s norm(H_s) =
      c·norm(x) at the expansion either way (up to the norm's eps).
    """

    def __init__(self, config: HizooConfig):
        super().__init__()
        self.kind = config.stream_init
        self.n_streams = n = config.n_streams
        self.embedding_scale = config.stream_embedding_scale  # x ↦ scale·x before the expansion (1.0: as is)
        d = config.hidden_size
        if self.kind == "lss":
            self.stream_scale = nn.Parameter(torch.empty(n, d))
        elif self.kind in ("rotate", "balanced_rotate"):
            self.stream_angle = nn.Parameter(torch.empty(n, d // 2))
            self.angle = config.stream_init_angle
        elif self.kind == "split":
            self.stream_split_logits = nn.Parameter(torch.empty(n, d))
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
        elif self.kind == "balanced_rotate":
            init.copy_(self.stream_angle, balanced_angles(*self.stream_angle.shape, self.angle))

    def forward(self, x: Tensor) -> Tensor:
        n = self.n_streams
        if self.embedding_scale != 1.0:  # stream_embedding_scale: every stream gets scale·x (1.0 skips the multiply)
            x = x * self.embedding_scale
        if self.kind in ("copy", "perturb"):
            return x.unsqueeze(-2).expand(*x.shape[:-1], n, x.shape[-1])
        if self.kind == "lss":
            return x.unsqueeze(-2) * self.stream_scale.to(x.dtype)  # [B, S, n, d]
        if self.kind == "split":
            shares = torch.softmax(self.stream_split_logits.float(), dim=0).to(x.dtype)  # [n, d], Σ_s = 1
            return x.unsqueeze(-2) * shares
        # rotate, balanced_rotate
        h = self.stream_angle.shape[-1]
        cos, sin = self.stream_angle.cos().to(x.dtype), self.stream_angle.sin().to(x.dtype)  # [n, h]
        x1, x2, rest = x[..., None, :h], x[..., None, h:2 * h], x[..., 2 * h:]  # [B, S, 1, h] ×2, [B, S, d-2h]
        parts = [x1 * cos - x2 * sin, x1 * sin + x2 * cos]  # [B, S, n, h] ×2
        if rest.shape[-1]:
            parts.append(rest.unsqueeze(-2).expand(*rest.shape[:-1], n, rest.shape[-1]))
        return torch.cat(parts, dim=-1)


def init_static(values: dict[nn.Parameter, Tensor], stream_init: str) -> None:
    """Set each static connection parameter to its initial value (the connections' ``reset_parameters``): as given,
    or under ``stream_init="perturb"`` with N(0, ``PERTURB_STD``²) noise added to every entry (torch's global RNG,
    one draw per parameter in the order given), so that even with identical streams at the expansion the
    connections read, mix and write them differently from the first branch on. transformers.initialization's
    ``copy_`` leaves values loaded by from_pretrained untouched."""
    for param, value in values.items():
        if stream_init == "perturb":
            value = value + PERTURB_STD * torch.randn(value.shape)
        init.copy_(param, value)


def balanced_angles(n: int, pairs: int, angle: float) -> Tensor:
    """[n, pairs] angles ε_{s,k}·angle: per pair k the signs ε_{·,k} are a random permutation (torch's global
    RNG, as every init) of n//2 times +1, n//2 times −1 and, for odd n, one 0, so Σ_s sin θ_{s,k} = 0."""
    base = torch.tensor([1.0] * (n // 2) + [-1.0] * (n // 2) + [0.0] * (n % 2))  # [n]
    order = torch.rand(pairs, n).argsort(dim=-1)  # [pairs, n]: a random permutation per pair
    return angle * base[order].T  # [n, pairs]


def reduce_streams(streams: Tensor, norm: nn.Module, how: str = "norm_sum") -> Tensor:
    """The model's output hidden state from its last streams: [B, S, n, d] -> [B, S, d].

    - ``norm_sum`` (default): Σ_s norm(H_s), the one final norm applied to each stream and the results
      summed, as the official stream-collapse model does (``ln_f`` on the stream-major batch, then the sum
      over streams).
    - ``sum_norm``: norm(Σ_s H_s), hizoo's earlier form (and the ``hyper-connections`` package's models:
      reduce, then the final norm).

    With one stream both are norm(H), the plain pre-norm model's final norm. They differ by more than a
    scale for distinct streams; for n equal streams H_s = x, norm_sum gives n·norm(x) and sum_norm norm(x)
    (up to the norm's eps), so logits are n times larger under norm_sum.
    """
    if how == "norm_sum":
        return norm(streams).sum(dim=-2)
    if how == "sum_norm":
        return norm(streams.sum(dim=-2))
    raise ValueError(f"stream_reduce={how!r} is not allowed; choose one of {', '.join(map(repr, STREAM_REDUCES))}")
