"""Residual streams around each branch (attention or FFN) of a block: plain residual, HC and mHC, one class per kind.

Interface used by the model (models/modeling.py):
    streams = StreamExpansion(config)(x)     # [B, S, d] -> [B, S, n, d]   (models/stream_init.py)
    conn = residual_streams(config, layer_idx, branch)       # the connection of one branch (below)
    h, ctx = conn.read(streams)              # branch input [B, S, d] and what write() needs
    streams = conn.write(streams, out, ctx)  # add the branch output back into the streams
    x = reduce_streams(streams, norm, how)   # [B, S, n, d] -> [B, S, d]  (Σ_s norm(H_s) by default)

| residual | hc_dynamic | class                           | file                 | coefficients (r, M, w)         |
|----------|------------|---------------------------------|----------------------|--------------------------------|
| none     | —          | ``PlainResidual``               | stream_connection.py | 1, 1, 1                        |
| hc       | False      | ``HyperConnection``             | hc.py                | A_m, A_r, B (HC Eqs. 1–5, 14)  |
| hc       | True       | ``DynamicHyperConnection``      | hc.py                | + tanh terms (HC Eqs. 10–13)   |
| mhc      | —          | ``ManifoldHyperConnection``     | mhc.py               | H_pre, Sinkhorn H_res, H_post  |
| mhc_lite | —          | ``ManifoldHyperConnectionLite`` | mhc.py               | H_pre, Σ perm. mixture, H_post |

Every class derives from ``ResidualStreams`` (stream_connection.py), which holds what they share: the read and
write of the streams (``read_streams``, ``write_streams``), the starting stream, the coefficient norm, the
recompute option, and the ctx contract hizoo.analysis reads. The options are validated once, by ``HizooConfig``;
the classes trust the config they are given. ``stream_init="perturb"`` perturbs the connections' static weights
through ``stream_init.init_static``.

Every formula is checked against the official modules with the same weights by ``bench/reference_streams.py``
(maximum differences in bench/README.md).
"""

from __future__ import annotations

from .configuration import HizooConfig
from .hc import DynamicHyperConnection, HyperConnection
from .mhc import ManifoldHyperConnection, ManifoldHyperConnectionLite
from .stream_connection import PlainResidual, ResidualStreams, connection_index, read_streams, write_streams
from .stream_init import StreamExpansion, reduce_streams

__all__ = ["residual_streams", "ResidualStreams", "PlainResidual", "HyperConnection", "DynamicHyperConnection",
           "ManifoldHyperConnection", "ManifoldHyperConnectionLite", "StreamExpansion", "reduce_streams",
           "connection_index", "read_streams", "write_streams"]

CONNECTIONS: dict[str, type[ResidualStreams]] = {
    "none": PlainResidual,
    "hc": HyperConnection,  # DynamicHyperConnection with hc_dynamic
    "mhc": ManifoldHyperConnection,
    "mhc_lite": ManifoldHyperConnectionLite,
}


def residual_streams(config: HizooConfig, layer_idx: int, branch: str) -> ResidualStreams:
    """The connection of branch ``branch`` ('attn' | 'ffn') of block ``layer_idx``, of the class that
    ``config.residual`` (and, for HC, ``config.hc_dynamic``) names."""
    cls = CONNECTIONS[config.residual]
    if cls is HyperConnection and config.hc_dynamic:
        cls = DynamicHyperConnection
    return cls(config, layer_idx, branch)
