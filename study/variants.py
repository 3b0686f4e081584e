"""What the studies train: scales (model size, data, budget; configs/study/*.yaml) and the variants compared at
each scale.

Every variant of a study shares the scale's transformer, data, token budget and optimizer; only the fields
under study change. In the MoE study every routed variant has the same experts (E, K, expert width), hence
the same total and active parameters; the dense baseline matches the active parameters (its FFN width is
K × the expert width). In the streams study every variant has the same dense FFN model; only the residual
(plain, HC, mHC, mHC-lite) and the stream initialization change.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import yaml

from ..models.configuration import STREAM_INITS


@dataclass(frozen=True)
class Scale:
    """One size of study. ``model``: HizooConfig fields shared by every variant (its dense FFN width is
    ``top_k × expert_width``, the MoE variants' active width); ``data``: HizooDataModule arguments; ``steps``
    optimizer steps of ``batch_size × seq_len`` tokens each."""

    name: str
    model: dict
    data: dict
    num_experts: int
    top_k: int
    expert_width: int
    n_streams: int
    steps: int
    lr: float
    warmup_steps: int
    val_every: int  # steps between validation points of the curves
    val_batches: int | None  # validation batches of every curve point and of the final perplexity (None: all)
    eval_sequences: int  # held-out sequences for the diagnostics (balance, specialization, streams)
    seeds: int  # default number of seeds
    precision: str = "32-true"
    accelerator: str = "auto"

    @property
    def tokens(self) -> int:
        return self.steps * self.data["batch_size"] * self.data["seq_len"]


SCALES_DIR = Path(__file__).resolve().parent.parent / "configs" / "study"  # shipped with the package (package-data)

# the YAML types each annotation of Scale accepts (bool is refused where an int is meant; an int is a valid float)
_YAML_TYPES = {"str": (str,), "dict": (dict,), "int": (int,), "float": (int, float), "int | None": (int, type(None))}


def load_scale(path: str | Path) -> Scale:
    """The Scale a YAML file defines (configs/study/NAME.yaml). Every field of Scale is required except those
    with a default; an unknown or missing field, a field of the wrong type, or a ``name`` other than the file's
    stem raises ValueError naming the file, the field and the allowed fields."""
    path = Path(path)
    values = yaml.safe_load(path.read_text())
    allowed = [f.name for f in fields(Scale)]
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a study scale is a mapping of the fields {allowed}, got {type(values).__name__}")
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {unknown}; a study scale has the fields {allowed}")
    required = [f.name for f in fields(Scale) if f.default is MISSING and f.default_factory is MISSING]
    missing = [name for name in required if name not in values]
    if missing:
        raise ValueError(f"{path}: missing field(s) {missing}; a study scale needs {required} (optional: "
                         f"{[name for name in allowed if name not in required]})")
    for f in fields(Scale):
        if f.name not in values:
            continue
        value, types = values[f.name], _YAML_TYPES[f.type]
        if isinstance(value, bool) or not isinstance(value, types):
            raise ValueError(f"{path}: field {f.name!r} = {value!r} ({type(value).__name__}) must be {f.type}"
                             + (" (YAML reads 2e-3 as a string: write 2.0e-3)" if f.type == "float" else ""))
        if f.type == "float":
            values[f.name] = float(value)
    if values["name"] != path.stem:
        raise ValueError(f"{path}: field 'name' = {values['name']!r} must be the file's name {path.stem!r}")
    return Scale(**values)


def load_scales(folder: str | Path = SCALES_DIR) -> dict[str, Scale]:
    """Every scale of ``folder`` (configs/study/*.yaml by default) by name, smallest token budget first."""
    scales = [load_scale(path) for path in sorted(Path(folder).glob("*.yaml"))]
    if not scales:
        raise ValueError(f"no study scales (*.yaml) in {folder}")
    return {scale.name: scale for scale in sorted(scales, key=lambda scale: (scale.tokens, scale.name))}


# toy (the test suite's), cpu (the default; a laptop) and gpu (one GPU): configs/study/{toy,cpu,gpu}.yaml
SCALES = load_scales()


@dataclass(frozen=True)
class Variant:
    """``name``: a file-safe id; ``label``: what the tables say; ``model``: HizooConfig fields over the scale's."""

    name: str
    label: str
    model: dict = field(default_factory=dict)


def moe_variants(scale: Scale) -> list[Variant]:
    """Dense (active-parameter matched), OLMoE top-k, Mixtral top-k (renormalized weights), DeepSeek-V3
    group-limited, Hi-MoE as in its reference (groups of 8 experts, k_g = 2, every group selected), the same with
    the reference's training recipe (capacity 2.0, Switch init), the Switch init alone on Hi-MoE, renormalized top-k
    and dense (the recipe's controls), Hi-MoE without its intra-group term, and Hi-MoE with k_g = 1 (one expert
    per group)."""
    E, K, width = scale.num_experts, scale.top_k, scale.expert_width
    moe = dict(ffn="moe", num_experts=E, num_experts_per_tok=K, moe_intermediate_size=width)
    himoe_groups = max(1, min(E // 8, K // 2))  # groups of E/G ≥ 8 experts when E allows, k_g = K/G ≥ 2
    return [
        Variant("dense", f"dense (FFN width {K * width} = K × expert width)",
                dict(ffn="dense", intermediate_size=K * width)),
        Variant("topk", "top-k softmax (OLMoE)", dict(moe, router="topk")),
        # OLMoE keeps the top-K probabilities as they are (summing to ~K/E at init); Mixtral renormalizes them,
        # as Hi-MoE and DeepSeek-V3 do: this variant separates that choice from the routing itself
        Variant("topk_norm", "top-k softmax, renormalized (Mixtral)", dict(moe, router="topk", norm_topk_prob=True)),
        Variant("group_limited", "group-limited + loss-free bias (DeepSeek-V3)",
                dict(moe, router="group_limited", n_groups=4, topk_groups=2, router_aux_loss_coef=0.0,
                     seq_aux_loss_coef=1e-4)),
        Variant("himoe", f"Hi-MoE ({himoe_groups}×{E // himoe_groups} experts, k_g = {K // himoe_groups})",
                dict(moe, router="himoe", n_groups=himoe_groups)),
        # the reference's training recipe on top: capacity factor 2.0 in training and eval (its drop rule and
        # order) and Switch init of every layer (configs/himoe_reference.yaml); the other variants are dropless
        Variant("himoe_ref", f"Hi-MoE ({himoe_groups}×{E // himoe_groups}), reference recipe (capacity 2.0, Switch init)",
                dict(moe, router="himoe", n_groups=himoe_groups, capacity_factor=2.0, eval_capacity_factor=2.0,
                     init_scheme="switch")),
        # controls for the recipe: the Switch init alone (it also gives the residual-writing projections GPT-2's
        # 1/sqrt(2L) scale) on Hi-MoE, on renormalized top-k and on the dense model, to separate what the init
        # does from what the capacity and the hierarchical routing do
        Variant("himoe_switch", f"Hi-MoE ({himoe_groups}×{E // himoe_groups}), Switch init (dropless)",
                dict(moe, router="himoe", n_groups=himoe_groups, init_scheme="switch")),
        Variant("topk_norm_switch", "top-k softmax, renormalized, Switch init",
                dict(moe, router="topk", norm_topk_prob=True, init_scheme="switch")),
        Variant("dense_switch", f"dense (FFN width {K * width}), Switch init",
                dict(ffn="dense", intermediate_size=K * width, init_scheme="switch")),
        # ablation: the intra-group specialization term (Eq. 6) off, everything else as the reference
        Variant("himoe_no_intra", f"Hi-MoE ({himoe_groups}×{E // himoe_groups}), λ1 = 0",
                dict(moe, router="himoe", n_groups=himoe_groups, himoe_lambda_intra=0.0)),
        Variant("himoe_kg1", f"Hi-MoE ({K}×{E // K} experts, k_g = 1)", dict(moe, router="himoe", n_groups=K)),
    ]


MHC_LITE_INITS = ("copy", "lss", "balanced_rotate")  # the stream-collapse paper's setting, its LSS, hizoo's control


def stream_variants(scale: Scale) -> list[Variant]:
    """Plain residual, then HC (dynamic, as in the HC paper's main results) and mHC with every stream_init, and
    mHC-lite (the stream-collapse paper's headline residual, where its code wires LSS) with ``copy``, ``lss`` and
    ``balanced_rotate``: ``copy`` is the symmetric baseline, the others break the symmetry between streams
    (``balanced_rotate`` without changing the embedding's norm in any stream, the control for ``lss``'s 0.6
    scale)."""
    n = scale.n_streams
    out = [Variant("plain", "plain residual", dict(residual="none", n_streams=1))]
    for residual, label, extra, inits in (("hc", "HC", dict(hc_dynamic=True), STREAM_INITS),
                                          ("mhc", "mHC", {}, STREAM_INITS),
                                          ("mhc_lite", "mHC-lite", {}, MHC_LITE_INITS)):
        for init in inits:
            out.append(Variant(f"{residual}_{init}", f"{label} n={n}, {init}",
                               dict(residual=residual, n_streams=n, stream_init=init, **extra)))
    # controls for the output reduction: the official norm_sum (Σ_s RMSNorm(H_s)) makes n copies' logits n times
    # the plain model's at init; with sum_norm (RMSNorm(Σ_s H_s)) they are the plain model's
    for residual, label, extra in (("hc", "HC", dict(hc_dynamic=True)), ("mhc", "mHC", {})):
        out.append(Variant(f"{residual}_copy_sum_norm", f"{label} n={n}, copy, sum_norm output",
                           dict(residual=residual, n_streams=n, stream_init="copy", stream_reduce="sum_norm", **extra)))
    return out


STUDIES = {"moe": moe_variants, "streams": stream_variants}


def select(variants: list[Variant], names: list[str] | None) -> list[Variant]:
    """The variants named in ``names`` (all when None), in the study's order; unknown names raise ValueError."""
    if not names:
        return variants
    known = [v.name for v in variants]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"--variants {unknown} unknown; this study has {known}")
    return [v for v in variants if v.name in names]
