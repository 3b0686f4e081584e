"""hizoo's residual streams against the official stream-collapse code, with the same weights.

    git -C <mirror or clone of brain-lab-research/hc-stream-collapse> archive HEAD | tar -x -C /tmp/hcsc
    python bench/reference_streams.py --reference /tmp/hcsc

Not run in CI (it needs the official checkout; nothing of it is copied into hizoo). For each connection kind the
script builds the official module (``hyper_conn/hyper_connections.py`` ``HyperConnections``, ``hyper_conn/mhc.py``
``ManifoldConstrainedHyperConnections``, ``hyper_conn/mhc_lite.py`` ``MHCLite`` and ``StreamExpandLSS``) at a
small size, fills every parameter with random values (so that no term hides behind a zero init), copies the
same values into hizoo's ``ResidualStreams`` / ``StreamExpansion``, runs the same streams and the same branch
through both and prints the maximum absolute differences of:

- read:   the branch input h = Σ_i r_i H_i (official: ``width_connection``'s branch input)
- mix:    the mixed streams Σ_i M[i, j] H_i before the branch output is added (its mixed residuals)
- write:  the write weights w (official: ``beta``, H_post for mHC)
- output: the streams after the connection, H'_j = Σ_i M[i, j] H_i + w_j F(h) (``depth_connection``)

plus Sinkhorn on its own, the LSS expansion, and the model's final reduction (the official ``ln_f`` on every
stream, then the sum). Static HC is the official HC with its dynamic projections zeroed. Everything runs in
fp32 on CPU; hizoo computes its coefficients in fp32, the official code in the input's dtype.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from hizoo import HizooConfig
from hizoo.models.hyper_connections import ResidualStreams, residual_streams
from hizoo.models.modeling import RMSNorm
from hizoo.models.sinkhorn import sinkhorn_log
from hizoo.models.stream_init import StreamExpansion, reduce_streams


def to_official(streams: torch.Tensor) -> torch.Tensor:
    """hizoo's [B, S, n, d] -> the official stream-major batch [(B·n), S, d]."""
    B, S, n, d = streams.shape
    return streams.permute(0, 2, 1, 3).reshape(B * n, S, d)


