"""Residual streams around each branch (attention or FFN) of a block: plain residual, HC and mHC.

Interface used by the model (models/modeling.py):
    streams = StreamExpansion(config)(x)     # [B, S, d] -> [B, S, n, d]   (models/stream_init.py)
    h, ctx = conn.read(streams)              # branch input [B, S, d] and what write() needs
    streams = conn.write(streams, out, ctx)  # add the branch output back into the streams
    x = reduce_streams(streams, norm, how)   # [B, S, n, d] -> [B, S, d]  (Σ_s norm(H_s) by default)

Every connection is one linear map of the n streams H = (H_1 … H_n), H_i ∈ R^d, per token:
    read:   h    = Σ_i r_i H_i                                  (branch input; F includes the pre-norm)
    write:  H'_j = Σ_i M[i, j] H_i + w_j F(h)
and the kinds differ only in where (r, M, w) come from:

- ``none``: one stream, r = M = w = 1: the plain pre-norm residual x + F(norm(x)).
- ``hc`` (Zhu et al. 2024, arXiv 2409.19606): the matrix [[0, B], [A_m, A_r]] (Eq. 1), r = A_m,
  M = A_r, w = B (Eqs. 2–5). Static: learned constants initialized as Eq. 14's Pre-Norm equivalent,
  A_m = e_k, A_r = I, B = 1. Dynamic (``hc_dynamic``, Eqs. 10–13): with H̄ = norm(H) per stream,
  A_m += s_α ⊙ tanh(H̄ W_m), A_r += s_α ⊙ tanh(H̄ W_r), B += s_β ⊙ tanh(H̄ W_β)ᵀ; W = 0, s = 0.01
  at init.
- ``mhc`` (DeepSeek, arXiv 2512.24880): x_{l+1} = H_res x_l + H_postᵀ F(H_pre x_l) (Eq. 3). The streams
  are flattened to x⃗ ∈ R^{nC} and RMS-normalized over all nC values, H̃ = α·(x⃗' φ) + b for pre (n),
  post (n) and res (n²) (Eq. 7); r = H_pre = σ(H̃_pre), w = H_post = 2σ(H̃_post),
  M = H_res = Sinkhorn–Knopp(exp(H̃_res)) (Eq. 8), 20 iterations in fp32, the input axis normalized first
  and the output axis last as in the official code (see sinkhorn.py).
- ``mhc_lite``: as ``mhc`` but M = Σ_r softmax(c)_r P_r over all n! permutation matrices, c = H̃_res ∈ R^{n!}.

The norm inside the coefficients (H̄ for HC, x⃗' for mHC) is the official stream-collapse code's
(``hyper_conn/*.py`` ``RMSNorm``): norm(v) = v·√D / max(‖v‖, 1e-12) ⊙ (1 + γ), with a learnable gain γ
(``norm_gain``, [d] for HC, [n·d] for mHC, init 0) and no eps inside the root. The gain multiplies the
columns of the projection (x ⊙ (1 + γ)) W = x (diag(1 + γ) W), so it costs no activation memory.

Every formula above is checked against the official modules with the same weights by
``bench/reference_streams.py`` (maximum differences in bench/README.md).

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

ctx contract (read by hizoo.analysis; ``none`` returns {}):
    ctx["read"]  r: A_m or H_pre     [B, S, n] (dynamic) or [n] (static)
    ctx["write"] w: B or H_post      [B, S, n] or [n]
    ctx["mix"]   M: A_r or H_res     [B, S, n, n] or [n, n]; M[i, j] = weight of input stream i in output
                 stream j (the transpose of mHC's H_res[out, in]; the official code's layout). mHC: the sums
                 over j (``mix.sum(-1)``) are exact, over i within the Sinkhorn residual; mHC-lite: both exact
    ctx["mix_logits"] (mhc, mhc_lite) the logits before Sinkhorn [B, S, n, n] / before the softmax over
                 permutations [B, S, n!]
Static weights are the parameters themselves; dynamic ones are per token and fp32.

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
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers import initialization as init

from .configuration import HizooConfig
from .sinkhorn import permutation_mixture, sinkhorn_log
from .stream_init import StreamExpansion, reduce_streams

__all__ = ["ResidualStreams", "StreamExpansion", "reduce_streams", "connection_index"]

HC_DYNAMIC_SCALE_INIT = 0.01  # s_α = s_β (HC Eq. 10–13 and the hyper-connections package)
MHC_READ_LOGIT = 1.0  # b_pre, b_post: +1 at the connection's stream, −1 elsewhere
MHC_OFF_DIAGONAL_LOGIT = -8.0  # b_res: 0 on the diagonal, −8 off it -> H_res ≈ I (0.999 on the diagonal)
PERTURB_STD = 0.1  # stream_init="perturb": N(0, 0.1²) added to every static read/mix/write weight (or logit)
NORM_EPS = 1e-12  # the coefficient norm is F.normalize's v / max(‖v‖, 1e-12), as in the official code

# Parameters whose counterpart in the official stream-collapse code is >= 2-D, so that its nanoGPT weight-decay
# rule decays them (``weight_decay_rule="reference"``, models/weight_decay.py). HC: static_alpha [n, 1 + n] =
# [A_m | A_r] and dynamic_alpha_fn [d, 1 + n] = [W_m | W_r]; not static_beta [n], dynamic_beta_fn [d], the
# scales (0-D) or the norm's γ. mHC: static_alpha [n, 1 + n] = [b_pre | b_res] and dynamic_alpha_fn /
# dynamic_beta_fn [n·d, ·]; not static_beta [n] = b_post, the three α (one-element) or γ. mHC-lite: its
# static_alpha [n + n!] = [b_pre | b_res] is 1-D, so only the projections.
REFERENCE_DECAYED = {
    "hc": ("static_read", "static_mix", "dynamic_proj"),
    "mhc": ("pre_bias", "res_bias", "proj"),
    "mhc_lite": ("proj",),
}


def connection_index(layer_idx: int, branch: str) -> int:
    """2·layer_idx + (0 attention | 1 FFN): every branch counts as one layer."""
    if branch not in ("attn", "ffn"):
        raise ValueError(f"branch={branch!r} is not allowed; choose 'attn' or 'ffn'")
    return 2 * layer_idx + (branch == "ffn")


def start_stream(config: HizooConfig, index: int) -> int:
    """The stream connection ``index`` reads at initialization (see the module docstring)."""
    n = config.n_streams
    if config.stream_start == "cyclic":
        return index % n
    if config.stream_start == "random":  # str seeds are hashed with SHA-512: the same draw on every platform
        return random.Random(f"hizoo stream start {config.stream_start_seed} {index}").randrange(n)
    raise ValueError(f"stream_start={config.stream_start!r} is not allowed; choose one of 'random', 'cyclic'")


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


def _inv_rms(x: Tensor) -> Tensor:
    """√D / max(‖x‖, 1e-12) over the last dim, [..., D] -> [..., 1]: the official code's
    F.normalize(x)·√D as one factor (one reduction kernel)."""
    return math.sqrt(x.shape[-1]) / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(NORM_EPS)


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


class ResidualStreams(nn.Module):
    """The connection of one branch (see the module docstring for the maths and the ctx contract).

    Parameters (raw ``nn.Parameter``, initialized in ``reset_parameters``):
    - hc: ``static_read`` A_m [n], ``static_mix`` A_r [n, n], ``static_write`` B [n]; dynamic adds
      ``dynamic_proj`` [W_m | W_r]ᵀ [n + 1, d], ``dynamic_write_proj`` W_β [d], ``dynamic_scale`` [s_α, s_β]
      [2] and ``norm_gain`` γ [d].
    - mhc / mhc_lite: biases ``pre_bias`` [n], ``post_bias`` [n], ``res_bias`` [n, n] (mhc) or [n!]
      (mhc_lite); ``proj`` [φ_pre | φ_post | φ_res]ᵀ [2n + n² or 2n + n!, n·d]; ``alpha`` [α_pre, α_post, α_res];
      ``norm_gain`` γ [n·d].
    Projections are stored [out, in] like ``nn.Linear.weight`` (the papers write W ∈ R^{d×·}): on CPU the
    x·Wᵀ GEMM with a handful of outputs is ~3x faster than x·W. W_β is its own 1-D parameter, as in the
    official code, so that weight decay can treat it as that code does (``REFERENCE_DECAYED``).
    """

    def __init__(self, config: HizooConfig, layer_idx: int, branch: str):
        super().__init__()
        self.kind = config.residual
        self.layer_idx = layer_idx
        self.branch = branch  # 'attn' | 'ffn'
        self.index = connection_index(layer_idx, branch)
        self.n_streams = n = config.n_streams
        self.stream = start_stream(config, self.index)  # the stream this connection reads at initialization
        self.recompute = config.hc_recompute
        self.perturb = config.stream_init == "perturb"
        d = config.hidden_size
        if self.kind == "none":
            if n != 1:
                raise ValueError(f"residual='none' has one stream; got n_streams={n}")
            return
        if self.kind == "hc":
            self.dynamic = config.hc_dynamic
            self.static_read = nn.Parameter(torch.empty(n))  # A_m
            self.static_mix = nn.Parameter(torch.empty(n, n))  # A_r[i, j]: input i -> output j
            self.static_write = nn.Parameter(torch.empty(n))  # B
            if self.dynamic:
                self.dynamic_proj = nn.Parameter(torch.empty(n + 1, d))  # [W_m | W_r]ᵀ
                self.dynamic_write_proj = nn.Parameter(torch.empty(d))  # W_β
                self.dynamic_scale = nn.Parameter(torch.empty(2))  # [s_α, s_β]
                self.norm_gain = nn.Parameter(torch.empty(d))  # γ of norm(H_i), shared by the streams
        elif self.kind in ("mhc", "mhc_lite"):
            self.dynamic = True
            self.sinkhorn_iters = config.mhc_sinkhorn_iters
            self.alpha_init = config.mhc_alpha_init
            n_res = n * n if self.kind == "mhc" else math.factorial(n)
            self.pre_bias = nn.Parameter(torch.empty(n))
            self.post_bias = nn.Parameter(torch.empty(n))
            self.res_bias = nn.Parameter(torch.empty(n, n) if self.kind == "mhc" else torch.empty(n_res))
            self.proj = nn.Parameter(torch.empty(2 * n + n_res, n * d))  # [φ_pre | φ_post | φ_res]ᵀ
            self.alpha = nn.Parameter(torch.empty(3))  # [α_pre, α_post, α_res]
            self.norm_gain = nn.Parameter(torch.empty(n * d))  # γ of the norm over all n·d values
        else:
            raise ValueError(f"residual={self.kind!r} is not allowed; choose one of 'none', 'hc', 'mhc', 'mhc_lite'")
        self.reset_parameters()

    # ------------------------------------------------------------------ initialization
    def reset_parameters(self) -> None:
        """HC: A_m = e_k, A_r = I, B = 1, W = 0, s = 0.01 (Eq. 14 and §3.2). mHC: b_pre = b_post = +1 at stream
        k and −1 elsewhere, b_res = 0 on the diagonal and −8 off it (mhc_lite: 0 for the identity, −8 for the
        other permutations), φ = 0, α = ``mhc_alpha_init``. γ = 0. All as in the official code. ``perturb``
        adds N(0, 0.1²) to the static weights or logits. transformers.initialization functions skip values
        loaded by from_pretrained."""
        if self.kind == "none":
            return
        n, k = self.n_streams, self.stream
        one_hot = torch.zeros(n)
        one_hot[k] = 1.0
        if self.kind == "hc":
            static = {self.static_read: one_hot, self.static_mix: torch.eye(n), self.static_write: torch.ones(n)}
            if self.dynamic:
                init.zeros_(self.dynamic_proj)
                init.zeros_(self.dynamic_write_proj)
                init.constant_(self.dynamic_scale, HC_DYNAMIC_SCALE_INIT)
                init.zeros_(self.norm_gain)
        else:
            gate = MHC_READ_LOGIT * (2 * one_hot - 1)  # +1 at stream k, −1 elsewhere
            if self.kind == "mhc":
                res = torch.full((n, n), MHC_OFF_DIAGONAL_LOGIT).fill_diagonal_(0.0)
            else:
                res = torch.full((math.factorial(n),), MHC_OFF_DIAGONAL_LOGIT)
                res[0] = 0.0  # permutation 0 is the identity
            static = {self.pre_bias: gate, self.post_bias: gate.clone(), self.res_bias: res}
            init.zeros_(self.proj)
            init.constant_(self.alpha, self.alpha_init)
            init.zeros_(self.norm_gain)
        for param, value in static.items():
            if self.perturb:
                value = value + PERTURB_STD * torch.randn(value.shape)
            init.copy_(param, value)

    # ------------------------------------------------------------------ coefficients
    def _coefficients(self, streams: Tensor) -> dict[str, Tensor]:
        """streams [B, S, n, d] -> read [.., n], mix [.., n, n], write [.., n] (+ mix_logits for mHC)."""
        if self.kind == "hc":
            if not self.dynamic:
                return {"read": self.static_read, "write": self.static_write, "mix": self.static_mix}
            n = self.n_streams
            x = streams.float()
            # tanh(norm(H) W) = tanh((H diag(1 + γ) W) / rms(H)): one [n, d] @ [d, n + 2] product per token
            # (HC Eq. 10–13)
            proj = torch.cat([self.dynamic_proj, self.dynamic_write_proj[None]]).float()  # [n + 2, d]
            gain = 1.0 + self.norm_gain.float()  # [d]
            z = torch.tanh(F.linear(x, proj * gain) * _inv_rms(x))  # [B, S, n, n + 2]
            s_alpha, s_beta = self.dynamic_scale.float().unbind()
            return {
                "read": self.static_read.float() + s_alpha * z[..., 0],  # A_m(H) [B, S, n]
                "write": self.static_write.float() + s_beta * z[..., n + 1],  # B(H) [B, S, n]
                "mix": self.static_mix.float() + s_alpha * z[..., 1:n + 1],  # A_r(H) [B, S, n, n]
            }
        # mHC Eq. 7: RMSNorm over all nC values, x⃗' φ = (x⃗ diag(1 + γ) φ) / rms(x⃗)
        n = self.n_streams
        x = streams.flatten(-2).float()  # [B, S, n·d]
        gain = 1.0 + self.norm_gain.float()  # [n·d]
        z = F.linear(x, self.proj.float() * gain) * _inv_rms(x)  # [B, S, 2n + n_res]
        a_pre, a_post, a_res = self.alpha.float().unbind()
        pre = torch.sigmoid(a_pre * z[..., :n] + self.pre_bias.float())  # H_pre [B, S, n]    (Eq. 8)
        post = 2.0 * torch.sigmoid(a_post * z[..., n:2 * n] + self.post_bias.float())  # H_post [B, S, n]
        if self.kind == "mhc":
            logits = a_res * z[..., 2 * n:].unflatten(-1, (n, n)) + self.res_bias.float()  # [B, S, n, n]
            mix = sinkhorn_log(logits, self.sinkhorn_iters)
        else:
            logits = a_res * z[..., 2 * n:] + self.res_bias.float()  # [B, S, n!]
            mix = permutation_mixture(logits)
        return {"read": pre, "write": post, "mix": mix, "mix_logits": logits}

    def _read(self, streams: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        ctx = self._coefficients(streams)
        return read_streams(streams, ctx["read"]), ctx

    # ------------------------------------------------------------------ interface
    def read(self, streams: Tensor) -> tuple[Tensor, dict]:
        """streams [B, S, n, d] -> (branch input h [B, S, d], ctx)."""
        if self.kind == "none":
            return streams[..., 0, :], {}
        if self.recompute and torch.is_grad_enabled():
            return checkpoint(self._read, streams, use_reentrant=False)
        return self._read(streams)

    def write(self, streams: Tensor, branch_out: Tensor, ctx: dict) -> Tensor:
        """streams [B, S, n, d], branch output [B, S, d] -> streams [B, S, n, d]."""
        if self.kind == "none":
            return streams + branch_out.unsqueeze(-2)
        if self.recompute and torch.is_grad_enabled():
            return checkpoint(write_streams, streams, branch_out, ctx["mix"], ctx["write"], use_reentrant=False)
        return write_streams(streams, branch_out, ctx["mix"], ctx["write"])
