"""Hi-MoE routing against the official code: the reference's ``MoGERouter`` and ``TutelGroupedGate`` (the gate its
example config trains with, ``ep_backend='tutel'``) and hizoo's ``HiMoERouter``, same weights, same inputs.
Not run in CI (it needs the reference checkout); the reference code is imported from ``--reference``, never copied.

Get the reference (brain-lab-research/Hi-MoE) and run:

    git clone https://github.com/brain-lab-research/Hi-MoE /tmp/Hi-MoE
    # or, from a bare mirror:  mkdir /tmp/Hi-MoE && git -C MIRROR archive HEAD | tar -x -C /tmp/Hi-MoE
    python bench/reference_himoe.py --reference /tmp/Hi-MoE

The reference's ``utils/__init__.py`` imports its plotting tracker (seaborn); the script loads ``model.py`` with
``utils`` as a bare namespace so only ``utils/expert_parallel.py`` (pure torch; Tutel optional) is read.

Settings are the example config's (``config/examples/train_nano_moe_himoe.py``: E=32, G=4, k_g=2, τ 0.01, β 0.9,
T 1, λ1 0.1, λ2 0.05, LB 0.01, z 0.001, capacity 2.0/2.0, Switch init 0.1, router scale) at a small width, plus a
``stress`` setting that makes each mechanism visible in a few steps (τ 1, β 0.5, T 1.5, capacity factor 0.45 in
training and 0.7 in eval, which give odd raw capacities, scales ≠ 1) and the reference's other regularizer modes.
Each case runs ``--steps`` training forwards (EMA updates, warm-up step counter) and one eval forward on drifting
batches, then compares router logits, the EMA buffer, selected experts, capacity, dropped pairs, combine weights,
LB, z, intra, inter and the gradients of the router weight and scale. It also compares ``TopKRouter(norm_topk_prob=True)`` with the reference's ``TutelVanillaGate``
and prints the reference's non-EP ``Router`` load-balancing value, which uses a different normalization.
Exits with status 1 when a difference exceeds ``--atol`` (or any index differs).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import torch
import yaml

from hizoo import HizooConfig
from hizoo.routing import build_router, expert_capacity

EXAMPLE = dict(n_exp=32, top_k=2, n_groups=4, aux_loss_weight=0.01, router_z_loss_weight=0.001, train_capacity=2.0,
               eval_capacity=2.0, min_capacity=4, switch_tfm_init_scale=0.1, himoe_tau=0.01, himoe_beta=0.9,
               himoe_temperature=1.0, himoe_lambda1=0.1, himoe_lambda2=0.05)
STRESS = dict(EXAMPLE, himoe_tau=1.0, himoe_beta=0.5, himoe_temperature=1.5, train_capacity=0.45, eval_capacity=0.7)
# (case name, reference settings, reference mode overrides, hizoo overrides of the same meaning)
CASES = [
    ("example config", EXAMPLE, {}, {}),
    ("stress", STRESS, {}, {}),
    ("stress, intra_source=selection", STRESS, dict(himoe_intra_source="selection"), dict(himoe_reg_source="selection")),
    ("stress, inter_mode=sparse_group_mass", STRESS, dict(himoe_inter_mode="sparse_group_mass"),
     dict(himoe_group_mass="sparse")),
    ("stress, entropy_mode=shannon", STRESS, dict(himoe_entropy_mode="shannon"), dict(himoe_reg_form="entropy")),
    ("stress, warmup_iters=10", STRESS, dict(himoe_warmup_iters=10), dict(himoe_intra_warmup_steps=10)),
]


def load_reference(path: Path) -> types.ModuleType:
    if not (path / "model.py").is_file():
        raise SystemExit(f"--reference {path} has no model.py: pass a checkout of brain-lab-research/Hi-MoE")
    utils = types.ModuleType("utils")  # a bare package: skip utils/__init__.py (plotting imports)
    utils.__path__ = [str(path / "utils")]
    sys.modules["utils"] = utils
    spec = importlib.util.spec_from_file_location("himoe_reference_model", path / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_config(ref, settings: dict, modes: dict, hidden: int):
    return ref.GPTConfig(n_embd=hidden, moe_type="moge", use_router_scale=True, use_aux_loss=True,
                         aux_loss_type="switch", use_router_z_loss=True, use_noisy_top_k=False,
                         use_switch_tfm_init=True, router_use_full_prec=True, use_himoe_penalty=True,
                         use_himoe_regularization=True, stride=1, **settings, **modes)


def hizoo_router(cfg, overrides: dict):
    """hizoo's router for the reference config ``cfg``, built from a HizooConfig as a model would build it."""
    fields = dict(
        hidden_size=cfg.n_embd, num_attention_heads=1, ffn="moe", router="himoe", num_experts=cfg.n_exp,
        n_groups=cfg.n_groups, num_experts_per_tok=cfg.n_groups * cfg.top_k, router_aux_loss_coef=cfg.aux_loss_weight,
        router_z_loss_coef=cfg.router_z_loss_weight, himoe_tau=cfg.himoe_tau, himoe_ema_beta=cfg.himoe_beta,
        himoe_temperature=cfg.himoe_temperature, himoe_lambda_intra=cfg.himoe_lambda1,
        himoe_lambda_inter=cfg.himoe_lambda2, capacity_factor=cfg.train_capacity,
        eval_capacity_factor=cfg.eval_capacity, min_capacity=cfg.min_capacity, init_scheme="switch",
        switch_init_scale=cfg.switch_tfm_init_scale)
    return build_router(HizooConfig(**{**fields, **overrides}))


