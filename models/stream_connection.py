"""What every residual-stream connection shares: the interface, the read and write of the streams, the starting
stream, the coefficient norm; and the plain residual, the connection of one stream.

Every connection is one linear map of the n streams H = (H_1 … H_n), H_i ∈ R^d, per token:
    read:   h    = Σ_i r_i H_i                                  (branch input; F includes the pre-norm)
    write:  H'_j = Σ_i M[i, j] H_i + w_j F(h)
and the kinds differ only in where the coefficients (r, M, w) come from (``coefficients``): ``PlainResidual``
(here, r = M = w = 1), ``HyperConnection`` and ``DynamicHyperConnection`` (hc.py), ``ManifoldHyperConnection`` and
``ManifoldHyperConnectionLite`` (mhc.py). models/hyper_connections.py builds the one ``config.residual`` names.

ctx contract (read by hizoo.analysis; the plain residual returns {}):
    ctx["read"]  r: A_m or H_pre     [B, S, n] (dynamic) or [n] (static)
    ctx["write"] w: B or H_post      [B, S, n] or [n]
    ctx["mix"]   M: A_r or H_res     [B, S, n, n] or [n, n]; M[i, j] = weight of input stream i in output
                 stream j (the transpose of mHC's H_res[out, in]; the official code's layout). mHC: the sums
                 over j (``mix.sum(-1)``) are exact, over i within the Sinkhorn residual; mHC-lite: both exact
    ctx["mix_logits"] (mhc, mhc_lite) the logits before Sinkhorn [B, S, n, n] / before the softmax over
                 permutations [B, S, n!]
Static weights are the parameters themselves; dynamic ones are per token and fp32.

The starting stream k of a connection: the stream it reads (HC's e_k; for mHC, the +1 logit of H_pre and
H_post) at initialization. ``stream_start="random"`` (default) draws it as the official stream-collapse
code does: its model builds every connection without a ``layer_index``, so each one takes
``random.randrange(n)`` (uniform on {0, …, n−1}) from Python's global, unseeded ``random`` generator, once,
when the block is built. hizoo draws it the same way (uniform, ``random.Random.randrange``) but from a
private generator seeded by ``stream_start_seed`` and the connection index, so a model's starting streams
are reproducible, independent of every global RNG and of the order modules are built in.
``stream_start="cyclic"``: k = (2·layer_idx + branch) mod n, with branch 0 for attention and 1 for FFN,
the ``layer_index`` convention of the ``hyper-connections`` package as used by x-transformers (one index
per wrapped branch): a block's attention and FFN read different streams and the streams are taken in turn.

The coefficient norm (H̄ for HC, x⃗' for mHC) is the official stream-collapse code's (``hyper_conn/*.py``
``RMSNorm``): norm(v) = v·√D / max(‖v‖, 1e-12) ⊙ (1 + γ), with a learnable gain γ (``norm_gain``, init 0) and
no eps inside the root. The gain multiplies the columns of the projection (x ⊙ (1 + γ)) W = x (diag(1 + γ) W),
so it costs no activation memory; ``inv_rms`` is the rest.

Memory: with ``hc_recompute`` the coefficient and mixing math of each connection runs under
``torch.utils.checkpoint``, so its intermediates (normalized streams, tanh/sigmoid outputs, the 2×iters
Sinkhorn steps) are recomputed in backward instead of stored; each connection keeps only its inputs: the
streams (n·d per token, which the read and the write share) and the branch output (d). Keeping streams only
every few layers and replaying the mixing across connections (mHC §4.3) is not done here.
"""

from __future__ import annotations

import math
import random

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .configuration import HizooConfig

NORM_EPS = 1e-12  # the coefficient norm is F.normalize's v / max(‖v‖, 1e-12), as in the official code


def connection_index(layer_idx: int, branch: str) -> int:
    """2·layer_idx + (0 attention | 1 FFN): every branch counts as one layer."""
    if branch not in ("attn", "ffn"):
        raise ValueError(f"branch={branch!r} is not allowed; choose 'attn' or 'ffn'")
    return 2 * layer_idx + (branch == "ffn")


