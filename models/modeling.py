"""The hizoo causal language model, top to bottom.

token ids -> embedding -> expand into n residual streams -> L blocks -> final RMSNorm and reduction of the
streams (Σ_s norm(H_s), or norm(Σ_s H_s) with ``stream_reduce="sum_norm"``) -> lm_head

Each block has two branches, attention and feed-forward (dense SwiGLU or MoE), each behind its own
residual connection (``models/hyper_connections.py``; with ``residual="none"`` that is the plain
pre-norm residual x + F(norm(x))). Attention kernels and masks: ``models/attention.py`` (transformers' attention
interface and mask utilities); RoPE: ``models/rope.py``; the loss is transformers' causal-LM loss plus the
routers' losses (``HizooForCausalLM.forward``); the HF Trainer's router-state callback: ``models/hf_trainer.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from safetensors import SafetensorError
from torch import Tensor, nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import MoeCausalLMOutputWithPast, MoeModelOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from ..kernels import GroupedExperts
from ..routing import Router, RoutingResult, recompute_aware
from .attention import Attention, RMSNorm, causal_attention_mask, create_masks_for_generate
from .configuration import HizooConfig
from .files import check_loaded_keys, unreadable_safetensors
from .hyper_connections import StreamExpansion, reduce_streams, residual_streams
from .inputs import IGNORE_INDEX, check_inputs
from .mlp import SwiGLU
from .moe import MoEFeedForward
from .rope import HizooRotaryEmbedding

# transformers' loss keywords: consumed by HizooForCausalLM's loss (and checked with the inputs), never by attention
LOSS_KWARGS = ("num_items_in_batch", "shift_labels", "ignore_index")


class HizooBlock(GradientCheckpointingLayer):
    """Pre-norm block: attention branch, then feed-forward branch, each behind its residual connection.

    Gradient checkpointing (transformers' ``activation_checkpointing_enable``/``gradient_checkpointing_enable``)
    runs the block through the checkpoint function transformers gives it, wrapped by ``routing.recompute_aware``:
    the block's router knows when backward replays its forward and leaves its state alone then."""

    @property
    def _gradient_checkpointing_func(self):
        """What ``GradientCheckpointingLayer`` calls to checkpoint this block: the function transformers set, marking
        the router's recompute."""
        return recompute_aware(self._checkpoint_fn, self)

    @_gradient_checkpointing_func.setter
    def _gradient_checkpointing_func(self, checkpoint_fn) -> None:
        # Reentrant checkpointing tracks only the tensors a block returns at top level; the router losses leave an
        # MoE block inside its RoutingResult, so they would lose their gradient without a word: refused here.
        if self.is_moe and getattr(checkpoint_fn, "keywords", {}).get("use_reentrant") is True:
            raise ValueError(
                "activation checkpointing with use_reentrant=True is not supported for MoE layers: the router "
                "losses leave the block inside its RoutingResult, which reentrant checkpointing does not track, so "
                "they would get no gradient; use activation_checkpointing_enable() (non-reentrant, transformers' "
                "default) or activation_checkpointing_kwargs={'use_reentrant': False}")
        self._checkpoint_fn = checkpoint_fn

    def __init__(self, config: HizooConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.attn_conn = residual_streams(config, layer_idx, branch="attn")
        self.attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = Attention(config, layer_idx)
        self.ffn_conn = residual_streams(config, layer_idx, branch="ffn")
        self.ffn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.is_moe = config.is_moe_layer(layer_idx)
        self.ffn = MoEFeedForward(config) if self.is_moe else SwiGLU(config.hidden_size, config.intermediate_size)

    def forward(
        self, streams: Tensor, position_embeddings: tuple[Tensor, Tensor], attention_mask=None,
        cache: Cache | None = None, **kwargs,
    ) -> tuple[Tensor, RoutingResult | None, dict]:
        """streams [B, S, n, d] -> (streams [B, S, n, d], routing of the MoE branch or None, connection contexts).
        ``kwargs`` go to the attention kernel (transformers' attention keywords)."""
        h, attn_ctx = self.attn_conn.read(streams)  # [B, S, d]
        attn_out, _ = self.attn(self.attn_norm(h), position_embeddings, attention_mask, cache, **kwargs)
        streams = self.attn_conn.write(streams, attn_out, attn_ctx)

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
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # The input checks read values on the host and the routers update state in training forwards: torch.compile
    # works with graph breaks there (tests/models/test_compile.py), but not with fullgraph=True.
    _can_compile_fullgraph = False
    # transformers' output capturing (capture_outputs): attention weights are recorded from each Attention module
    # (output_attentions=True, eager attention). Hidden states and router logits are hizoo's own (Σ_s H_s per layer;
    # the routers' RoutingResult), returned by the forward itself.
    _can_record_outputs = {"attentions": OutputRecorder(Attention, index=1)}

    def create_masks_for_generate(self, config, inputs_embeds, attention_mask, cache, position_ids=None, **kwargs):
        """The mask ``generate`` prepares for a static cache: the same rule as the forward (``models/attention.py``)."""
        return create_masks_for_generate(config, inputs_embeds, attention_mask, cache, position_ids, **kwargs)

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
        if isinstance(module, HizooRotaryEmbedding):  # transformers rebuilds its inv_freq buffers (meta-device loads)
            super()._init_weights(module)
            return
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
    """``ce_loss``: the next-token cross-entropy (transformers' causal-LM loss); ``aux_losses``: each named router
    loss summed over layers (already scaled by its coefficient); ``aux_loss``: their sum. ``loss`` is ``ce_loss``
    alone in evaluation (``exp(loss)`` is the perplexity) and ``ce_loss + aux_loss`` when training or when
    ``output_router_logits=True`` (OLMoE's convention), see ``HizooForCausalLM.forward``."""

    ce_loss: Tensor | None = None
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
        self.rotary_emb = HizooRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    @capture_outputs
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | int | list[int] | None = None,
        output_diagnostics: bool = False,
        labels: Tensor | None = None,
        **kwargs,
    ) -> HizooModelOutput:
        """transformers' conventions: ``cache`` (the old name ``past_key_values`` still works, with transformers'
        FutureWarning), ``return_dict=False`` for a tuple, ``output_attentions`` / ``output_hidden_states`` from the
        keyword or else from the config; ``output_hidden_states`` may also select layers by index (an int or a
        list, negative from the end), the others then None. ``attention_mask`` is 2-D [B, past + S] of 0/1, or a mask
        already in the attention kernel's form (4-D or BlockMask). ``labels`` and the loss keywords
        (``shift_labels``, ``ignore_index``, ``num_items_in_batch``) are only checked here, with the other inputs in
        the same single device sync (``models/inputs.py``); the loss is HizooForCausalLM's."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        loss_kwargs = {k: kwargs.pop(k) for k in LOSS_KWARGS if k in kwargs}
        if use_cache is None:  # a training forward has no use for a KV cache
            use_cache = self.config.use_cache and not self.training
        if use_cache and cache is None and not (self.gradient_checkpointing and self.training):
            cache = DynamicCache(config=self.config)
        past_len = cache.get_seq_length() if cache is not None else 0
        padded = check_inputs(self.config, input_ids=input_ids, inputs_embeds=inputs_embeds,
                              attention_mask=attention_mask, position_ids=position_ids, labels=labels,
                              past_len=past_len, **loss_kwargs)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        B, S, _ = inputs_embeds.shape
        given_position_ids = position_ids
        if position_ids is None:
            if padded:  # left padding: count real tokens only (as generate does)
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -S:]
            else:
                position_ids = torch.arange(past_len, past_len + S, device=inputs_embeds.device)[None].expand(B, S)
        mask = causal_attention_mask(self.config, inputs_embeds, attention_mask, cache,
                                     given_position_ids if attention_mask is None else None, padded)
        position_embeddings = self.rotary_emb(inputs_embeds, position_ids)  # (cos, sin) [B, S, hd]

        hidden_wanted = self._hidden_state_indices(output_hidden_states)
        streams = self.expand(inputs_embeds)  # [B, S, n, d]
        all_hidden, routing, diagnostics = [], [], []
        for i, layer in enumerate(self.layers):
            if i in hidden_wanted:  # the residual entering each layer: Σ_s H_s (n = 1: the plain model's x)
                all_hidden.append(streams.sum(dim=-2))
            elif hidden_wanted:
                all_hidden.append(None)
            streams, layer_routing, ctx = layer(streams, position_embeddings, mask, cache=cache, **kwargs)
            routing.append(layer_routing)
            if output_diagnostics:
                diagnostics.append({**ctx, "streams": streams})
        hidden = reduce_streams(streams, self.norm, self.config.stream_reduce)  # [B, S, d], what lm_head reads
        if hidden_wanted:
            all_hidden.append(hidden if len(self.layers) in hidden_wanted else None)
        return HizooModelOutput(
            last_hidden_state=hidden,
            cache=cache if use_cache else None,
            hidden_states=tuple(all_hidden) if hidden_wanted else None,
            router_logits=tuple(r.router_logits for r in routing if r is not None) or None,
            routing=tuple(routing),
            diagnostics=tuple(diagnostics) if output_diagnostics else None,
        )

    def _hidden_state_indices(self, output_hidden_states) -> frozenset[int]:
        """Which of the L + 1 hidden states to return: all for True, none for False, or the given index(es)."""
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        n = len(self.layers) + 1
        if isinstance(output_hidden_states, bool):
            return frozenset(range(n)) if output_hidden_states else frozenset()
        selected = [output_hidden_states] if isinstance(output_hidden_states, int) else list(output_hidden_states)
        if any(isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n for i in selected):
            raise ValueError(f"output_hidden_states={output_hidden_states!r} must be True, False, or indices in "
                             f"[-{n}, {n}) of the {n} hidden states (embedding output and each layer's output)")
        return frozenset(i % n for i in selected)


class HizooForCausalLM(HizooPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

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

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | int | list[int] | None = None,
        output_router_logits: bool | None = None,
        output_diagnostics: bool = False,
        logits_to_keep: int | Tensor = 0,
        **kwargs,
    ) -> HizooCausalLMOutput:
        """Causal-LM forward with transformers' loss (``self.loss_function``, i.e. ``ForCausalLMLoss``).

        ``labels`` [B, S] are the input ids themselves (shifted inside the loss); ``ignore_index`` (default -100)
        marks positions that are not targets. ``shift_labels`` [B, S], already shifted (e.g. by sequence
        parallelism), replace ``labels``. ``num_items_in_batch`` (passed by the HF Trainer) makes the CE a sum over
        this batch divided by the target count of the whole accumulation window, so accumulated gradients equal
        those of one large batch.

        ``loss`` (OLMoE's convention): ``ce_loss`` alone in evaluation, so ``exp(loss)`` is the perplexity;
        ``ce_loss + aux_loss`` when training or when ``output_router_logits`` (keyword, else the config) is True.
        The router losses are per-batch means; with ``num_items_in_batch`` they enter with this batch's share of the
        window's targets (its target count / ``num_items_in_batch``), so over the window they add up to the
        token-weighted mean of the micro-batches' router losses, as a plain average over equal micro-batches would.
        ``ce_loss``, ``aux_loss`` and ``aux_losses`` are always returned unweighted (never recompose ``loss``).
        Bad inputs raise ``ValueError`` (``models/inputs.py``), among them labels that leave no target token."""
        loss_kwargs = {k: kwargs.pop(k) for k in LOSS_KWARGS if k in kwargs}
        shift_labels = loss_kwargs.get("shift_labels")
        if labels is not None and not isinstance(logits_to_keep, Tensor) and logits_to_keep \
                and torch.is_tensor(labels) and logits_to_keep < labels.shape[-1]:
            raise ValueError(f"labels need the logits of every position; got logits_to_keep={logits_to_keep} "
                             f"for labels of shape {tuple(labels.shape)} (pass logits_to_keep=0)")
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
            inputs_embeds=inputs_embeds, use_cache=use_cache, output_hidden_states=output_hidden_states,
            output_diagnostics=output_diagnostics, labels=labels, return_dict=True, **loss_kwargs, **kwargs,
        )
        logits = self.lm_head(slice_logits_to_keep(out.last_hidden_state, logits_to_keep))  # [B, S, V]

        aux_losses: dict[str, Tensor] = {}
        for r in out.routing:
            for name, value in (r.aux_losses.items() if r is not None else ()):
                aux_losses[name] = aux_losses[name] + value if name in aux_losses else value
        aux_loss = torch.stack(list(aux_losses.values())).sum() if aux_losses else None

        output_router_logits = (
            output_router_logits if output_router_logits is not None else self.config.output_router_logits)
        ce_loss = loss = None
        if labels is not None or shift_labels is not None:
            ce_loss = self.loss_function(logits, labels, self.config.vocab_size, **loss_kwargs)
            loss = ce_loss
            if aux_loss is not None and (self.training or output_router_logits):
                loss = ce_loss + self._router_loss_share(labels, loss_kwargs) * aux_loss.to(ce_loss.device)
        return HizooCausalLMOutput(
            loss=loss,
            ce_loss=ce_loss,
            aux_loss=aux_loss,
            aux_losses=aux_losses or None,
            logits=logits,
            cache=out.cache,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            router_logits=out.router_logits if output_router_logits else None,
            routing=out.routing,
            diagnostics=out.diagnostics,
        )

    @staticmethod
    def _router_loss_share(labels: Tensor | None, loss_kwargs: dict) -> Tensor | float:
        """1, or with ``num_items_in_batch`` this batch's targets over the window's (the Trainer counts them the same
        way: ``shift_labels``, else ``labels[..., 1:]``, that are not ``ignore_index``)."""
        num_items = loss_kwargs.get("num_items_in_batch")
        if num_items is None:
            return 1.0
        targets = loss_kwargs.get("shift_labels")
        targets = targets if targets is not None else labels[..., 1:]
        local = (targets != loss_kwargs.get("ignore_index", IGNORE_INDEX)).sum()
        return local / (num_items.to(local.device) if torch.is_tensor(num_items) else num_items)
