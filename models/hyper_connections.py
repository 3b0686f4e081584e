"""Residual streams around each branch (attention or FFN) of a block.

Interface used by the model (models/modeling.py):
    streams = expand_streams(...)            # [B, S, d] -> [B, S, n, d]
    h, ctx = conn.read(streams)              # branch input [B, S, d] and what write() needs
    streams = conn.write(streams, out, ctx)  # add the branch output back into the streams
    x = reduce_streams(streams)              # [B, S, n, d] -> [B, S, d]  (sum, before the final norm)

With ``residual="none"`` there is one stream and this is the plain pre-norm residual x + F(norm(x)).
"""

from __future__ import annotations

from torch import Tensor, nn

from .configuration import HizooConfig


class StreamExpansion(nn.Module):
    """Embedding [B, S, d] -> streams [B, S, n, d]. ``copy``: every stream is the embedding."""

    def __init__(self, config: HizooConfig):
        super().__init__()
        self.n_streams = config.n_streams
        if config.stream_init != "copy":
            raise ValueError(f"stream_init={config.stream_init!r} is not implemented yet; available: 'copy'")

    def forward(self, x: Tensor) -> Tensor:
        return x.unsqueeze(-2).expand(*x.shape[:-1], self.n_streams, x.shape[-1])


def reduce_streams(streams: Tensor) -> Tensor:
    """Sum the streams: [B, S, n, d] -> [B, S, d]."""
    return streams.sum(dim=-2)


class ResidualStreams(nn.Module):
    """The connection of one branch. ``residual="none"``: h = x, x' = x + F(h)."""

    def __init__(self, config: HizooConfig, layer_idx: int, branch: str):
        super().__init__()
        if config.residual != "none":
            raise ValueError(f"residual={config.residual!r} is not implemented yet; available: 'none'")
        self.layer_idx = layer_idx
        self.branch = branch  # 'attn' | 'ffn'

    def read(self, streams: Tensor) -> tuple[Tensor, dict]:
        return streams[..., 0, :], {}  # [B, S, d]

    def write(self, streams: Tensor, branch_out: Tensor, ctx: dict) -> Tensor:
        return streams + branch_out.unsqueeze(-2)
