"""Hyper-connections (Zhu et al. 2024, arXiv 2409.19606): ``residual="hc"``, static or dynamic (``hc_dynamic``).

Per branch the matrix [[0, B], [A_m, A_r]] (Eq. 1) gives the coefficients of the streams' read and write
(stream_connection.py): r = A_m, M = A_r, w = B (Eqs. 2–5).

- ``HyperConnection`` (static): learned constants initialized as Eq. 14's Pre-Norm equivalent, A_m = e_k,
  A_r = I, B = 1, with k the connection's starting stream.
- ``DynamicHyperConnection`` (Eqs. 10–13): with H̄ = norm(H) per stream (the coefficient norm of
  stream_connection.py, γ ∈ R^d shared by the streams),
  A_m += s_α ⊙ tanh(H̄ W_m), A_r += s_α ⊙ tanh(H̄ W_r), B += s_β ⊙ tanh(H̄ W_β)ᵀ; W = 0, s = 0.01 at init.

Every formula is checked against the official stream-collapse module (``hyper_conn/hyper_connections.py``) with
the same weights by ``bench/reference_streams.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import initialization as init

from .configuration import HizooConfig
from .stream_connection import ResidualStreams, inv_rms
from .stream_init import init_static

HC_DYNAMIC_SCALE_INIT = 0.01  # s_α = s_β (HC Eq. 10–13 and the hyper-connections package)


class HyperConnection(ResidualStreams):
    """Static HC: ``static_read`` A_m [n], ``static_mix`` A_r [n, n] (A_r[i, j]: input i -> output j),
    ``static_write`` B [n]; the coefficients are the parameters themselves."""

    kind = "hc"
    # The official static_alpha [n, 1 + n] = [A_m | A_r] is 2-D, its static_beta [n] = B is not.
    reference_decayed = ("static_read", "static_mix")

    def __init__(self, config: HizooConfig, layer_idx: int, branch: str):
        super().__init__(config, layer_idx, branch)
        self.add_parameters(config)
        self.reset_parameters()

    def add_parameters(self, config: HizooConfig) -> None:
        n = self.n_streams
        self.static_read = nn.Parameter(torch.empty(n))  # A_m
        self.static_mix = nn.Parameter(torch.empty(n, n))  # A_r[i, j]: input i -> output j
        self.static_write = nn.Parameter(torch.empty(n))  # B

    def reset_parameters(self) -> None:
        """A_m = e_k, A_r = I, B = 1 (Eq. 14), as in the official code (``perturb``: see stream_init.init_static).
        transformers.initialization functions skip values loaded by from_pretrained."""
        n = self.n_streams
        one_hot = torch.zeros(n)
        one_hot[self.stream] = 1.0
        init_static({self.static_read: one_hot, self.static_mix: torch.eye(n), self.static_write: torch.ones(n)},
                    self.stream_init)

    def coefficients(self, streams: Tensor) -> dict[str, Tensor]:
        return {"read": self.static_read, "write": self.static_write, "mix": self.static_mix}


class DynamicHyperConnection(HyperConnection):
    """Dynamic HC: the static parameters plus ``dynamic_proj`` [W_m | W_r]ᵀ [n + 1, d], ``dynamic_write_proj``
    W_β [d], ``dynamic_scale`` [s_α, s_β] [2] and ``norm_gain`` γ [d]. W_β is its own 1-D parameter, as in the
    official code, so that weight decay can treat it as that code does."""

    # ... and the official dynamic_alpha_fn [d, 1 + n] = [W_m | W_r]; not dynamic_beta_fn [d], the scales or γ.
    reference_decayed = HyperConnection.reference_decayed + ("dynamic_proj",)

    def add_parameters(self, config: HizooConfig) -> None:
        super().add_parameters(config)
        n, d = self.n_streams, config.hidden_size
        self.dynamic_proj = nn.Parameter(torch.empty(n + 1, d))  # [W_m | W_r]ᵀ
        self.dynamic_write_proj = nn.Parameter(torch.empty(d))  # W_β
        self.dynamic_scale = nn.Parameter(torch.empty(2))  # [s_α, s_β]
        self.norm_gain = nn.Parameter(torch.empty(d))  # γ of norm(H_i), shared by the streams

    def reset_parameters(self) -> None:
        """The static init, W = 0, s = 0.01 (§3.2), γ = 0."""
        super().reset_parameters()
        init.zeros_(self.dynamic_proj)
        init.zeros_(self.dynamic_write_proj)
        init.constant_(self.dynamic_scale, HC_DYNAMIC_SCALE_INIT)
        init.zeros_(self.norm_gain)

    def coefficients(self, streams: Tensor) -> dict[str, Tensor]:
        n = self.n_streams
        x = streams.float()
        # tanh(norm(H) W) = tanh((H diag(1 + γ) W) / rms(H)): one [n, d] @ [d, n + 2] product per token
        # (HC Eq. 10–13)
        proj = torch.cat([self.dynamic_proj, self.dynamic_write_proj[None]]).float()  # [n + 2, d]
        gain = 1.0 + self.norm_gain.float()  # [d]
        z = torch.tanh(F.linear(x, proj * gain) * inv_rms(x))  # [B, S, n, n + 2]
        s_alpha, s_beta = self.dynamic_scale.float().unbind()
        return {
            "read": self.static_read.float() + s_alpha * z[..., 0],  # A_m(H) [B, S, n]
            "write": self.static_write.float() + s_beta * z[..., n + 1],  # B(H) [B, S, n]
            "mix": self.static_mix.float() + s_alpha * z[..., 1:n + 1],  # A_r(H) [B, S, n, n]
        }
