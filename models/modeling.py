"""The hizoo causal language model, top to bottom.

token ids -> embedding -> expand into n residual streams -> L blocks -> final RMSNorm and reduction of the
streams (Σ_s norm(H_s), or norm(Σ_s H_s) with ``stream_reduce="sum_norm"``) -> lm_head

Each block has two branches, attention and feed-forward (dense SwiGLU or MoE), each behind its own
residual connection (``models/hyper_connections.py``; with ``residual="none"`` that is the plain
pre-norm residual x + F(norm(x))).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import Tensor, nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import MoeCausalLMOutputWithPast, MoeModelOutputWithPast

from ..kernels import GroupedExperts
from ..routing import Router, RoutingResult
from .configuration import HizooConfig
from .files import check_loaded_keys, unreadable_safetensors
from .hyper_connections import ResidualStreams, StreamExpansion, reduce_streams
from .inputs import check_inputs
from .mlp import SwiGLU
from .moe import MoEFeedForward


class RMSNorm(nn.Module):
    """x / rms(x) · w, computed in fp32 (Zhang & Sennrich 2019)."""

    def __init__(self, size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rotary_cos_sin(position_ids: Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """RoPE (Su et al. 2021) in the rotate-half layout: position_ids [B, S] -> cos, sin [B, 1, S, head_dim]."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim)
    freqs = position_ids.float()[..., None] * inv_freq  # [B, S, hd/2]
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # [B, 1, S, hd]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    """Multi-head attention with GQA and RoPE through ``F.scaled_dot_product_attention``.

    ``qk_norm`` is OLMoE's: RMSNorm over the whole q (and k) projection, before splitting into heads.
    """

    def __init__(self, config: HizooConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = (
            config.num_attention_heads, config.num_key_value_heads, config.head_dim)
        self.rope_theta = config.rope_theta
        self.dropout = config.attention_dropout
        d, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=bias)
        self.o_proj.writes_residual = True  # depth-scaled init under init_scheme="switch" (_init_weights)
        self.q_norm = RMSNorm(self.n_heads * self.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(self.n_kv_heads * self.head_dim, config.rms_norm_eps) if config.qk_norm else None

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, cache: Cache | None) -> Tensor:
        B, S, _ = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(B, S, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, S, hd]
        k = k.view(B, S, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, S, hd]
        v = v.view(B, S, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # [B, Hkv, S_past + S, hd]
        out = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=mask,
            is_causal=mask is None and S > 1,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )  # [B, H, S, hd]
        return self.o_proj(out.transpose(1, 2).reshape(B, S, -1))


class HizooBlock(GradientCheckpointingLayer):
    """Pre-norm block: attention branch, then feed-forward branch, each behind its residual connection."""

    def __init__(self, config: HizooConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.attn_conn = ResidualStreams(config, layer_idx, branch="attn")
        self.attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = Attention(config, layer_idx)
        self.ffn_conn = ResidualStreams(config, layer_idx, branch="ffn")
        self.ffn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.is_moe = config.is_moe_layer(layer_idx)
        self.ffn = MoEFeedForward(config) if self.is_moe else SwiGLU(config.hidden_size, config.intermediate_size)

    def forward(
        self, streams: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None = None, cache: Cache | None = None,
    ) -> tuple[Tensor, RoutingResult | None, dict]:
        """streams [B, S, n, d] -> (streams [B, S, n, d], routing of the MoE branch or None, connection contexts)."""
        h, attn_ctx = self.attn_conn.read(streams)  # [B, S, d]
        streams = self.attn_conn.write(streams, self.attn(self.attn_norm(h), cos, sin, mask, cache), attn_ctx)

        h, ffn_ctx = self.ffn_conn.read(streams)
        routing = None
        if self.is_moe:
            out, routing = self.ffn(self.ffn_norm(h))
        else:
            out = self.ffn(self.ffn_norm(h))
        streams = self.ffn_conn.write(streams, out, ffn_ctx)
        return streams, routing, {"attn": attn_ctx, "ffn": ffn_ctx}


class HizooPreTrainedModel(PreTrainedModel):
    config_class = HizooConfig
    config: HizooConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["HizooBlock"]
    _supports_sdpa = True
    _can_compile_fullgraph = False

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, strict: bool = True, **kwargs):
        """transformers' ``from_pretrained``, strict about the weights: a weight the model needs that the files do
        not hold (it would start random), a weight in the files the model has no place for, or one of another
        shape raises ``ValueError`` listing them, e.g. when the config's ``num_hidden_layers`` or ``residual`` no
        longer match the saved weights. The tied ``lm_head`` and non-persistent buffers are not weights the files
        must hold. ``strict=False`` restores transformers' behaviour (a load report, missing weights freshly
        initialized); ``ignore_mismatched_sizes=True`` allows shape mismatches only; ``output_loading_info=True``
        still returns ``(model, loading_info)``."""
        wants_info = kwargs.pop("output_loading_info", False)
        allow_mismatched = kwargs.pop("ignore_mismatched_sizes", False)
        try:  # mismatches come back in the loading info (and are raised below) instead of as transformers' error
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *model_args, output_loading_info=True,
                ignore_mismatched_sizes=True if strict else allow_mismatched, **kwargs)
        except SafetensorError as err:
            raise ValueError(f"{unreadable_safetensors(pretrained_model_name_or_path)} ({err})") from err
        if strict:
            model.check_loaded_keys(info["missing_keys"], info["unexpected_keys"],
                                    () if allow_mismatched else info["mismatched_keys"], pretrained_model_name_or_path)
        return (model, info) if wants_info else model

    def save_pretrained(self, save_directory, *args, model_card=None, **kwargs):
        """transformers' ``save_pretrained``, self-contained: the folder also gets the modeling code generated from
        hizoo, ``auto_map`` (so ``from_pretrained(..., trust_remote_code=True)`` loads it without hizoo), the
        config's special-token ids in the generation config, and README.md, the model card; ``model_card``:
        ``ModelCardInfo`` facts for it (training tokens, validation perplexity, ...) or ``False`` for none.
        (``models/export.py``)"""
        from .export import save_pretrained_self_contained

        return save_pretrained_self_contained(self, super().save_pretrained, save_directory, *args,
                                              model_card=model_card, **kwargs)

    def check_loaded_keys(self, missing, unexpected, mismatched, source, hint: str | None = None) -> None:
        """Raise ``ValueError`` naming ``source`` when a load left weights ``missing`` (names the model needs),
        ``unexpected`` (names the files hold) or ``mismatched`` ((name, shape in the files, shape in the model));
        ``hint`` replaces the closing advice. A missing ``lm_head.weight`` is fine when it is tied to the
        embedding. (``models/files.py``)"""
        tied = set(self._tied_weights_keys or {}) if self.config.tie_word_embeddings else set()
        check_loaded_keys(self, set(missing) - tied, unexpected, mismatched, source, hint)

    def _init_weights(self, module: nn.Module) -> None:
        """Initialize every parameter; ``config.init_scheme`` picks the rule for the weight matrices.

        ``"normal"``: Linear, Embedding and expert weights N(0, initializer_range²); the router
        N(0, router_init_std²) when that is set.

        ``"switch"``: the Hi-MoE reference's initialization with ``use_switch_tfm_init`` (its ``GPT.__init__`` and
        ``_init_weights``; Switch Transformer, Sec. 2.3, scale s = ``switch_init_scale``):
          - every Linear (q/k/v, dense and shared-expert gate/up, lm_head), the router and the experts' ``w13``:
            truncated normal with σ = √(s / fan_in), cut at ±2σ (fan_in = the input width, d for the router);
          - the projections that write into the residual stream (attention ``o_proj``, ``down_proj``, the
            experts' ``w2``): N(0, (initializer_range / √(2L))²), the GPT-2 scaled init the reference gives its
            ``c_proj`` weights after the Switch init;
          - the token embedding: N(0, initializer_range²) as the reference's ``nn.Embedding``, or, when tied to
            lm_head (the reference ties them, and lm_head's init is applied last), lm_head's Switch init.
          ``router_init_std``, when set, still overrides the router's init.

        Both schemes: norms 1; router buffers and scales, and the hyper-connection coefficients, by their
        modules' ``reset_parameters``. The residual projections carry ``writes_residual = True`` (set where they
        are built): transformers skips modules without parameters of their own, so a parent cannot re-init them.
        """
        config = self.config
        std = config.initializer_range
        switch = config.init_scheme == "switch"
        residual_std = std / (2 * config.num_hidden_layers) ** 0.5

        def switch_init_(weight: Tensor, fan_in: int) -> None:  # truncated normal, σ = √(s / fan_in), at ±2σ
            sigma = (config.switch_init_scale / fan_in) ** 0.5
            init.trunc_normal_(weight, mean=0.0, std=sigma, a=-2 * sigma, b=2 * sigma)

        if isinstance(module, GroupedExperts):
            if switch:
                switch_init_(module.w13, fan_in=module.w13.shape[-2])  # [E, d, 2f]: fan_in d
                init.normal_(module.w2, mean=0.0, std=residual_std)
            else:
                init.normal_(module.w13, mean=0.0, std=std)
                init.normal_(module.w2, mean=0.0, std=std)
        elif isinstance(module, Router):
            if config.router_init_std is not None:
                init.normal_(module.weight, mean=0.0, std=config.router_init_std)
            elif switch:
                switch_init_(module.weight, fan_in=module.weight.shape[-1])  # [E, d]: fan_in d
            else:
                init.normal_(module.weight, mean=0.0, std=std)
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)
        elif switch and isinstance(module, nn.Linear):
            if getattr(module, "writes_residual", False):  # attention o_proj, SwiGLU down_proj
                init.normal_(module.weight, mean=0.0, std=residual_std)
            else:
                switch_init_(module.weight, fan_in=module.in_features)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif switch and isinstance(module, nn.Embedding):
            if config.tie_word_embeddings:
                switch_init_(module.weight, fan_in=module.embedding_dim)
            else:
                init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, (nn.Linear, nn.Embedding)):
            super()._init_weights(module)
        elif hasattr(module, "reset_parameters") and any(True for _ in module.parameters(recurse=False)):
            module.reset_parameters()


def build_attention_mask(attention_mask: Tensor | None, q_len: int, past_len: int,
                         padded: bool | None = None) -> Tensor | None:
    """Boolean [B, 1, q_len, past_len + q_len] mask (True = may attend), or None when SDPA's own causal
    mask (no padding, no past) or no mask at all (one new token, no padding) is exact. ``padded``: whether
    ``attention_mask`` has a 0, when the caller knows it already (``check_inputs`` does); read here otherwise."""
    if attention_mask is not None and attention_mask.ndim != 2:
        raise ValueError(f"attention_mask must be 2-D [batch, seq] of 0/1; got shape {tuple(attention_mask.shape)}")
    if padded is None:
        padded = attention_mask is not None and not bool(attention_mask.all())
    no_padding = not padded
    if no_padding and (past_len == 0 or q_len == 1):
        return None
    kv_len = past_len + q_len
    device = attention_mask.device if attention_mask is not None else None
    q_pos = torch.arange(past_len, kv_len, device=device)[:, None]  # [q, 1]
    kv_pos = torch.arange(kv_len, device=device)[None, :]  # [1, kv]
    mask = (kv_pos <= q_pos)[None, None]  # [1, 1, q, kv]
    if attention_mask is not None:
        mask = mask & attention_mask[:, None, None, -kv_len:].bool()
    # A padding query would see no key at all (SDPA then returns NaN); let every query see itself.
    return mask | (kv_pos == q_pos)[None, None]


@dataclass
class HizooModelOutput(MoeModelOutputWithPast):
    """``routing``: per-layer RoutingResult (None for dense layers); ``diagnostics``: per-layer dicts with the
    streams after the block and each connection's context, for ``hizoo.analysis``. ``hidden_states``: the
    residual entering each layer summed over streams (Σ_s H_s; un-normalized, as a plain model's residual x),
    then ``last_hidden_state``, the reduced output lm_head reads (``reduce_streams``)."""

    routing: tuple[RoutingResult | None, ...] | None = None
    diagnostics: tuple[dict, ...] | None = None


@dataclass
class HizooCausalLMOutput(MoeCausalLMOutputWithPast):
    """``aux_losses``: each named aux loss summed over layers (already scaled); ``aux_loss`` is their sum and
    is included in ``loss``."""

    aux_losses: dict[str, Tensor] | None = None
    routing: tuple[RoutingResult | None, ...] | None = None
    diagnostics: tuple[dict, ...] | None = None


class HizooModel(HizooPreTrainedModel):
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\."]  # the base model of a HizooForCausalLM checkpoint

    def __init__(self, config: HizooConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.expand = StreamExpansion(config)
        self.layers = nn.ModuleList(HizooBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_diagnostics: bool = False,
        past_key_values: Cache | None = None,
        labels: Tensor | None = None,
        **kwargs,
    ) -> HizooModelOutput:
        """``labels`` are only checked here, with the other inputs in the same single device sync
        (``models/inputs.py``); the loss is HizooForCausalLM's."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        cache = cache if cache is not None else past_key_values
        if use_cache is None:  # a training forward has no use for a KV cache
            use_cache = self.config.use_cache and not self.training
        if use_cache and cache is None and not (self.gradient_checkpointing and self.training):
            cache = DynamicCache(config=self.config)
        past_len = cache.get_seq_length() if cache is not None else 0
        padded = check_inputs(self.config, input_ids=input_ids, inputs_embeds=inputs_embeds,
                              attention_mask=attention_mask, position_ids=position_ids, labels=labels,
                              past_len=past_len)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        B, S, _ = inputs_embeds.shape
        if position_ids is None:
            if attention_mask is not None:  # left padding: count real tokens only
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -S:]
            else:
                position_ids = torch.arange(past_len, past_len + S, device=inputs_embeds.device)[None].expand(B, S)
        mask = build_attention_mask(attention_mask, S, past_len, padded)
        cos, sin = rotary_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta, inputs_embeds.dtype)

        streams = self.expand(inputs_embeds)  # [B, S, n, d]
        all_hidden, routing, diagnostics = [], [], []
        for layer in self.layers:
            if output_hidden_states:  # the residual entering each layer: Σ_s H_s (n = 1: the plain model's x)
                all_hidden.append(streams.sum(dim=-2))
            streams, layer_routing, ctx = layer(streams, cos, sin, mask, cache=cache)
            routing.append(layer_routing)
            if output_diagnostics:
                diagnostics.append({**ctx, "streams": streams})
        hidden = reduce_streams(streams, self.norm, self.config.stream_reduce)  # [B, S, d], what lm_head reads
        if output_hidden_states:
            all_hidden.append(hidden)
        return HizooModelOutput(
            last_hidden_state=hidden,
            cache=cache if use_cache else None,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            router_logits=tuple(r.router_logits for r in routing if r is not None) or None,
            routing=tuple(routing),
            diagnostics=tuple(diagnostics) if output_diagnostics else None,
        )


