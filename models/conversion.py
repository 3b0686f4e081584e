"""Convert a ``transformers`` OLMoE model (arXiv 2409.02060) into hizoo.

OLMoE is a pre-norm decoder with OLMoE-style qk-norm (RMSNorm over the whole q / k projection), a
softmax top-K router without renormalization and no shared experts: exactly hizoo with ``ffn="moe"``,
``router="topk"``, ``qk_norm=True``, ``residual="none"``. The conversion is a renaming plus two
transposes (OLMoE stores experts as ``gate_up_proj`` [E, 2f, d] and ``down_proj`` [E, d, f]; hizoo as
``w13`` [E, d, 2f] and ``w2`` [E, f, d]).
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from .configuration import HizooConfig

# OLMoE parameter name (regex) -> hizoo parameter name
_RENAMES = [
    (r"^model\.layers\.(\d+)\.self_attn\.(q_proj|k_proj|v_proj|o_proj|q_norm|k_norm)\.(weight|bias)$",
     r"model.layers.\1.attn.\2.\3"),
    (r"^model\.layers\.(\d+)\.input_layernorm\.weight$", r"model.layers.\1.attn_norm.weight"),
    (r"^model\.layers\.(\d+)\.post_attention_layernorm\.weight$", r"model.layers.\1.ffn_norm.weight"),
    (r"^model\.layers\.(\d+)\.mlp\.gate\.weight$", r"model.layers.\1.ffn.router.weight"),
    (r"^model\.layers\.(\d+)\.mlp\.experts\.gate_up_proj$", r"model.layers.\1.ffn.experts.w13"),
    (r"^model\.layers\.(\d+)\.mlp\.experts\.down_proj$", r"model.layers.\1.ffn.experts.w2"),
    (r"^(model\.embed_tokens\.weight|model\.norm\.weight|lm_head\.weight)$", r"\1"),
]


def config_from_olmoe(olmoe_config, **overrides) -> HizooConfig:
    """The HizooConfig of the same architecture as an ``OlmoeConfig``."""
    if getattr(olmoe_config, "clip_qkv", None) is not None:
        raise ValueError(f"OLMoE clip_qkv={olmoe_config.clip_qkv} is not supported by hizoo; only clip_qkv=None converts")
    rope = getattr(olmoe_config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"OLMoE rope_type={rope['rope_type']!r} is not supported; hizoo implements plain RoPE")
    kwargs = dict(
        vocab_size=olmoe_config.vocab_size,
        hidden_size=olmoe_config.hidden_size,
        num_hidden_layers=olmoe_config.num_hidden_layers,
        num_attention_heads=olmoe_config.num_attention_heads,
        num_key_value_heads=olmoe_config.num_key_value_heads,
        max_position_embeddings=olmoe_config.max_position_embeddings,
        rope_theta=float(rope.get("rope_theta", getattr(olmoe_config, "rope_theta", 10000.0))),
        rms_norm_eps=olmoe_config.rms_norm_eps,
        qk_norm=True,
        attention_bias=olmoe_config.attention_bias,
        initializer_range=olmoe_config.initializer_range,
        tie_word_embeddings=olmoe_config.tie_word_embeddings,
        pad_token_id=olmoe_config.pad_token_id,
        bos_token_id=olmoe_config.bos_token_id,
        eos_token_id=olmoe_config.eos_token_id,
        ffn="moe",
        router="topk",
        moe_intermediate_size=olmoe_config.intermediate_size,
        num_experts=olmoe_config.num_experts,
        num_experts_per_tok=olmoe_config.num_experts_per_tok,
        norm_topk_prob=olmoe_config.norm_topk_prob,
        router_aux_loss_coef=olmoe_config.router_aux_loss_coef,
        # transformers' OlmoeForCausalLM computes no z-loss, so neither does the converted model: its loss and
        # load-balancing value equal transformers'. OLMoE itself trained with z-loss 0.001 (paper, Table 11):
        # pass router_z_loss_coef=0.001 to continue training that way.
        router_z_loss_coef=0.0,
    )
    kwargs.update(overrides)
    return HizooConfig(**kwargs)


def state_dict_from_olmoe(olmoe_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename (and transpose the expert weights of) an OLMoE state dict into hizoo's names."""
    converted = {}
    for name, tensor in olmoe_state.items():
        for pattern, replacement in _RENAMES:
            if re.match(pattern, name):
                new_name = re.sub(pattern, replacement, name)
                if new_name.endswith((".w13", ".w2")):
                    tensor = tensor.transpose(1, 2)  # [E, out, in] -> [E, in, out]
                converted[new_name] = tensor.contiguous()
                break
        else:
            raise ValueError(f"OLMoE parameter {name!r} has no hizoo counterpart; this OLMoE variant does not convert")
    return converted


def from_olmoe(olmoe_model, **config_overrides):
    """A HizooForCausalLM with the weights of ``olmoe_model`` (an ``OlmoeForCausalLM``), same dtype."""
    from .modeling import HizooForCausalLM

    config = config_from_olmoe(olmoe_model.config, **config_overrides)
    model = HizooForCausalLM(config)
    state = state_dict_from_olmoe(olmoe_model.state_dict())
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"OLMoE conversion left missing={missing} unexpected={unexpected}")
    if config.tie_word_embeddings:
        model.tie_weights()
    dtype = next(olmoe_model.parameters()).dtype
    return model.to(dtype).eval() if not olmoe_model.training else model.to(dtype)


@torch.no_grad()
def convert_olmoe_checkpoint(src: str, dst: str) -> None:
    """Load an OLMoE checkpoint directory with transformers and save it as a hizoo HF directory (+ tokenizer if any)."""
    from transformers import AutoTokenizer, OlmoeForCausalLM

    olmoe = OlmoeForCausalLM.from_pretrained(src)
    model = from_olmoe(olmoe)
    model.save_pretrained(dst)
    try:
        AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    except (OSError, ValueError):
        pass  # a weights-only checkpoint has no tokenizer to carry over
