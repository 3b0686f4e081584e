"""Convert a ``transformers`` OLMoE model (arXiv 2409.02060) into hizoo.

OLMoE is a pre-norm decoder with OLMoE-style qk-norm (RMSNorm over the whole q / k projection), a
softmax top-K router without renormalization and no shared experts: exactly hizoo with ``ffn="moe"``,
``router="topk"``, ``qk_norm=True``, ``residual="none"``. The conversion is a renaming plus two
transposes (OLMoE stores experts as ``gate_up_proj`` [E, 2f, d] and ``down_proj`` [E, d, f]; hizoo as
``w13`` [E, d, 2f] and ``w2`` [E, f, d]).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from .configuration import HizooConfig
from .export import export_pretrained
from .files import atomic_directory, read_json
from .model_card import ModelCardInfo

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
    rope = dict(getattr(olmoe_config, "rope_parameters", None) or {})  # scaled RoPE: transformers' own functions
    rope["rope_theta"] = float(rope.get("rope_theta", getattr(olmoe_config, "rope_theta", 10000.0)))
    kwargs = dict(
        vocab_size=olmoe_config.vocab_size,
        hidden_size=olmoe_config.hidden_size,
        num_hidden_layers=olmoe_config.num_hidden_layers,
        num_attention_heads=olmoe_config.num_attention_heads,
        num_key_value_heads=olmoe_config.num_key_value_heads,
        max_position_embeddings=olmoe_config.max_position_embeddings,
        rope_theta=rope["rope_theta"],
        rope_parameters=rope,
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
    """A HizooForCausalLM with the weights of ``olmoe_model`` (an ``OlmoeForCausalLM``), same dtype.

    Every hizoo weight is copied from an OLMoE tensor (checked: none is left at its random initialization, none
    of OLMoE's is dropped, and the copied values are verified)."""
    from .modeling import HizooForCausalLM

    config = config_from_olmoe(olmoe_model.config, **config_overrides)
    model = HizooForCausalLM(config)
    state = state_dict_from_olmoe(olmoe_model.state_dict())
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    model.check_loaded_keys(missing, unexpected, [], "the OLMoE model",
                            hint=f"config overrides {config_overrides} ask for weights OLMoE does not have")
    if config.tie_word_embeddings:
        model.tie_weights()
    loaded = model.state_dict()
    differ = [k for k, v in state.items() if not torch.equal(loaded[k], v.to(loaded[k].dtype))]
    if differ:
        raise ValueError(f"OLMoE conversion did not copy {differ[:5]} faithfully")
    dtype = next(olmoe_model.parameters()).dtype
    return model.to(dtype).eval() if not olmoe_model.training else model.to(dtype)


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def check_conversion_paths(src: Path, dst: Path, overwrite: bool = False) -> None:
    """Refuse what would lose data or write nothing useful: ``src`` that is not an OLMoE checkpoint directory
    (``config.json`` with ``model_type: "olmoe"``), ``dst`` that is, contains or lies inside ``src``, ``dst`` that
    is a file, or a non-empty ``dst`` without ``overwrite``."""
    if not src.is_dir():
        raise FileNotFoundError(f"source {src} is not a directory" if src.exists() else f"source {src} does not exist")
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src} has no config.json: not a transformers checkpoint directory")
    config = read_json(src / "config.json")
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type != "olmoe":
        raise ValueError(f"{src / 'config.json'} has model_type={model_type!r}: not an OLMoE checkpoint "
                         "(model_type 'olmoe'); only OlmoeForCausalLM checkpoints convert")
    src_real, dst_real = src.resolve(), dst.resolve()
    if dst_real == src_real or src_real in dst_real.parents or dst_real in src_real.parents:
        raise ValueError(f"destination {dst} {'is' if dst_real == src_real else 'overlaps'} the source {src}: "
                         "converting would write into (or replace) the OLMoE checkpoint; choose another destination")
    if dst.exists() and not dst.is_dir():
        raise FileExistsError(f"destination {dst} is a file; the converted model is a directory")
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise FileExistsError(f"destination {dst} is not empty; pass --overwrite (overwrite=True) to replace it")


@torch.no_grad()
def convert_olmoe_checkpoint(src: str | Path, dst: str | Path, overwrite: bool = False) -> int:
    """Load an OLMoE checkpoint directory with transformers and save it as a self-contained hizoo HF directory (+ its
    tokenizer; ``models/export.py``: code, ``auto_map``, special tokens, model card); returns the number of weights
    written.

    Paths are checked first (``check_conversion_paths``); the OLMoE load must find every weight (no random
    initialization), every hizoo weight must come from an OLMoE tensor, and the written files are read back and
    compared with the converted model. ``dst`` is built in a temporary folder next to it and renamed into place,
    so a failure or kill leaves ``dst`` as it was."""
    from transformers import AutoTokenizer, OlmoeForCausalLM

    src, dst = Path(src), Path(dst)
    check_conversion_paths(src, dst, overwrite)
    olmoe, info = OlmoeForCausalLM.from_pretrained(src, output_loading_info=True, ignore_mismatched_sizes=True)
    bad = {k: sorted(map(str, info[k])) for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if info[k]}
    if bad:
        raise ValueError(f"the OLMoE checkpoint {src} does not hold every weight its config describes "
                         f"(transformers would leave them random): "
                         + "; ".join(f"{k}: {v[:6]}{' ...' if len(v) > 6 else ''}" for k, v in bad.items()))
    model = from_olmoe(olmoe)
    has_tokenizer = any((src / name).is_file() for name in _TOKENIZER_FILES)
    tokenizer = AutoTokenizer.from_pretrained(src) if has_tokenizer else None  # a broken tokenizer raises
    card = ModelCardInfo(path=str(dst), source=f"converted from the OLMoE checkpoint `{src}` (arXiv 2409.02060) by "
                         "`python -m hizoo.models.convert_olmoe`; every weight copied from an OLMoE tensor and verified")
    with atomic_directory(dst) as tmp:
        # the OLMoE config's special tokens, agreeing with its tokenizer's; left padding, the context length
        export_pretrained(model, tmp, tokenizer, card)
        written = _verify_saved(model, tmp)
    return written


def _verify_saved(model, directory: Path) -> int:
    """Every weight of ``model`` (the tied lm_head aside) is in ``directory``'s safetensors files, equal, and
    nothing else is; read one tensor at a time."""
    from safetensors import safe_open

    expected = model.state_dict()
    if model.config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    seen = set()
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                if name not in expected or not torch.equal(f.get_tensor(name), expected[name].cpu()):
                    raise ValueError(f"written file {file.name} holds {name!r}, which is not the converted weight")
                seen.add(name)
    if seen != set(expected):
        raise ValueError(f"written files lack {sorted(set(expected) - seen)[:6]}")
    return len(seen)
