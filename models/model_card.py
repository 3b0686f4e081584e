"""The model card (README.md) every hizoo export carries, generated from the model's config when it is saved.

It states the architecture, the router, the residual kind and stream initialization, the parameters (total and
active per token), the context length and special tokens, training tokens and validation perplexity when the
caller knows them (``ModelCardInfo``; train.py passes them), the exact code that loads the model with and without
hizoo installed, and where code and weights come from. ``models/export.py`` writes it; the text depends only on the
config, the parameter counts and the ``ModelCardInfo`` (no dates), so saving the same model twice writes the same card.

Parameters: ``total`` counts every parameter once (a tied lm_head shares the embedding); ``active`` is what one
token uses: the total minus, in every MoE layer, the routed experts it does not pick (E − K of E, each
``3 · hidden_size · moe_intermediate_size`` weights); routers and shared experts are always active. Embeddings are
included in both. Both come from ``HizooConfig.num_parameters``, the one count the study and the logs use too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from torch import nn

CARD_MARKER = "<!-- hizoo model card: written from the config when the model was saved -->"
CODE_LICENSE = "Apache-2.0"


@dataclass(frozen=True)
class ModelCardInfo:
    """What the card says beyond the config; None means "not recorded".

    ``path``: how readers load the model (its folder or Hub id; default: the folder's name).
    ``training_tokens``: tokens the model was trained on. ``validation_perplexity``: exp of the validation
    cross-entropy at the end of training. ``training_data``: what it was trained on. ``source``: where the weights
    come from (a training run, a conversion). ``weights_license``: the weights' license, when known.
    ``training_sequence_length``: the length of the training sequences (RoPE positions beyond it were never
    trained, though ``max_position_embeddings`` allows them). ``tokenizer``: whether the folder holds the model's
    tokenizer (the usage example then starts from text)."""

    path: str | None = None
    training_tokens: int | None = None
    training_sequence_length: int | None = None
    validation_perplexity: float | None = None
    training_data: str | None = None
    source: str | None = None
    weights_license: str | None = None
    tokenizer: bool = False

    def __post_init__(self):
        for name, least in (("training_tokens", 0), ("training_sequence_length", 1)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise ValueError(f"{name}={value!r} must be None or an integer >= {least}")
        ppl = self.validation_perplexity
        if ppl is not None and (isinstance(ppl, bool) or not isinstance(ppl, (int, float)) or not math.isfinite(ppl)
                                or ppl < 1):
            raise ValueError(f"validation_perplexity={ppl!r} must be None or a finite number >= 1")
        for name in ("path", "training_data", "source", "weights_license"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name}={value!r} must be None or a string")
        if not isinstance(self.tokenizer, bool):
            raise ValueError(f"tokenizer={self.tokenizer!r} must be True or False")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def _count(n: int) -> str:
    """12,345,678 (12.3M)"""
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n:,} ({n / scale:.3g}{unit})"
    return f"{n:,}"


def _router(c) -> str:
    if c.ffn != "moe":
        return "none (dense feed-forward)"
    K, G = c.num_experts_per_tok, c.n_groups
    if c.router == "topk":
        return (f"`topk`: softmax over the {c.num_experts} experts, top-{K} per token (OLMoE/Switch), combine "
                f"weights {'renormalized over the K chosen' if c.norm_topk_prob else 'the softmax probabilities'}; "
                f"Switch load balancing × {c.router_aux_loss_coef:g}, z-loss × {c.router_z_loss_coef:g}")
    if c.router == "group_limited":
        return (f"`group_limited` (DeepSeek-V3): sigmoid scores, the best {c.topk_groups} of {G} groups "
                f"(by their top-2 scores), top-{K} inside them, weights normalized × {c.routed_scaling_factor:g}; "
                f"loss-free balancing bias (rate {c.router_bias_update_rate:g})"
                + (f", sequence-wise balance loss × {c.seq_aux_loss_coef:g}" if c.seq_aux_loss_coef else ""))
    groups = f"the {G} groups" if c.topk_groups == G else f"the {c.topk_groups} of {G} groups of largest mass"
    return (f"`himoe` (Hi-MoE): EMA-centred logits (τ = {c.himoe_tau:g}, β = {c.himoe_ema_beta:g}), "
            f"top-{K // c.topk_groups} in each of {groups} of {c.num_experts // G} experts (K = {K}); intra-group "
            f"specialization λ1 = {c.himoe_lambda_intra:g}, inter-group balancing λ2 = {c.himoe_lambda_inter:g} "
            f"({c.himoe_reg_form}, {c.himoe_reg_source} probabilities), Switch load balancing × "
            f"{c.router_aux_loss_coef:g}, z-loss × {c.router_z_loss_coef:g}")


def _feed_forward(c) -> str:
    if c.ffn != "moe":
        return f"dense SwiGLU, intermediate size {c.intermediate_size}"
    text = (f"Mixture-of-Experts: {c.num_experts} SwiGLU experts of intermediate size {c.moe_intermediate_size}, "
            f"{c.num_experts_per_tok} per token")
    if c.num_shared_experts:
        text += f", plus {c.num_shared_experts} shared expert(s)"
    if c.num_dense_layers:
        text += f"; the first {c.num_dense_layers} layer(s) dense SwiGLU of size {c.intermediate_size}"
    evaluation = c.eval_capacity_factor if c.eval_capacity_factor is not None else c.capacity_factor
    if c.capacity_factor is not None or evaluation is not None:  # tokens over an expert's capacity are dropped
        def factor(value):
            return "dropless" if value is None else f"capacity factor {value:g}"
        text += f"; {factor(c.capacity_factor)} in training, {factor(evaluation)} in eval and generation"
    return text + f"; experts backend `{c.experts_backend}`"


_RESIDUALS = {
    "none": "plain pre-norm residual",
    "hc": "hyper-connections (Zhu et al. 2024, arXiv 2409.19606)",
    "mhc": "manifold-constrained hyper-connections, mHC (arXiv 2512.24880)",
    "mhc_lite": "mHC-lite (mixing = convex combination of the n! permutation matrices)",
}


def _residual(c) -> str:
    scaled = (f"; the embedding enters the residual multiplied by {c.stream_embedding_scale:g} "
              f"(stream_embedding_scale)" if c.stream_embedding_scale != 1.0 else "")
    if c.residual == "none":
        return _RESIDUALS["none"] + scaled
    text = f"`{c.residual}`: {_RESIDUALS[c.residual]}, {c.n_streams} streams"
    if c.residual == "hc":
        text += ", static + dynamic" if c.hc_dynamic else ", static"
    if c.residual == "mhc":
        text += f", Sinkhorn {c.mhc_sinkhorn_iters} iterations"
    return text + (f"; stream init `{c.stream_init}`, output `{c.stream_reduce}`, start stream `{c.stream_start}`"
                   + scaled)


def _title(c) -> str:
    ffn = {"topk": "top-k MoE", "group_limited": "group-limited MoE", "himoe": "Hi-MoE"}[c.router] if c.ffn == "moe" \
        else "dense"
    residual = {"none": "", "hc": " with hyper-connections", "mhc": " with mHC", "mhc_lite": " with mHC-lite"}
    return f"hizoo {ffn} language model{residual[c.residual]}"


def _ids(value) -> str:
    return "none" if value is None else str(value)


def model_card_text(model: nn.Module, info: ModelCardInfo, folder: str = "model", version: str = "") -> str:
    """README.md text for ``model`` saved in a folder named ``folder``."""
    c = model.config
    total, active = c.num_parameters(), c.num_parameters(active=True)  # from the config: every expert counts
    path = info.path or folder
    unknown = "not recorded"
    ppl = f"{info.validation_perplexity:.4g}" if info.validation_perplexity is not None else unknown
    tokens = _count(info.training_tokens) if info.training_tokens is not None else unknown
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    tags = ["hizoo", "custom_code"] + (["mixture-of-experts"] if c.ffn == "moe" else []) + (
        ["hyper-connections"] if c.residual != "none" else [])
    front = ["---", "library_name: transformers", "pipeline_tag: text-generation", "tags:"]
    front += [f"- {t}" for t in tags]
    if info.weights_license:
        front.append(f"license: {info.weights_license}")
    front.append("---")
    attention = (f"{c.num_hidden_layers} layers, hidden size {c.hidden_size}, {c.num_attention_heads} attention heads "
                 f"({c.num_key_value_heads} key/value heads) of size {c.head_dim}, RoPE θ = {c.rope_theta:g}, "
                 f"RMSNorm (ε = {c.rms_norm_eps:g}){', qk-norm' if c.qk_norm else ''}, "
                 f"{'tied' if c.tie_word_embeddings else 'untied'} input/output embeddings")
    rows = [
        ("architecture", f"pre-norm decoder (`HizooForCausalLM`): {attention}"),
        ("feed-forward", _feed_forward(c)),
        ("router", _router(c)),
        ("residual", _residual(c)),
        ("parameters", f"{_count(total)} total, {_count(active)} active per token"),
        ("vocabulary", f"{c.vocab_size} tokens"),
        ("context length", f"{c.max_position_embeddings} tokens (`max_position_embeddings`)"
         + (f"; trained on sequences of {info.training_sequence_length}" if info.training_sequence_length else "")),
        ("special tokens", f"bos {_ids(c.bos_token_id)}, eos {_ids(c.eos_token_id)}, pad {_ids(c.pad_token_id)}"),
        ("training tokens", tokens),
        ("validation perplexity", ppl),
        ("weights dtype", dtype),
    ]
    table = ["| | |", "|---|---|"] + [f"| {name} | {value} |" for name, value in rows]
    stops = f"  # stops at eos (id {c.eos_token_id})" if c.eos_token_id is not None else ""
    if info.tokenizer:
        run = ['tokenizer = AutoTokenizer.from_pretrained("{path}"{remote})  # pads on the left, for batches',
               'batch = tokenizer(["def main(", "import os"], return_tensors="pt", padding=True)',
               "out = model.generate(**batch, max_new_tokens=32, do_sample=False)" + stops,
               "print(tokenizer.batch_decode(out, skip_special_tokens=True))"]
        imports = "from transformers import AutoModelForCausalLM, AutoTokenizer"
    else:
        run = [f"input_ids = torch.tensor([[{c.bos_token_id if c.bos_token_id is not None else 0}]])",
               "out = model.generate(input_ids, max_new_tokens=32, do_sample=False)" + stops]
        imports = "import torch\nfrom transformers import AutoModelForCausalLM"
    without = [imports, "", "# without hizoo: the code saved in this folder (trust_remote_code runs it)",
               f'model = AutoModelForCausalLM.from_pretrained("{path}", trust_remote_code=True)',
               *(line.format(path=path, remote=", trust_remote_code=True") for line in run)]
    with_hizoo = ["import hizoo  # registers the model type with the Auto classes", imports,
                  "", f'model = AutoModelForCausalLM.from_pretrained("{path}")',
                  *(line.format(path=path, remote="") for line in run)]
    source = info.source or "saved with `HizooForCausalLM.save_pretrained`"
    data = f" Training data: {info.training_data}." if info.training_data else ""
    lines = [
        *front, CARD_MARKER, "", f"# {_title(c)}", "",
        f"A causal language model saved by hizoo{f' {version}' if version else ''}, the model zoo for hierarchical "
        "Mixture-of-Experts and hyper-connection language models. The table is read from this folder's "
        "`config.json` and weights.", "", *table, "",
        "## Loading", "",
        "Without hizoo, `transformers` runs the modeling code saved in this folder (`configuration_hizoo.py`, "
        "`modeling_hizoo.py` and the `hizoo_*.py` files they import, generated from the hizoo package when the "
        "model was saved); it needs only `torch` and `transformers`:", "",
        "```python", *without, "```", "",
        "With hizoo installed, its own classes load the same weights:", "",
        "```python", *with_hizoo, "```", "",
        "## Source and license", "",
        f"Weights: {source}.{data}"
        + (f" License: {info.weights_license}." if info.weights_license else " Their license is their owner's."),
        f"Code: generated from the hizoo package{f' {version}' if version else ''} ({CODE_LICENSE}).", "",
    ]
    return "\n".join(lines)