class HizooForCausalLM(HizooPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    # The loss is a per-batch mean and ignores transformers' `num_items_in_batch`: this tells the HF Trainer to
    # divide it by the accumulation steps itself (else gradients grow with gradient_accumulation_steps).
    accepts_loss_kwargs = False

    def __init__(self, config: HizooConfig):
        super().__init__(config)
        self.model = HizooModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def from_olmoe(cls, olmoe_model, **config_overrides) -> "HizooForCausalLM":
        """Convert a ``transformers`` ``OlmoeForCausalLM``; same logits (see ``models/conversion.py``)."""
        from .conversion import from_olmoe

        return from_olmoe(olmoe_model, **config_overrides)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_router_logits: bool | None = None,
        output_diagnostics: bool = False,
        logits_to_keep: int = 0,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> HizooCausalLMOutput:
        """``labels`` [B, S] are the input ids themselves (shifted here); -100 is ignored. ``loss`` = CE + aux_loss.
        Bad inputs raise ``ValueError`` (``models/inputs.py``), among them labels that leave no target token."""
        if torch.is_tensor(labels) and logits_to_keep and logits_to_keep < labels.shape[-1]:
            raise ValueError(f"labels need the logits of every position; got logits_to_keep={logits_to_keep} "
                             f"for labels of shape {tuple(labels.shape)} (pass logits_to_keep=0)")
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            cache=cache if cache is not None else past_key_values, inputs_embeds=inputs_embeds,
            use_cache=use_cache, output_hidden_states=output_hidden_states, output_diagnostics=output_diagnostics,
            labels=labels,
        )
        hidden = out.last_hidden_state if not logits_to_keep else out.last_hidden_state[:, -logits_to_keep:]
        logits = self.lm_head(hidden)  # [B, S, V]

        aux_losses: dict[str, Tensor] = {}
        for r in out.routing:
            for name, value in (r.aux_losses.items() if r is not None else ()):
                aux_losses[name] = aux_losses[name] + value if name in aux_losses else value
        aux_loss = torch.stack(list(aux_losses.values())).sum() if aux_losses else None

        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten().to(logits.device), ignore_index=-100
            )
            if aux_loss is not None:
                loss = loss + aux_loss
        output_router_logits = (
            output_router_logits if output_router_logits is not None else self.config.output_router_logits)
        return HizooCausalLMOutput(
            loss=loss,
            aux_loss=aux_loss,
            logits=logits,
            cache=out.cache,
            hidden_states=out.hidden_states,
            router_logits=out.router_logits if output_router_logits else None,
            aux_losses=aux_losses or None,
            routing=out.routing,
            diagnostics=out.diagnostics,
        )