def start_stream(config: HizooConfig, index: int) -> int:
    """The stream connection ``index`` reads at initialization (see the module docstring)."""
    if config.stream_start == "cyclic":
        return index % config.n_streams
    # "random": str seeds are hashed with SHA-512, so every platform draws the same stream
    return random.Random(f"hizoo stream start {config.stream_start_seed} {index}").randrange(config.n_streams)


def inv_rms(x: Tensor) -> Tensor:
    """√D / max(‖x‖, 1e-12) over the last dim, [..., D] -> [..., 1]: the official code's
    F.normalize(x)·√D as one factor (one reduction kernel)."""
    return math.sqrt(x.shape[-1]) / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(NORM_EPS)


# ---------------------------------------------------------------------------------------------- read and write


def read_streams(streams: Tensor, read: Tensor) -> Tensor:
    """h = Σ_i r_i H_i: streams [..., n, d], read [n] or [..., n] -> [..., d]."""
    return _ReadStreams.apply(streams, read.to(streams.dtype))


def write_streams(streams: Tensor, branch_out: Tensor, mix: Tensor, write: Tensor) -> Tensor:
    """H'_j = Σ_i M[i, j] H_i + w_j F: streams [..., n, d], branch_out [..., d], mix [n, n] or [..., n, n],
    write [n] or [..., n] -> [..., n, d]."""
    return _WriteStreams.apply(streams, branch_out, mix.to(streams.dtype), write.to(streams.dtype))


# The stream mixing is a per-token [n, n] @ [n, d] product with n ≈ 4. Batched GEMMs of that size run as
# thousands of tiny matmuls, einsum with shared weights copies the streams into a transposed layout, and
# autograd through a loop of slices allocates a zero-filled [.., n, d] gradient per slice. So forward and
# backward are written out as n fused multiply-adds over contiguous [.., d] rows, saving only the inputs.


def _sum_to(grad: Tensor, like: Tensor) -> Tensor:
    """Reduce a per-token gradient [..., *s] to the shape of a shared (static) weight [*s]."""
    return grad.sum_to_size(like.shape) if grad.shape != like.shape else grad


class _ReadStreams(torch.autograd.Function):
    @staticmethod
    def forward(ctx, streams: Tensor, read: Tensor) -> Tensor:
        r = read.unsqueeze(-1)  # [..., n, 1]
        h = r[..., 0, :] * streams[..., 0, :]  # [..., d]
        for i in range(1, streams.shape[-2]):
            h.addcmul_(r[..., i, :], streams[..., i, :])
        ctx.save_for_backward(streams, read)
        return h

    @staticmethod
    def backward(ctx, grad: Tensor):
        streams, read = ctx.saved_tensors
        g = grad.unsqueeze(-2)  # [..., 1, d]
        d_streams = read.unsqueeze(-1) * g if ctx.needs_input_grad[0] else None  # ∂h/∂H_i = r_i
        d_read = _sum_to((streams * g).sum(-1), read) if ctx.needs_input_grad[1] else None  # <H_i, g>
        return d_streams, d_read


class _WriteStreams(torch.autograd.Function):
    @staticmethod
    def forward(ctx, streams: Tensor, branch_out: Tensor, mix: Tensor, write: Tensor) -> Tensor:
        m = mix.unsqueeze(-1)  # [..., n(i), n(j), 1]
        out = write.unsqueeze(-1) * branch_out.unsqueeze(-2)  # w_j F  [..., n, d]
        for i in range(streams.shape[-2]):
            out.addcmul_(m[..., i, :, :], streams[..., i, None, :])  # += M[i, j] H_i
        ctx.save_for_backward(streams, branch_out, mix, write)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        streams, branch_out, mix, write = ctx.saved_tensors
        n = streams.shape[-2]
        grad = grad.contiguous()
        d_streams = d_out = d_mix = d_write = None
        if ctx.needs_input_grad[0]:  # dH_i = Σ_j M[i, j] g_j
            m = mix.unsqueeze(-1)  # [..., n(i), n(j), 1]
            d_streams = m[..., :, 0, :] * grad[..., 0, None, :]
            for j in range(1, n):
                d_streams.addcmul_(m[..., :, j, :], grad[..., j, None, :])
        if ctx.needs_input_grad[1]:  # dF = Σ_j w_j g_j
            w = write.unsqueeze(-1)  # [..., n, 1]
            d_out = w[..., 0, :] * grad[..., 0, :]
            for j in range(1, n):
                d_out.addcmul_(w[..., j, :], grad[..., j, :])
        if ctx.needs_input_grad[2]:  # dM[i, j] = <H_i, g_j>
            d_mix = torch.stack([(streams[..., i, None, :] * grad).sum(-1) for i in range(n)], dim=-2)
            d_mix = _sum_to(d_mix, mix)
        if ctx.needs_input_grad[3]:  # dw_j = <F, g_j>
            d_write = _sum_to((grad * branch_out.unsqueeze(-2)).sum(-1), write)
        return d_streams, d_out, d_mix, d_write