class Diffs:
    """Running maxima of |reference − hizoo| per quantity (mismatch counts for integer quantities)."""

    def __init__(self):
        self.max: dict[str, float] = {}

    def add(self, name: str, reference: torch.Tensor, ours: torch.Tensor, count: bool = False) -> None:
        reference, ours = torch.as_tensor(reference).detach(), torch.as_tensor(ours).detach()
        value = float((reference != ours).sum()) if count else float((reference.double() - ours.double()).abs().max())
        self.max[name] = max(self.max.get(name, 0.0), value)


def run_grouped(ref, case, args, gate_kind: str, diffs: Diffs) -> None:
    name, settings, modes, overrides = case
    torch.manual_seed(args.seed)
    cfg = reference_config(ref, settings, modes, args.hidden)
    if gate_kind == "MoGERouter":
        gate = ref.MoGERouter(cfg)
        weight, scale = gate.w_g.weight, gate.router_scale
    else:
        gate = ref.TutelGroupedGate(cfg.n_embd, cfg.n_exp, k=cfg.top_k, num_groups=cfg.n_groups,
                                    router_use_full_prec=True, use_aux_loss=True, use_router_z_loss=True,
                                    use_router_scale=True, use_himoe_penalty=True, use_himoe_regularization=True,
                                    himoe_tau=cfg.himoe_tau, himoe_beta=cfg.himoe_beta,
                                    himoe_temperature=cfg.himoe_temperature, himoe_lambda1=cfg.himoe_lambda1,
                                    himoe_lambda2=cfg.himoe_lambda2, himoe_warmup_iters=cfg.himoe_warmup_iters,
                                    himoe_intra_source=cfg.himoe_intra_source, himoe_intra_mode=cfg.himoe_intra_mode,
                                    himoe_inter_mode=cfg.himoe_inter_mode, himoe_entropy_mode=cfg.himoe_entropy_mode,
                                    min_capacity=cfg.min_capacity, capacity_factor=cfg.train_capacity)
        weight, scale = gate.wg.weight, gate.router_scale
    # the reference's own Switch init of its router Linear (GPT._init_weights), and scales away from 1
    ref.GPT._init_weights(SimpleNamespace(config=cfg), gate.w_g if gate_kind == "MoGERouter" else gate.wg)
    with torch.no_grad():
        scale.copy_(1.0 + 0.3 * torch.randn_like(scale) if name != "example config" else torch.ones_like(scale))
    ours = hizoo_router(cfg, overrides)
    with torch.no_grad():
        ours.weight.copy_(weight)
        ours.expert_scale.copy_(scale.view(-1))

    B, S, d = args.batch, args.seq, cfg.n_embd
    for step in range(args.steps + 1):
        training = step < args.steps
        gate.train(training)
        ours.train(training)
        if hasattr(gate, "training_step"):
            gate.training_step.fill_(float(step))  # the reference sets it from iter_num before the forward
        ours.step.fill_(step)  # hizoo counts optimizer steps in end_of_step()
        x = torch.randn(B, S, d) + 0.5 * step  # batches drift: the EMA moves and matters
        if gate_kind == "MoGERouter":
            out = gate(x)
        else:
            capacity_factor = cfg.train_capacity if training else cfg.eval_capacity  # EPMoELayerBase's choice
            _, _, meta = gate.route(x.view(-1, d), training, None, capacity_factor, None, None, None, None, None, None)
            out = meta["router_output"]
        r = ours(x.view(-1, d))
        T = B * S
        diffs.add("router logits", torch.nn.functional.linear(x.view(-1, d), weight), r.router_logits)
        if hasattr(gate, "avg_logits"):
            diffs.add("EMA buffer", gate.avg_logits, ours.logit_ema)
        diffs.add("selected experts (mismatches)", out.expert_indices, r.expert_idx, count=True)
        factor = ours.capacity_factor if training or ours.eval_capacity_factor is None else ours.eval_capacity_factor
        capacity = expert_capacity(T, r.expert_idx.shape[1], cfg.n_exp, factor, ours.capacity_rule, ours.min_capacity)
        diffs.add("capacity (mismatches)", torch.tensor(out.capacity), torch.tensor(capacity), count=True)
        dropped = r.dropped if r.dropped is not None else torch.zeros_like(out.dispatch_mask)
        diffs.add("dropped pairs (mismatches)", ~out.dispatch_mask, dropped, count=True)
        diffs.add("dropped pairs, reference count", 0.0, float((~out.dispatch_mask).sum()))  # > 0: drops exercised
        diffs.add("combine weights", out.combine_weights, r.expert_weight)
        diffs.add("load balance (x coef)", cfg.aux_loss_weight * out.load_balance_loss, r.aux_losses["load_balance"])
        diffs.add("z-loss (x coef)", cfg.router_z_loss_weight * out.router_z_loss, r.aux_losses["z"])
        diffs.add("intra", out.himoe_intra_loss, r.aux_losses["intra"])
        diffs.add("inter", out.himoe_inter_loss, r.aux_losses["inter"])
        # gradients through the combine weights and every loss, as in the training objective
        probe = torch.randn_like(r.expert_weight)
        ref_total = ((out.combine_weights * probe).sum() + cfg.aux_loss_weight * out.load_balance_loss
                     + cfg.router_z_loss_weight * out.router_z_loss + out.himoe_intra_loss + out.himoe_inter_loss)
        our_total = (r.expert_weight * probe).sum() + r.aux_loss
        ref_grads = torch.autograd.grad(ref_total, [weight, scale])
        our_grads = torch.autograd.grad(our_total, [ours.weight, ours.expert_scale])
        diffs.add("grad router weight", ref_grads[0], our_grads[0])
        diffs.add("grad router scale", ref_grads[1].view(-1), our_grads[1])