def from_official(x: torch.Tensor, n: int) -> torch.Tensor:
    """[(B·n), S, d] -> [B, S, n, d]."""
    Bn, S, d = x.shape
    return x.reshape(Bn // n, n, S, d).permute(0, 2, 1, 3)


def randomize(module: torch.nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)


def copy_into_hizoo(kind: str, official, ours: ResidualStreams, n: int) -> None:
    """The official parameters in hizoo's layout (the classes' ``reference_decayed`` follow the same mapping)."""
    with torch.no_grad():
        alpha = official.static_alpha
        if kind.startswith("hc"):
            ours.static_read.copy_(alpha[:, 0])  # static_alpha [n, 1 + n] = [A_m | A_r]
            ours.static_mix.copy_(alpha[:, 1:])
            ours.static_write.copy_(official.static_beta)
            if ours.dynamic:
                ours.dynamic_proj.copy_(official.dynamic_alpha_fn.T)  # [d, 1 + n] -> [1 + n, d]
                ours.dynamic_write_proj.copy_(official.dynamic_beta_fn)  # [d]
                ours.dynamic_scale.copy_(torch.stack([official.dynamic_alpha_scale, official.dynamic_beta_scale]))
                ours.norm_gain.copy_(official.norm.gamma)
            return
        ours.alpha.copy_(torch.cat([official.pre_branch_scale, official.h_post_scale.reshape(1),
                                    official.residual_scale]))
        ours.norm_gain.copy_(official.norm.gamma)
        ours.post_bias.copy_(official.static_beta)
        phi_post = official.dynamic_beta_fn.T  # [n, n·d]
        if kind == "mhc":  # columns of dynamic_alpha_fn are (stream s, t) with t = 0 the read, t = 1 + j the mix
            phi = official.dynamic_alpha_fn.T.reshape(n, 1 + n, -1)  # [n(s), 1 + n(t), n·d]
            ours.pre_bias.copy_(alpha[:, 0])
            ours.res_bias.copy_(alpha[:, 1:])
            ours.proj.copy_(torch.cat([phi[:, 0], phi_post, phi[:, 1:].reshape(n * n, -1)]))
        else:  # mhc_lite: static_alpha [n + n!] and dynamic_alpha_fn columns [pre (n) | permutations (n!)]
            ours.pre_bias.copy_(alpha[:n])
            ours.res_bias.copy_(alpha[n:])
            phi = official.dynamic_alpha_fn.T
            ours.proj.copy_(torch.cat([phi[:n], phi_post, phi[n:]]))


def compare_connection(kind: str, ref, n: int, d: int, seed: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(seed)
    module = {"hc": ref.hc.HyperConnections, "hc_static": ref.hc.HyperConnections,
              "mhc": ref.mhc.ManifoldConstrainedHyperConnections, "mhc_lite": ref.lite.MHCLite}[kind]
    official = module(n, dim=d, layer_index=1)
    randomize(official, g)
    if kind == "hc_static":  # the official HC is always dynamic: zero its token-dependent terms
        with torch.no_grad():
            official.dynamic_alpha_fn.zero_()
            official.dynamic_beta_fn.zero_()
    residual = "hc" if kind.startswith("hc") else kind
    config = HizooConfig(vocab_size=8, hidden_size=d, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8,
                         residual=residual, n_streams=n, hc_dynamic=kind == "hc", stream_start="cyclic")
    ours = residual_streams(config, 0, "attn")
    copy_into_hizoo(kind, official, ours, n)

    streams = torch.randn(2, 5, n, d, generator=g)  # [B, S, n, d]
    branch = torch.nn.Linear(d, d)
    randomize(branch, g)
    with torch.no_grad():
        ref_in, ref_mixed, kwargs = official.width_connection(to_official(streams))
        ref_out = official.depth_connection(torch.tanh(branch(ref_in)), ref_mixed, **kwargs)
        h, ctx = ours.read(streams)
        mixed = ours.write(streams, torch.zeros_like(h), ctx)
        out = ours.write(streams, torch.tanh(branch(h)), ctx)
    beta = kwargs["beta"].reshape(*streams.shape[:2], n)  # [B, S, n]
    return {"read": (h - ref_in).abs().max().item(),
            "mix": (mixed - from_official(ref_mixed, n)).abs().max().item(),
            "write": (ctx["write"] - beta).abs().max().item(),
            "output": (out - from_official(ref_out, n)).abs().max().item()}


def compare_sinkhorn(ref, seed: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for std in (0.5, 3.0, 10.0):
        logits = torch.randn(4096, 4, 4, generator=g) * std
        out[f"std {std:g}"] = (sinkhorn_log(logits, 20) - ref.mhc.sinkhorn_knopps(logits, 20)).abs().max().item()
    init = torch.full((4, 4), -8.0).fill_diagonal_(0.0) + 0.01 * torch.randn(4096, 4, 4, generator=g)
    out["init ± 0.01"] = (sinkhorn_log(init, 20) - ref.mhc.sinkhorn_knopps(init, 20)).abs().max().item()
    return out


def compare_lss(ref, n: int, d: int, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    official = ref.lite.StreamExpandLSS(n, d, lss_init=0.6)
    config = HizooConfig(vocab_size=8, hidden_size=d, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8,
                         residual="mhc_lite", n_streams=n, stream_init="lss")
    ours = StreamExpansion(config)
    with torch.no_grad():
        ours.stream_scale.copy_(official.lss)
        x = torch.randn(2, 5, d, generator=g)
        return (ours(x) - from_official(official(x), n)).abs().max().item()


def compare_reduction(ref, n: int, d: int, seed: int) -> dict[str, float]:
    """The official model: x = ln_f(x) on the stream-major batch, then its reduce_stream (sum over streams).
    The same norm module (hizoo's RMSNorm with a random gain) on both sides: what is compared is the order."""
    g = torch.Generator().manual_seed(seed)
    _, official_reduce = ref.lite.get_expand_reduce_stream_functions(n)
    norm = RMSNorm(d)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(d, generator=g))
        streams = torch.randn(2, 5, n, d, generator=g) * torch.rand(n, 1, generator=g) * 3  # unequal norms
        official = official_reduce(norm(to_official(streams)))
        return {"norm_sum (default)": (reduce_streams(streams, norm, "norm_sum") - official).abs().max().item(),
                "sum_norm (option)": (reduce_streams(streams, norm, "sum_norm") - official).abs().max().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, type=Path,
                        help="a checkout of brain-lab-research/hc-stream-collapse (the folder holding hyper_conn/)")
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--d", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (args.reference / "hyper_conn" / "mhc.py").is_file():
        raise SystemExit(f"--reference {args.reference} has no hyper_conn/mhc.py: not an hc-stream-collapse checkout")
    sys.path.insert(0, str(args.reference.resolve()))
    import hyper_conn.hyper_connections as hc
    import hyper_conn.mhc as mhc
    import hyper_conn.mhc_lite as lite

    ref = argparse.Namespace(hc=hc, mhc=mhc, lite=lite)
    torch.manual_seed(args.seed)
    n, d = args.n, args.d
    print(f"official hc-stream-collapse at {args.reference} vs hizoo; n={n}, d={d}, B=2, S=5, fp32, max |difference|")
    print("\n| connection | read (branch input) | mix (mixed streams) | write weights | output streams |")
    print("|---|---|---|---|---|")
    for kind, label in (("hc_static", "HC static"), ("hc", "HC dynamic"), ("mhc", "mHC"), ("mhc_lite", "mHC-lite")):
        if kind == "mhc_lite" and math.factorial(n) > 720:
            continue
        r = compare_connection(kind, ref, n, d, args.seed)
        print(f"| {label} | {r['read']:.1e} | {r['mix']:.1e} | {r['write']:.1e} | {r['output']:.1e} |")
    print("\n| Sinkhorn (20 iterations, logits ~ N(0, std²) or the identity init) | max |difference| |")
    print("|---|---|")
    for name, value in compare_sinkhorn(ref, args.seed).items():
        print(f"| {name} | {value:.1e} |")
    print(f"\nLSS expansion x ⊙ λ_s: {compare_lss(ref, n, d, args.seed):.1e}")
    print("\n| final reduction against ln_f-then-sum | max |difference| |")
    print("|---|---|")
    for name, value in compare_reduction(ref, n, d, args.seed).items():
        print(f"| {name} | {value:.1e} |")


if __name__ == "__main__":
    main()
