"""Hi-MoE hierarchical routing: EMA-centred logits, top-k_g inside groups, intra/inter-group regularizers.

Reference: "Hierarchical Mixture-of-Experts with Two-Stage Optimization" and its code
(brain-lab-research/Hi-MoE, ``model.py``). Equation numbers below are the paper's.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import initialization as init

from .base import Router, RoutingResult
from .losses import switch_load_balance_loss, z_loss

_EPS = 1e-10
# The allowed values of the options below (HizooConfig's FIELD_CHOICES lists these same tuples)
HIMOE_REG_SOURCES = ("raw", "selection", "corrected")
HIMOE_REG_FORMS = ("square", "entropy")
HIMOE_GROUP_MASS = ("dense", "sparse")


class HiMoERouter(Router):
    """Hi-MoE router over E experts in ``n_groups`` contiguous groups of E/G.

    - EMA centring (Eq. 3): ḡ ← β·ḡ + (1−β)·mean_t g, buffer ``logit_ema`` [E], training forwards only,
      no gradient, updated before it is used in the same forward.
    - Corrected logits and probabilities (Eq. 4): ĝ = (g − τ·ḡ)/T, π = softmax(ĝ) over all E.
    - Selection (Eq. 5): top-k_g of π inside every group (``topk_groups`` = G), or inside the
      ``topk_groups`` groups of largest π mass; K = k_g · topk_groups.
    - Combine weights: the selected π renormalized over the K, × learnable ``expert_scale`` [E] (init 1).
    - Regularizers (Eqs. 6-7) on probabilities p chosen by ``reg_source``: ``"raw"`` (the reference default:
      p = softmax(g) in both terms), ``"selection"`` (the reference's ``himoe_intra_source="selection"``: π in
      R_intra, softmax(g) in R_inter) or ``"corrected"`` (π in both, the paper's Eq. 7 read literally; hizoo's
      earlier option); m_g = Σ_{i∈g} p_i:
        ``square``:  R_intra = −λ1 · mean_t Σ_i p_i²,  R_inter = +λ2 · mean_t Σ_g m_g²
        ``entropy``: R_intra = +λ1 · mean_t H(p),     R_inter = −λ2 · mean_t H(m)   (Shannon form)
      ``group_mass="sparse"``: m_g sums the selected π (before renormalization) instead of all of p.
      λ1 ramps linearly from 0 over ``intra_warmup_steps`` optimizer steps, counted in buffer ``step``.
    - Plus Switch LB ``E · Σ_i f_i P_i`` with P from the raw softmax(g) and f_i = (tokens whose selection
      includes i) / T, so Σ f = K (Switch Eq. 4, normalized as the reference code), and z-loss on g (ST-MoE Eq. 5).
    - Capacity (optional; ``Router``): the reference example trains and evaluates with factor 2.0, floor-even
      capacity of at least 4, first choices in a group before second choices (``capacity_priority="slot"``).

    The reference's ``MoGERouter`` (Hi-MoE ``model.py``) and this router give the same logits, selections,
    combine weights and losses on the same weights: ``bench/reference_himoe.py``.

    Why λ1 must stay below λ2 (square form): per token, one-hot p gives R = λ2 − λ1, while one peaked
    expert in each of the G groups gives (λ2 − λ1)/G. For λ1 > λ2 the regularizer prefers putting the
    whole token on one expert, hence one group; for λ1 < λ2 it prefers equal group mass, peaked inside
    each group. The reference defaults (λ1 = 0.1, λ2 = 0.05) rely on the LB loss to spread tokens.
    """

    def __init__(self, num_experts: int, hidden_size: int, top_k: int, n_groups: int, topk_groups: int | None = None,
                 tau: float = 0.01, ema_beta: float = 0.9, temperature: float = 1.0, lambda_intra: float = 0.1,
                 lambda_inter: float = 0.05, reg_source: str = "raw", reg_form: str = "square",
                 group_mass: str = "dense", intra_warmup_steps: int = 0, aux_loss_coef: float = 0.01,
                 z_loss_coef: float = 0.001, **capacity):
        super().__init__(num_experts, hidden_size, top_k, **capacity)  # capacity options of Router
        topk_groups = n_groups if topk_groups is None else topk_groups
        if num_experts % n_groups or top_k % topk_groups or top_k // topk_groups > num_experts // n_groups:
            raise ValueError(
                f"HiMoERouter: num_experts={num_experts}, n_groups={n_groups}, topk_groups={topk_groups}, "
                f"top_k={top_k} need n_groups | num_experts, topk_groups | top_k, top_k/topk_groups <= E/G")
        for name, value, allowed in (("reg_source", reg_source, HIMOE_REG_SOURCES),
                                     ("reg_form", reg_form, HIMOE_REG_FORMS),
                                     ("group_mass", group_mass, HIMOE_GROUP_MASS)):
            if value not in allowed:
                raise ValueError(f"HiMoERouter: {name}={value!r} is not one of {allowed}")
        self.n_groups, self.topk_groups = n_groups, topk_groups
        self.experts_per_group = num_experts // n_groups
        self.k_per_group = top_k // topk_groups
        self.tau, self.ema_beta, self.temperature = tau, ema_beta, temperature
        self.lambda_intra, self.lambda_inter = lambda_intra, lambda_inter
        self.reg_source, self.reg_form, self.group_mass = reg_source, reg_form, group_mass
        self.intra_warmup_steps = intra_warmup_steps
        self.aux_loss_coef, self.z_loss_coef = aux_loss_coef, z_loss_coef
        self.register_buffer("logit_ema", torch.zeros(num_experts))  # [E] ḡ
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # optimizer steps seen (λ1 warm-up)
        self.expert_scale = nn.Parameter(torch.ones(num_experts))  # [E] s_i

    def reset_parameters(self) -> None:
        init.zeros_(self.logit_ema)
        init.zeros_(self.step)
        init.ones_(self.expert_scale)

    @torch.no_grad()
    def end_of_step(self) -> None:
        """Count one optimizer step (drives the λ1 warm-up; saved with the model, so resuming is exact)."""
        self.step += 1

    def intra_coef(self) -> Tensor:
        """λ1 after warm-up: λ1 · min(1, step / intra_warmup_steps)."""
        if self.intra_warmup_steps == 0:
            return torch.tensor(self.lambda_intra, device=self.step.device)
        return self.lambda_intra * (self.step.float() / self.intra_warmup_steps).clamp(max=1.0)

    def select(self, pi: Tensor) -> tuple[Tensor, Tensor]:
        """Top-k_g inside every group, or inside the ``topk_groups`` groups of largest mass (Eq. 5).
        pi [T, E] -> (expert_idx [T, K], selected π [T, K]), experts ordered by group."""
        T = pi.shape[0]
        grouped = pi.view(T, self.n_groups, self.experts_per_group)  # [T, G, E/G]
        group_ids = torch.arange(self.n_groups, device=pi.device).expand(T, -1)  # [T, G]
        if self.topk_groups < self.n_groups:
            group_ids = grouped.sum(dim=-1).topk(self.topk_groups, dim=-1).indices.sort(dim=-1).values  # [T, Gk]
            grouped = grouped.gather(1, group_ids[..., None].expand(-1, -1, self.experts_per_group))  # [T, Gk, E/G]
        top_p, local = grouped.topk(self.k_per_group, dim=-1)  # [T, Gk, k_g]
        expert_idx = local + (group_ids * self.experts_per_group)[..., None]  # [T, Gk, k_g]
        return expert_idx.reshape(T, -1), top_p.reshape(T, -1)

    def regularizers(self, p_intra: Tensor, p_inter: Tensor, expert_idx: Tensor,
                     selected: Tensor) -> tuple[Tensor, Tensor]:
        """(R_intra, R_inter) already scaled by λ1 (warmed up) and λ2 (Eqs. 6-7); p_intra, p_inter [T, E] are the
        probabilities ``reg_source`` names for each term, selected [T, K] the chosen π before renormalization."""
        T = p_inter.shape[0]
        if self.group_mass == "sparse":  # mass of the selected experts only (reference "sparse_group_mass")
            m = p_inter.new_zeros(T, self.n_groups).scatter_add_(1, expert_idx // self.experts_per_group, selected)
        else:
            m = p_inter.view(T, self.n_groups, self.experts_per_group).sum(dim=-1)  # [T, G]
        if self.reg_form == "entropy":
            intra = -(p_intra * (p_intra + _EPS).log()).sum(dim=-1).mean()  # mean_t H(p): minimized -> sharper
            inter = (m * (m + _EPS).log()).sum(dim=-1).mean()  # −mean_t H(m): minimized -> spread groups
        else:
            intra = -p_intra.square().sum(dim=-1).mean()  # −mean_t Σ_i p_i²
            inter = m.square().sum(dim=-1).mean()  # +mean_t Σ_g m_g²
        return self.intra_coef() * intra, self.lambda_inter * inter

    def forward(self, x: Tensor, seq_len: int | None = None) -> RoutingResult:
        logits = self.logits(x)  # [T, E] fp32  g
        if self.training and not self.recomputing:
            with torch.no_grad():  # Eq. 3, before use (a checkpoint recompute reuses the updated ḡ)
                self.logit_ema.mul_(self.ema_beta).add_(logits.mean(dim=0), alpha=1.0 - self.ema_beta)
        corrected = (logits - self.tau * self.logit_ema) / self.temperature  # [T, E]  ĝ, Eq. 4
        pi = corrected.softmax(dim=-1)  # [T, E]  π
        raw = logits.softmax(dim=-1)  # [T, E]  softmax(g)
        expert_idx, selected = self.select(pi)  # [T, K], [T, K]
        weight = selected / (selected.sum(dim=-1, keepdim=True) + _EPS) * self.expert_scale[expert_idx]  # [T, K]

        aux = {}
        if self.aux_loss_coef > 0:
            aux["load_balance"] = self.aux_loss_coef * switch_load_balance_loss(  # P from softmax(g), f from the
                raw, expert_idx, self.num_experts)  # selection (before capacity drops), as the reference
        if self.z_loss_coef > 0:
            aux["z"] = self.z_loss_coef * z_loss(logits)
        if self.lambda_intra > 0 or self.lambda_inter > 0:
            p_intra = raw if self.reg_source == "raw" else pi
            p_inter = pi if self.reg_source == "corrected" else raw
            aux["intra"], aux["inter"] = self.regularizers(p_intra, p_inter, expert_idx, selected)
        return self.finish(expert_idx, weight, logits, aux, x.dtype)