def run_vanilla(ref, args) -> tuple[Diffs, float]:
    """TopKRouter(norm_topk_prob=True) vs the reference's TutelVanillaGate (vanilla example config: E 32, K 8)."""
    torch.manual_seed(args.seed)
    E, K, d = 32, 8, args.hidden
    gate = ref.TutelVanillaGate(d, E, k=K, router_use_full_prec=True, use_aux_loss=True, use_router_z_loss=True,
                                min_capacity=4, capacity_factor=0.5)
    ref.GPT._init_weights(SimpleNamespace(config=SimpleNamespace(use_switch_tfm_init=True,
                                                                 switch_tfm_init_scale=0.1)), gate.wg)
    config = HizooConfig(hidden_size=d, num_attention_heads=1, ffn="moe", router="topk", num_experts=E,
                         num_experts_per_tok=K, norm_topk_prob=True, capacity_factor=0.5)
    ours = build_router(config)
    with torch.no_grad():
        ours.weight.copy_(gate.wg.weight)
    diffs = Diffs()
    x = torch.randn(args.batch * args.seq, d)
    _, _, meta = gate.route(x, True, None, 0.5, None, None, None, None, None, None)
    out, r = meta["router_output"], ours.train()(x)
    diffs.add("selected experts (mismatches)", out.expert_indices, r.expert_idx, count=True)
    diffs.add("dropped pairs (mismatches)", ~out.dispatch_mask, r.dropped, count=True)
    diffs.add("combine weights", out.combine_weights, r.expert_weight)
    diffs.add("load balance (x coef)", 0.01 * out.load_balance_loss, r.aux_losses["load_balance"])
    diffs.add("z-loss (x coef)", 0.001 * out.router_z_loss, r.aux_losses["z"])
    # the non-EP Router (MOELayer's) normalizes f by T*K and takes P from the renormalized selected weights
    cfg = ref.GPTConfig(n_embd=d, n_exp=E, top_k=K, moe_type="vanilla", use_aux_loss=True, use_router_z_loss=True,
                        router_use_full_prec=True, train_capacity=0.5)
    plain = ref.Router(cfg)
    with torch.no_grad():
        plain.w_g.weight.copy_(gate.wg.weight)
    plain_lb = float(plain(x.view(args.batch, args.seq, d)).load_balance_loss.detach())
    return diffs, plain_lb / float(out.load_balance_loss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, required=True, help="checkout of brain-lab-research/Hi-MoE")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4, help="training forwards before the eval forward")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--atol", type=float, default=1e-5)
    parser.add_argument("--hizoo", action="append", default=[], metavar="FIELD=VALUE",
                        help="HizooConfig override for every Hi-MoE case, e.g. capacity_priority=token to see what "
                             "one of hizoo's non-reference options changes (values parsed as YAML)")
    args = parser.parse_args()
    extra = {}
    for item in args.hizoo:
        field, _, value = item.partition("=")
        extra[field] = yaml.safe_load(value)
    ref = load_reference(args.reference)
    failed = False
    print(f"{args.batch} x {args.seq} tokens, d = {args.hidden}, {args.steps} training steps + 1 eval step, fp32\n")
    for gate_kind in ("MoGERouter", "TutelGroupedGate"):
        for case in CASES:
            diffs = Diffs()
            run_grouped(ref, (*case[:3], {**case[3], **extra}), args, gate_kind, diffs)
            print(f"## reference {gate_kind}, {case[0]}")
            for name, value in diffs.max.items():
                bad = "reference count" not in name and value > (0 if "mismatches" in name else args.atol)
                failed |= bad
                print(f"  {name:32s} {value:.3g}{'   <-- DIFFERS' if bad else ''}")
    diffs, lb_ratio = run_vanilla(ref, args)
    print("## reference TutelVanillaGate (vanilla example config) vs TopKRouter(norm_topk_prob=True), capacity 0.5")
    for name, value in diffs.max.items():
        bad = value > (0 if "mismatches" in name else args.atol)
        failed |= bad
        print(f"  {name:32s} {value:.3g}{'   <-- DIFFERS' if bad else ''}")
    print(f"  reference non-EP Router LB / TutelVanillaGate LB = {lb_ratio:.4f} (f over T*K slots and P from the "
          f"selected weights there; 1/K = {1 / 8:.4f} at balance)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
