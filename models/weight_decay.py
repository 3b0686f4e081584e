"""Which parameters AdamW decays (``HizooLightningModule(weight_decay_rule=...)``).

- ``reference`` (default): the official codes' nanoGPT rule. Both papers' training code decays every
  parameter with ``p.dim() >= 2`` (the Hi-MoE code also exempts names ending in ``bias``): all weight
  matrices and embeddings, but no norm gains, biases or scalars. hizoo stores some parameters in a
  different shape than the official code, so the rule is applied to the *official counterpart* of each:
  - HC / mHC / mHC-lite connections: each connection class's ``reference_decayed`` (hc.py, mhc.py; HC: A_m and
    A_r, parts of the official ``static_alpha`` [n, 1 + n], and [W_m | W_r]; mHC: b_pre and b_res, parts of
    ``static_alpha``, and φ; mHC-lite: φ only, its ``static_alpha`` being 1-D). Not decayed: B / b_post
    (``static_beta`` [n]), HC's W_β ([d]), the scales s and α, the norms' γ.
  - Hi-MoE's per-expert scale ``expert_scale`` [E]: the official ``router_scale`` is stored [1, E], so it is
    decayed (the reference example config decays it).
  - Stream expansion: LSS's λ [n, d] is ``lss`` [n, d] there; hizoo's own inits (rotate, split,
    balanced_rotate) have no counterpart and follow the rule on their own shape (all [n, ·]: decayed, which
    pulls angles towards ``copy`` and split logits towards an even split).
  - Everything else (attention, MLP, experts, routers, embeddings, norms) has the official shape:
    ``p.ndim >= 2``.
- ``matrices``: hizoo's earlier rule: ``p.ndim >= 2`` outside the residual-stream connections and the stream
  expansion (no connection coefficient, LSS scale or expert scale decayed).
"""

from __future__ import annotations

from torch import nn

from .stream_connection import ResidualStreams

WEIGHT_DECAY_RULES = ("reference", "matrices")
OFFICIAL_2D = ("expert_scale",)  # stored 1-D in hizoo, >= 2-D in the official code ([1, E] router_scale)


def decayed_parameter_names(model: nn.Module, rule: str = "reference") -> list[str]:
    """Names (as ``model.named_parameters()`` gives them, tied weights once) of the parameters ``rule`` decays."""
    if rule not in WEIGHT_DECAY_RULES:
        raise ValueError(f"weight_decay_rule={rule!r} is not allowed; choose one of "
                         f"{', '.join(map(repr, WEIGHT_DECAY_RULES))}")
    names = []
    for name, param in model.named_parameters():
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        if rule == "matrices":
            decayed = param.ndim >= 2 and not ("_conn." in name or ".expand." in name)
        elif isinstance(owner, ResidualStreams):
            decayed = attr in owner.reference_decayed
        elif attr in OFFICIAL_2D:
            decayed = True
        else:
            decayed = param.ndim >= 2 and not attr.endswith("bias")
        if decayed:
            names.append(name)
    return names


def parameter_groups(model: nn.Module, weight_decay: float, rule: str = "reference") -> list[dict]:
    """AdamW parameter groups: the parameters ``rule`` decays with ``weight_decay``, the others with 0."""
    decayed = set(decayed_parameter_names(model, rule))
    params = list(model.named_parameters())
    return [{"params": [p for n, p in params if n in decayed], "weight_decay": weight_decay},
            {"params": [p for n, p in params if n not in decayed], "weight_decay": 0.0}]
