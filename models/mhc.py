"""Manifold-constrained hyper-connections (DeepSeek, arXiv 2512.24880): ``residual="mhc"`` and ``"mhc_lite"``.

x_{l+1} = H_res x_l + H_postᵀ F(H_pre x_l) (Eq. 3). The streams are flattened to x⃗ ∈ R^{nC} and normalized over
all nC values (the coefficient norm of stream_connection.py, γ ∈ R^{nC}), H̃ = α·(x⃗' φ) + b for pre (n), post (n)
and res (Eq. 7); in the read/write of stream_connection.py r = H_pre = σ(H̃_pre), w = H_post = 2σ(H̃_post)
(Eq. 8) and M = H_resᵀ, from the res logits:

- ``ManifoldHyperConnection`` (mhc): H_res = Sinkhorn–Knopp(exp(H̃_res)), H̃_res ∈ R^{n×n} (Eq. 8), 20 iterations
  in fp32, the input axis normalized first and the output axis last as in the official code (see sinkhorn.py).
- ``ManifoldHyperConnectionLite`` (mhc_lite): M = Σ_r softmax(c)_r P_r over all n! permutation matrices,
  c = H̃_res ∈ R^{n!}: exactly doubly stochastic without iterations.

Initialization as the stream-collapse paper's code: b_pre = b_post = +1 at the starting stream k and −1 elsewhere;
b_res = 0 on the diagonal and −8 off it (H_res ≈ I, 0.999 on the diagonal; mhc_lite: 0 for the identity
permutation, −8 for the others); φ = 0, α = ``mhc_alpha_init``, γ = 0. Every formula is checked against the
official modules (``hyper_conn/mhc.py``, ``hyper_conn/mhc_lite.py``) with the same weights by
``bench/reference_streams.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import initialization as init

from .configuration import HizooConfig
from .sinkhorn import permutation_mixture, sinkhorn_log
from .stream_connection import ResidualStreams, inv_rms
from .stream_init import init_static

MHC_READ_LOGIT = 1.0  # b_pre, b_post: +1 at the connection's stream, −1 elsewhere
MHC_OFF_DIAGONAL_LOGIT = -8.0  # b_res: 0 on the diagonal, −8 off it -> H_res ≈ I (0.999 on the diagonal)


class ManifoldHyperConnection(ResidualStreams):
    """mHC: biases ``pre_bias`` b_pre [n], ``post_bias`` b_post [n], ``res_bias`` b_res [n, n]; ``proj``
    [φ_pre | φ_post | φ_res]ᵀ [2n + n², n·d]; ``alpha`` [α_pre, α_post, α_res]; ``norm_gain`` γ [n·d]."""

    kind = "mhc"
    # The official static_alpha [n, 1 + n] = [b_pre | b_res] and the projections are >= 2-D; not static_beta [n]
    # = b_post, the three α (one-element) or γ.
    reference_decayed = ("pre_bias", "res_bias", "proj")

    def __init__(self, config: HizooConfig, layer_idx: int, branch: str):
        super().__init__(config, layer_idx, branch)
        n, d = self.n_streams, config.hidden_size
        self.sinkhorn_iters = config.mhc_sinkhorn_iters
        self.alpha_init = config.mhc_alpha_init
        res_init = self.res_init()
        self.pre_bias = nn.Parameter(torch.empty(n))
        self.post_bias = nn.Parameter(torch.empty(n))
        self.res_bias = nn.Parameter(torch.empty(res_init.shape))
        self.proj = nn.Parameter(torch.empty(2 * n + res_init.numel(), n * d))  # [φ_pre | φ_post | φ_res]ᵀ
        self.alpha = nn.Parameter(torch.empty(3))  # [α_pre, α_post, α_res]
        self.norm_gain = nn.Parameter(torch.empty(n * d))  # γ of the norm over all n·d values
        self.reset_parameters()

    def res_init(self) -> Tensor:
        """b_res at init [n, n]: 0 on the diagonal, −8 off it."""
        n = self.n_streams
        return torch.full((n, n), MHC_OFF_DIAGONAL_LOGIT).fill_diagonal_(0.0)

    def mix(self, res_logits: Tensor) -> Tensor:
        """M = Sinkhorn–Knopp(exp(H̃_res)): [B, S, n, n] -> [B, S, n, n]."""
        return sinkhorn_log(res_logits, self.sinkhorn_iters)

    def res_logits(self, z_res: Tensor, a_res: Tensor) -> Tensor:
        """H̃_res = α_res·(x⃗' φ_res) + b_res: [B, S, n²] -> [B, S, n, n]."""
        n = self.n_streams
        return a_res * z_res.unflatten(-1, (n, n)) + self.res_bias.float()

    def reset_parameters(self) -> None:
        """b_pre = b_post = +1 at stream k and −1 elsewhere, b_res from ``res_init``, φ = 0, α = ``mhc_alpha_init``,
        γ = 0, all as in the official code (``perturb``: see stream_init.init_static). transformers.initialization
        functions skip values loaded by from_pretrained."""
        one_hot = torch.zeros(self.n_streams)
        one_hot[self.stream] = 1.0
        gate = MHC_READ_LOGIT * (2 * one_hot - 1)  # +1 at stream k, −1 elsewhere
        init.zeros_(self.proj)
        init.constant_(self.alpha, self.alpha_init)
        init.zeros_(self.norm_gain)
        init_static({self.pre_bias: gate, self.post_bias: gate.clone(), self.res_bias: self.res_init()},
                    self.stream_init)

    def coefficients(self, streams: Tensor) -> dict[str, Tensor]:
        # mHC Eq. 7: RMSNorm over all nC values, x⃗' φ = (x⃗ diag(1 + γ) φ) / rms(x⃗)
        n = self.n_streams
        x = streams.flatten(-2).float()  # [B, S, n·d]
        gain = 1.0 + self.norm_gain.float()  # [n·d]
        z = F.linear(x, self.proj.float() * gain) * inv_rms(x)  # [B, S, 2n + n_res]
        a_pre, a_post, a_res = self.alpha.float().unbind()
        pre = torch.sigmoid(a_pre * z[..., :n] + self.pre_bias.float())  # H_pre [B, S, n]    (Eq. 8)
        post = 2.0 * torch.sigmoid(a_post * z[..., n:2 * n] + self.post_bias.float())  # H_post [B, S, n]
        logits = self.res_logits(z[..., 2 * n:], a_res)
        return {"read": pre, "write": post, "mix": self.mix(logits), "mix_logits": logits}


class ManifoldHyperConnectionLite(ManifoldHyperConnection):
    """mHC-lite: as mHC with ``res_bias`` c [n!] (permutation logits, the identity first) and ``proj``
    [2n + n!, n·d]; M mixes the n! permutation matrices."""

    kind = "mhc_lite"
    # Its official static_alpha [n + n!] = [b_pre | b_res] is 1-D, so only the projections.
    reference_decayed = ("proj",)

    def res_init(self) -> Tensor:
        """c at init [n!]: 0 for the identity (permutation 0), −8 for the others."""
        res = torch.full((math.factorial(self.n_streams),), MHC_OFF_DIAGONAL_LOGIT)
        res[0] = 0.0
        return res

    def res_logits(self, z_res: Tensor, a_res: Tensor) -> Tensor:
        """c = α_res·(x⃗' φ_res) + b_res: [B, S, n!]."""
        return a_res * z_res + self.res_bias.float()

    def mix(self, res_logits: Tensor) -> Tensor:
        """M = Σ_r softmax(c)_r P_r: [B, S, n!] -> [B, S, n, n]."""
        return permutation_mixture(res_logits)