# ---------------------------------------------------------------------------------------------- connections


class ResidualStreams(nn.Module):
    """The connection of one branch (attention or FFN) of one block to the streams: the base of every residual kind.

    ``read(streams)`` computes the kind's ``coefficients`` and the branch input; ``write`` mixes the streams and
    adds the branch output back (under ``torch.utils.checkpoint`` with ``hc_recompute``). A kind defines
    ``coefficients`` (and its parameters, initialized in ``reset_parameters``), ``kind`` (its ``residual`` value)
    and ``reference_decayed``: the parameters whose counterpart in the official stream-collapse code is >= 2-D, so
    that its nanoGPT weight-decay rule decays them (``weight_decay_rule="reference"``, models/weight_decay.py).
    Projections are stored [out, in] like ``nn.Linear.weight`` (the papers write W ∈ R^{d×·}): on CPU the x·Wᵀ
    GEMM with a handful of outputs is ~3x faster than x·W.

    Build one with ``hyper_connections.residual_streams(config, layer_idx, branch)``.
    """

    kind: str
    reference_decayed: tuple[str, ...] = ()

    def __init__(self, config: HizooConfig, layer_idx: int, branch: str):
        if type(self) is ResidualStreams:
            raise TypeError("ResidualStreams is the base of the connection classes; build the connection of "
                            "config.residual with hyper_connections.residual_streams(config, layer_idx, branch)")
        super().__init__()
        self.layer_idx = layer_idx
        self.branch = branch  # 'attn' | 'ffn'
        self.index = connection_index(layer_idx, branch)
        self.n_streams = config.n_streams
        self.stream = start_stream(config, self.index)  # the stream this connection reads at initialization
        self.stream_init = config.stream_init  # "perturb" perturbs the static weights (stream_init.init_static)
        self.recompute = config.hc_recompute

    def coefficients(self, streams: Tensor) -> dict[str, Tensor]:
        """streams [B, S, n, d] -> ctx: read [.., n], mix [.., n, n], write [.., n] (see the ctx contract)."""
        raise NotImplementedError

    def _read(self, streams: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        ctx = self.coefficients(streams)
        return read_streams(streams, ctx["read"]), ctx

    def read(self, streams: Tensor) -> tuple[Tensor, dict]:
        """streams [B, S, n, d] -> (branch input h [B, S, d], ctx)."""
        if self.recompute and torch.is_grad_enabled():
            return checkpoint(self._read, streams, use_reentrant=False)
        return self._read(streams)

    def write(self, streams: Tensor, branch_out: Tensor, ctx: dict) -> Tensor:
        """streams [B, S, n, d], branch output [B, S, d] -> streams [B, S, n, d]."""
        if self.recompute and torch.is_grad_enabled():
            return checkpoint(write_streams, streams, branch_out, ctx["mix"], ctx["write"], use_reentrant=False)
        return write_streams(streams, branch_out, ctx["mix"], ctx["write"])


class PlainResidual(ResidualStreams):
    """``residual="none"``: one stream, r = M = w = 1, the plain pre-norm residual x + F(norm(x)). No parameters."""

    kind = "none"

    def read(self, streams: Tensor) -> tuple[Tensor, dict]:
        return streams[..., 0, :], {}

    def write(self, streams: Tensor, branch_out: Tensor, ctx: dict) -> Tensor:
        return streams + branch_out.unsqueeze(-2)
