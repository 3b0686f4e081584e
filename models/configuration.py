"""HizooConfig: one typed config for every hizoo model, validated at construction.

Field names follow transformers' conventions so that a researcher who knows OLMoE, Mixtral or
DeepSeek-V3 configs can read it. Every bad value raises ``ValueError`` naming the field, the value
and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import math
import numbers
import types
import typing

from transformers import GenerationConfig, PreTrainedConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

# Each list of allowed values is defined once. Those of options that routing/ and kernels/ implement live there
# (their classes check their own arguments and cannot import models/); the model's own are defined here.
from ..kernels.experts import BACKENDS as EXPERTS_BACKENDS
from ..routing import ROUTER_NAMES as ROUTERS
from ..routing.base import CAPACITY_PRIORITIES, CAPACITY_RULES
from ..routing.himoe import HIMOE_GROUP_MASS, HIMOE_REG_FORMS, HIMOE_REG_SOURCES

FFN_KINDS = ("dense", "moe")
RESIDUALS = ("none", "hc", "mhc", "mhc_lite")
STREAM_INITS = ("copy", "lss", "rotate", "split", "perturb", "balanced_rotate")
STREAM_REDUCES = ("norm_sum", "sum_norm")
STREAM_STARTS = ("random", "cyclic")
INIT_SCHEMES = ("normal", "switch")  # models/modeling.py HizooPreTrainedModel._init_weights

# Fields whose value is one of a fixed set of names. Validation checks them; the typed LightningCLI config
# (models/config_fields.py) shows them as Literal choices, so a typo fails at parse time. Register a new choice
# field here to get both.
FIELD_CHOICES: dict[str, tuple[str, ...]] = {
    "hidden_act": ("silu",),
    "ffn": FFN_KINDS,
    "router": ROUTERS,
    "experts_backend": EXPERTS_BACKENDS,
    "himoe_reg_source": HIMOE_REG_SOURCES,
    "himoe_reg_form": HIMOE_REG_FORMS,
    "himoe_group_mass": HIMOE_GROUP_MASS,
    "residual": RESIDUALS,
    "stream_init": STREAM_INITS,
    "stream_reduce": STREAM_REDUCES,
    "stream_start": STREAM_STARTS,
    "capacity_rule": CAPACITY_RULES,
    "capacity_priority": CAPACITY_PRIORITIES,
    "init_scheme": INIT_SCHEMES,
}

# Float fields for which +inf is a meaningful value (every other float field must be finite; NaN never is).
INFINITE_ALLOWED = frozenset({"himoe_max_lambda_ratio"})

# RoPE kinds: hizoo's plain RoPE ("default") and the scaled ones computed by transformers' ROPE_INIT_FUNCTIONS
ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3", "longrope")

# The names DeepSeek-V3 (n_group, topk_group, n_shared_experts, first_k_dense_replace, n_routed_experts) and
# Mixtral / Qwen-MoE (num_local_experts) configs in transformers give to a hizoo field: accepted at construction
# (a config written for those models carries over) and readable as attributes; hizoo stores and saves its own name.
FIELD_ALIASES = {
    "n_group": "n_groups",
    "topk_group": "topk_groups",
    "n_shared_experts": "num_shared_experts",
    "first_k_dense_replace": "num_dense_layers",
    "n_routed_experts": "num_experts",
    "num_local_experts": "num_experts",
}


class HizooConfig(PreTrainedConfig):
    r"""Configuration of a hizoo causal language model.

    Architecture: pre-norm decoder with RMSNorm, RoPE, GQA attention (optional OLMoE-style qk-norm over
    the full projection width), SwiGLU feed-forward (``ffn="dense"``) or Mixture-of-Experts
    (``ffn="moe"``), and a residual that is either plain (``residual="none"``) or ``n_streams``
    hyper-connection streams (``"hc"``, ``"mhc"``, ``"mhc_lite"``).

    MoE: ``num_experts_per_tok`` is K in total; grouped routers pick k_g = K / ``topk_groups`` experts in
    each chosen group (``topk_groups`` defaults to ``n_groups``). Aux-loss coefficients are applied inside
    the routers, so ``RoutingResult.aux_losses`` are already scaled. Dense layers in an MoE model: the first
    ``num_dense_layers`` and every index in ``mlp_only_layers`` (Qwen3-MoE's name and meaning).

    Names from transformers' DeepSeek-V3 and Qwen3-MoE / Mixtral configs are accepted for the same settings
    (``FIELD_ALIASES``): ``n_group`` = ``n_groups``, ``topk_group`` = ``topk_groups``, ``n_shared_experts`` =
    ``num_shared_experts``, ``first_k_dense_replace`` = ``num_dense_layers``, ``n_routed_experts`` and
    ``num_local_experts`` = ``num_experts``. They are renamed at construction (``config.n_group`` reads
    ``n_groups``; the saved config.json holds hizoo's names); giving both spellings with different values
    raises ``ValueError``.

    RoPE: ``rope_parameters`` is transformers' dict (``{"rope_type": "default", "rope_theta": 10000.0}`` when
    not given, built from ``rope_theta``); scaled RoPE as in Llama/Qwen/DeepSeek configs uses transformers'
    ``ROPE_INIT_FUNCTIONS``: ``{"rope_type": "linear" | "dynamic", "factor": f}``, ``"yarn"`` (``factor``,
    ``original_max_position_embeddings``, optional ``beta_fast``/``beta_slow``/``attention_factor``),
    ``"llama3"`` (``factor``, ``low_freq_factor``, ``high_freq_factor``, ``original_max_position_embeddings``),
    ``"longrope"``. ``rope_theta`` always equals ``rope_parameters["rope_theta"]``; the legacy ``rope_scaling``
    key is read as ``rope_parameters``.
    """

    model_type = "hizoo"
    keys_to_ignore_at_inference = ["cache"]
    attribute_map = dict(FIELD_ALIASES)

    # --- transformer ---
    vocab_size: int = 32000
    hidden_size: int = 512
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    intermediate_size: int = 1408
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rope_parameters: dict | None = None  # transformers' RoPE dict (rope_type, rope_theta, scaling); see the docstring
    rms_norm_eps: float = 1e-5
    qk_norm: bool = False
    attention_bias: bool = False
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    # normal: N(0, initializer_range²) everywhere | switch: the Hi-MoE reference's use_switch_tfm_init (truncated
    # normal, std √(switch_init_scale / fan_in), at ±2 std; see HizooPreTrainedModel._init_weights)
    init_scheme: str = "normal"
    switch_init_scale: float = 0.1
    tie_word_embeddings: bool = False
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    # --- feed-forward / MoE ---
    ffn: str = "dense"
    num_dense_layers: int = 0  # leading layers kept dense in an MoE model (DeepSeek's first_k_dense_replace)
    mlp_only_layers: list[int] | None = None  # further dense layers of an MoE model, by index (Qwen3-MoE's name)
    moe_intermediate_size: int = 256
    num_experts: int = 32
    num_experts_per_tok: int = 8
    num_shared_experts: int = 0
    router: str = "topk"
    norm_topk_prob: bool = False
    n_groups: int = 1
    topk_groups: int | None = None
    routed_scaling_factor: float = 1.0
    router_aux_loss_coef: float = 0.01
    router_z_loss_coef: float = 0.001
    router_init_std: float | None = None  # a std (not a Switch scale); None: the init_scheme's rule for the router
    router_global_balance: bool = False  # load-balance statistics over the global batch
    router_bias_update_rate: float = 1e-3  # loss-free balancing step γ (group_limited)
    seq_aux_loss_coef: float = 0.0  # DeepSeek-V3 sequence-wise balance loss α (group_limited)
    capacity_factor: float | None = None  # training forwards; None: dropless
    eval_capacity_factor: float | None = None  # eval forwards; None: the same as capacity_factor
    capacity_rule: str = "reference"  # reference: floor(K·cf·T/E) rounded up to even, >= min_capacity | ceil
    min_capacity: int = 4  # the reference rule's lower bound on an expert's capacity
    capacity_priority: str = "slot"  # slot: all first choices before second choices (reference) | token
    experts_backend: str = "auto"
    output_router_logits: bool = False

    # --- Hi-MoE (defaults of the reference implementation) ---
    himoe_tau: float = 0.01
    himoe_ema_beta: float = 0.9
    himoe_temperature: float = 1.0
    himoe_lambda_intra: float = 0.1
    himoe_lambda_inter: float = 0.05
    himoe_reg_source: str = "raw"
    himoe_reg_form: str = "square"
    himoe_group_mass: str = "dense"
    himoe_intra_warmup_steps: int = 0
    # Guard: λ1 > λ2 makes the square regularizer prefer one expert per token (routing/himoe.py); above this
    # ratio λ1/λ2 the config is rejected (the reference uses 2). Set float("inf") (YAML: .inf) to study the regime.
    himoe_max_lambda_ratio: float = 10.0

    # --- residual streams (hyper-connections; models/hyper_connections.py) ---
    residual: str = "none"  # none | hc (Zhu et al. 2024) | mhc (DeepSeek 2025) | mhc_lite (permutation mixture)
    n_streams: int = 1
    hc_dynamic: bool = True  # hc only: the token-dependent terms s ⊙ tanh(norm(H) W) (Eqs. 10-13; the official stream-collapse HC is always dynamic); False: static HC. mhc is always dynamic
    stream_init: str = "copy"  # copy | lss | rotate | split | perturb | balanced_rotate (models/stream_init.py)
    stream_init_angle: float = 0.2  # θ of stream_init="balanced_rotate", radians in (0, π/2)
    # the embedding is multiplied by this in every stream at the expansion (n = 1: the plain residual's input);
    # 1.0 is the model of the papers, other values test how the embedding's weight against the branches matters
    stream_embedding_scale: float = 1.0
    # output: Σ_s norm(H_s) (norm_sum, the official stream-collapse model) | norm(Σ_s H_s) (sum_norm); n = 1: norm(H)
    stream_reduce: str = "norm_sum"
    # the stream each connection reads (and, for mHC, writes) at init: random (as the official code; drawn from
    # stream_start_seed, reproducibly per connection) | cyclic ((2·layer + branch) mod n)
    stream_start: str = "random"
    stream_start_seed: int = 0
    mhc_sinkhorn_iters: int = 20
    mhc_alpha_init: float = 0.01  # α_pre = α_post = α_res at init
    hc_recompute: bool = False  # recompute each connection's coefficients and mixing in backward

    def __post_init__(self, **kwargs):
        # kwargs are the keys that are not fields: transformers' own (architectures, dtype, auto_map, ...)
        # pass through to PreTrainedConfig; anything else is a misspelled or removed field.
        _reject_unknown_keys(type(self), kwargs)
        _check_field_types(self)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None and self.num_attention_heads > 0:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.topk_groups is None:
            self.topk_groups = self.n_groups
        super().__post_init__(**kwargs)  # builds rope_parameters (transformers' standardization) from rope_theta
        if isinstance(self.rope_parameters, dict) and "rope_theta" in self.rope_parameters:
            self.rope_theta = self.rope_parameters["rope_theta"]
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field. Called at construction; call again after edits."""
        _check_field_types(self)
        for name, allowed in FIELD_CHOICES.items():
            _check_choice(self, name, allowed)
        self._validate_transformer()
        self._validate_moe()
        self._validate_residual()

    def _validate_transformer(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "intermediate_size", "max_position_embeddings"):
            _check_positive_int(self, name)
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size={self.hidden_size} must be divisible by num_attention_heads={self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"num_key_value_heads={self.num_key_value_heads} must divide num_attention_heads="
                f"{self.num_attention_heads} (grouped-query attention)"
            )
        _check_positive_int(self, "head_dim")
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim={self.head_dim} must be even (RoPE rotates pairs of channels)")
        _check_positive(self, "rope_theta")
        self._validate_rope()
        _check_positive(self, "rms_norm_eps")
        _check_positive(self, "initializer_range")
        _check_positive(self, "switch_init_scale")
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(f"attention_dropout={self.attention_dropout} must be in [0, 1)")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            ids = value if isinstance(value, list) else [value]
            if any(i is not None and not 0 <= i < self.vocab_size for i in ids):
                raise ValueError(f"{name}={value} must be None or in [0, vocab_size={self.vocab_size})")

    def _validate_rope(self) -> None:
        rope = self.rope_parameters
        if not isinstance(rope, dict):
            raise ValueError(f"rope_parameters={rope!r} must be a dict such as {{'rope_type': 'yarn', 'factor': 4.0}}")
        rope_type = rope.get("rope_type")
        if rope_type not in ROPE_TYPES:
            raise ValueError(f"rope_parameters['rope_type']={rope_type!r} is not allowed; choose one of "
                             f"{', '.join(map(repr, ROPE_TYPES))} (per-layer-type RoPE dicts are not supported)")
        if rope_type != "default" and rope_type not in ROPE_INIT_FUNCTIONS:
            raise ValueError(f"rope_parameters['rope_type']={rope_type!r} is not provided by this transformers version")
        if rope.get("rope_theta") != self.rope_theta:
            raise ValueError(f"rope_theta={self.rope_theta} and rope_parameters['rope_theta']={rope.get('rope_theta')} "
                             f"must agree (set one of them)")
        if rope.get("partial_rotary_factor", 1.0) != 1.0:
            raise ValueError(f"rope_parameters['partial_rotary_factor']={rope['partial_rotary_factor']} is not "
                             f"supported: hizoo rotates the whole head (1.0)")
        factor = rope.get("factor")
        if rope_type != "default" and (isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor < 1):
            raise ValueError(f"rope_parameters['factor']={factor!r} must be a number >= 1 for rope_type={rope_type!r}")
        try:
            self.validate_rope()  # transformers' check of the keys each rope_type needs
        except KeyError as err:
            raise ValueError(f"rope_parameters={rope}: {err.args[0]}") from err

    def _validate_moe(self) -> None:
        for name in ("moe_intermediate_size", "num_experts", "num_experts_per_tok", "n_groups", "topk_groups"):
            _check_positive_int(self, name)
        for name in ("num_dense_layers", "num_shared_experts", "himoe_intra_warmup_steps"):
            _check_nonnegative_int(self, name)
        for name in ("router_aux_loss_coef", "router_z_loss_coef", "router_bias_update_rate", "seq_aux_loss_coef",
                     "himoe_tau", "himoe_lambda_intra", "himoe_lambda_inter"):
            _check_nonnegative(self, name)
        for name in ("routed_scaling_factor", "himoe_temperature", "himoe_max_lambda_ratio"):
            _check_positive(self, name)
        if self.router_init_std is not None:
            _check_positive(self, "router_init_std")
        if not 0.0 <= self.himoe_ema_beta < 1.0:
            raise ValueError(f"himoe_ema_beta={self.himoe_ema_beta} must be in [0, 1)")
        if self.router_global_balance and self.router != "topk":
            raise ValueError(f"router_global_balance=True is implemented for router='topk' only; got router={self.router!r}")
        for name, none_means in (("capacity_factor", "dropless"), ("eval_capacity_factor", "use capacity_factor")):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name}={value!r} must be None ({none_means}) or a number > 0")
        _check_nonnegative_int(self, "min_capacity")
        if self.ffn == "dense":
            return
        if self.num_dense_layers > self.num_hidden_layers:
            raise ValueError(
                f"num_dense_layers={self.num_dense_layers} must be <= num_hidden_layers={self.num_hidden_layers}"
            )
        self._validate_mlp_only_layers()
        E, K, G = self.num_experts, self.num_experts_per_tok, self.n_groups
        if K > E:
            raise ValueError(f"num_experts_per_tok={K} must be <= num_experts={E}")
        if self.router == "topk":
            if G != 1:
                raise ValueError(f"n_groups={G} is only used by grouped routers; router='topk' needs n_groups=1")
            return
        if E % G != 0:
            raise ValueError(f"n_groups={G} must divide num_experts={E} (experts form contiguous equal groups)")
        if self.topk_groups > G:
            raise ValueError(f"topk_groups={self.topk_groups} must be <= n_groups={G}")
        if self.router == "group_limited":
            if E // G < 2:
                raise ValueError(
                    f"router='group_limited' scores groups by their top-2 experts: num_experts={E} / n_groups={G} "
                    f"must be >= 2"
                )
            if K > self.topk_groups * (E // G):
                raise ValueError(
                    f"num_experts_per_tok={K} must be <= topk_groups={self.topk_groups} x experts per group "
                    f"{E // G} (router='group_limited' picks the top-K inside the kept groups)"
                )
            return
        if K % self.topk_groups != 0:
            raise ValueError(
                f"num_experts_per_tok={K} must be divisible by topk_groups={self.topk_groups} "
                f"(k_g = K / topk_groups experts are picked in each chosen group)"
            )
        k_g = K // self.topk_groups
        if k_g > E // G:
            raise ValueError(
                f"num_experts_per_tok={K} over topk_groups={self.topk_groups} gives k_g={k_g} experts per group, "
                f"more than the {E // G} experts in each of n_groups={G} groups"
            )
        lam1, lam2 = self.himoe_lambda_intra, self.himoe_lambda_inter
        if lam1 > self.himoe_max_lambda_ratio * lam2:
            raise ValueError(
                f"himoe_lambda_intra={lam1} is more than himoe_max_lambda_ratio={self.himoe_max_lambda_ratio} x "
                f"himoe_lambda_inter={lam2}: the intra term then pushes each token's mass onto one expert of one "
                f"group (groups collapse); keep the ratio <= {self.himoe_max_lambda_ratio} or raise "
                f"himoe_max_lambda_ratio deliberately"
            )

    def _validate_mlp_only_layers(self) -> None:
        layers = self.mlp_only_layers
        if layers is None:
            return
        if not isinstance(layers, (list, tuple)) or any(isinstance(i, bool) or not isinstance(i, int) for i in layers):
            raise ValueError(f"mlp_only_layers={layers!r} must be a list of layer indices (integers)")
        bad = [i for i in layers if not 0 <= i < self.num_hidden_layers]
        if bad:
            raise ValueError(f"mlp_only_layers={list(layers)} holds {bad}, outside the layers "
                             f"[0, num_hidden_layers={self.num_hidden_layers})")
        if len(set(layers)) != len(layers):
            raise ValueError(f"mlp_only_layers={list(layers)} repeats a layer index")

    def _validate_residual(self) -> None:
        _check_nonnegative_int(self, "stream_start_seed")
        angle = self.stream_init_angle
        if isinstance(angle, bool) or not isinstance(angle, (int, float)) or not 0.0 < angle < math.pi / 2:
            raise ValueError(f"stream_init_angle={angle!r} must be a number in (0, π/2) radians: the balanced rotation "
                             f"keeps Σ_s H_s = n·cos(θ)·x, which needs cos θ > 0 and θ ≠ 0 to break the symmetry")
        _check_positive_int(self, "n_streams")
        _check_positive_int(self, "mhc_sinkhorn_iters")
        _check_positive(self, "mhc_alpha_init")
        _check_positive(self, "stream_embedding_scale")  # finite: _check_field_types refuses inf and NaN
        if self.stream_init == "rotate" and self.hidden_size < 2:
            raise ValueError(f"stream_init='rotate' rotates channel pairs; hidden_size={self.hidden_size} must be >= 2")
        if self.stream_init == "balanced_rotate" and self.hidden_size % 2:
            raise ValueError(f"stream_init='balanced_rotate' rotates every channel in pairs; hidden_size="
                             f"{self.hidden_size} must be even")
        if self.residual == "none" and self.n_streams != 1:
            raise ValueError(f"n_streams={self.n_streams} needs residual='hc', 'mhc' or 'mhc_lite'; residual='none' has 1")
        if self.residual in ("mhc", "mhc_lite") and self.n_streams < 2:
            raise ValueError(
                f"residual='{self.residual}' with n_streams={self.n_streams}: a doubly stochastic mix of one stream "
                f"is the identity; use n_streams >= 2 or residual='none'"
            )
        if self.residual == "mhc_lite" and self.n_streams > 6:
            raise ValueError(
                f"residual='mhc_lite' mixes all n_streams! permutations; n_streams={self.n_streams} must be <= 6"
            )
        if self.residual == "none" and self.stream_init != "copy":
            raise ValueError(f"stream_init='{self.stream_init}' needs residual streams; residual='none' allows 'copy'")

    # ------------------------------------------------------------------ derived
    def is_moe_layer(self, layer_idx: int) -> bool:
        """MoE unless the model is dense, the layer is one of the first ``num_dense_layers`` or in ``mlp_only_layers``."""
        return (self.ffn == "moe" and layer_idx >= self.num_dense_layers
                and layer_idx not in (self.mlp_only_layers or ()))

    # ------------------------------------------------------------------ parameter and FLOP counts
    def num_parameters(self, active: bool = False) -> int:
        """Parameters of the model this config builds (``HizooForCausalLM``), counted from the config alone, so
        that a study, the model card and the throughput logging report one number, also for a model that is not
        built, sharded or built on another device. A tied ``lm_head`` counts once; every routed expert counts,
        on whichever expert-parallel rank it lives. ``active=True``: the parameters one token is computed
        with, i.e. of each MoE layer's ``num_experts`` routed experts only the ``num_experts_per_tok`` it goes
        to (the router, the shared experts and everything outside the experts count in full)."""
        d, n = self.hidden_size, self.n_streams
        q_width, kv_width = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        bias = self.attention_bias
        attention = d * (q_width + 2 * kv_width) + q_width * d + (q_width + 2 * kv_width + d if bias else 0)
        attention += q_width + kv_width if self.qk_norm else 0  # OLMoE's qk-norm over the full projections
        per_layer = 2 * d + attention + 2 * self._connection_parameters()  # the two pre-norms, attn and ffn
        total = 0
        for layer in range(self.num_hidden_layers):
            if not self.is_moe_layer(layer):
                ffn = 3 * d * self.intermediate_size  # SwiGLU gate, up, down
            else:
                E, K, expert = self.num_experts, self.num_experts_per_tok, 3 * d * self.moe_intermediate_size
                router = E * d + (E if self.router == "himoe" else 0)  # Hi-MoE's per-expert scale
                shared = 3 * d * self.num_shared_experts * self.moe_intermediate_size
                ffn = router + shared + (K if active else E) * expert
            total += per_layer + ffn
        embedding = self.vocab_size * d
        lm_head = 0 if self.tie_word_embeddings else self.vocab_size * d
        expansion = {"lss": n * d, "split": n * d, "rotate": n * (d // 2),
                     "balanced_rotate": n * (d // 2)}.get(self.stream_init, 0) if self.residual != "none" else 0
        return embedding + expansion + total + d + lm_head  # + the final norm

    def _connection_parameters(self) -> int:
        """Parameters of one residual-stream connection (models/hc.py, models/mhc.py); 0 for the plain residual."""
        d, n = self.hidden_size, self.n_streams
        if self.residual == "hc":
            static = n + n * n + n  # read, mix, write (Eqs. 10-13 of the HC paper, static part)
            dynamic = (n + 1) * d + d + 2 + d if self.hc_dynamic else 0  # projections, scales, norm gain
            return static + dynamic
        if self.residual in ("mhc", "mhc_lite"):
            mix = n * n if self.residual == "mhc" else math.factorial(n)  # Sinkhorn logits | permutation weights
            return n + n + mix + (2 * n + mix) * n * d + 3 + n * d  # biases, projection, α, norm gain
        return 0

    def flops_per_token(self, seq_len: int) -> float:
        """Model FLOPs per trained token, forward + backward (PaLM, Appendix B): 6·N + 12·L·H·Q·S.

        N counts the weights a token is multiplied with: attention projections, the FFN (in MoE layers only the
        K routed experts it goes to, the shared experts and the router), the LM head (the embedding lookup is no
        matmul). 12·L·H·Q·S is attention itself (QKᵀ and AV, 2·2·H·Q·S forward, twice that backward) with H heads
        of width Q over the training sequence length S, counted over the whole sequence as PaLM does (causal
        masking is not discounted). MoE routing overheads (sorting, gathers), norms and the residual-stream
        mixing are not counted."""
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
            raise ValueError(f"seq_len={seq_len!r} must be a positive int (the training sequence length)")
        d, L = self.hidden_size, self.num_hidden_layers
        attn = d * self.head_dim * (2 * self.num_attention_heads + 2 * self.num_key_value_heads)
        matmul = self.vocab_size * d  # lm_head (the embedding lookup costs no FLOPs)
        for layer in range(L):
            if self.is_moe_layer(layer):
                routed = self.num_experts_per_tok + self.num_shared_experts
                ffn = 3 * d * self.moe_intermediate_size * routed + d * self.num_experts  # + router
            else:
                ffn = 3 * d * self.intermediate_size
            matmul += attn + ffn
        attention_scores = 12 * L * self.num_attention_heads * self.head_dim * seq_len
        return 6.0 * matmul + attention_scores


# ---------------------------------------------------------------------- field names and types
# Keys every transformers config may carry besides its fields: written by save_pretrained or older transformers
# versions (4.x wrote torchscript, pruned_heads, use_bfloat16, ... into every config.json), or read by
# PreTrainedConfig.__post_init__/from_dict. Keys starting with "_" are transformers' internals and pass too.
_TRANSFORMERS_KEYS_4X = frozenset({
    "model_type", "transformers_version", "architectures", "auto_map", "name_or_path", "torch_dtype", "num_labels",
    "attn_implementation", "experts_implementation", "quantization_config", "custom_pipelines",
    "torchscript", "pruned_heads", "tie_encoder_decoder", "is_decoder", "add_cross_attention",
    "cross_attention_hidden_size", "finetuning_task", "task_specific_params", "tokenizer_class", "prefix",
    "sep_token_id", "decoder_start_token_id", "tf_legacy_loss", "use_bfloat16", "output_scores",
    "return_dict_in_generate",
})
# transformers features hizoo's model does not implement: accepting them would silently ignore them
_UNSUPPORTED_TRANSFORMERS_KEYS = frozenset({"per_layer_config"})


@functools.cache
def transformers_config_keys() -> frozenset[str]:
    """Keys that transformers itself writes into or reads from a config besides a model's own fields."""
    keys = {f.name for f in dataclasses.fields(PreTrainedConfig)}
    keys |= {name for name, member in inspect.getmembers(PreTrainedConfig) if isinstance(member, property)}
    keys |= set(PreTrainedConfig().to_dict())
    keys |= set(GenerationConfig().to_dict())  # generation keys of older config.json files (popped on load)
    return frozenset((keys | _TRANSFORMERS_KEYS_4X) - _UNSUPPORTED_TRANSFORMERS_KEYS)


def config_field_types(cls: type | None = None) -> dict[str, object]:
    """name -> type of the fields a hizoo config class declares itself (not PreTrainedConfig's), in order."""
    cls = cls or HizooConfig
    types_: dict[str, object] = {}
    for klass in reversed(cls.__mro__[: cls.__mro__.index(PreTrainedConfig)]):
        types_.update(inspect.get_annotations(klass, eval_str=True))
    return types_


def closest_name(name: str, names: typing.Iterable[str]) -> str | None:
    """The name in ``names`` closest to ``name`` (difflib), or None when none is close."""
    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.6)
    return close[0] if close else None


def unknown_field_message(owner: str, name: str, fields: typing.Iterable[str]) -> str:
    """"<owner> has no field 'routr' (did you mean 'router'?)"."""
    if name in _UNSUPPORTED_TRANSFORMERS_KEYS:
        return f"{owner} has no field {name!r}: hizoo's model does not implement this transformers option"
    close = closest_name(name, fields)
    return f"{owner} has no field {name!r}" + (f" (did you mean {close!r}?)" if close else "")


def _reject_unknown_keys(cls: type, kwargs: dict) -> None:
    allowed = transformers_config_keys()
    unknown = [k for k in kwargs if not k.startswith("_") and k not in allowed]
    if unknown:
        fields = list(config_field_types(cls))
        messages = [unknown_field_message(cls.__name__, k, fields) for k in unknown]
        raise ValueError("; ".join(messages) + f". {cls.__name__}'s fields are listed by `python train.py fit --help`.")


def describe_type(hint) -> str:
    """What a value of type ``hint`` is, in words (for error messages)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(describe_type(arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    if typing.get_origin(hint) is list:
        item = typing.get_args(hint)[0]
        return "a list of " + {int: "integers", float: "numbers", str: "strings"}.get(item, describe_type(item))
    return {type(None): "None", bool: "True or False", int: "an integer", float: "a finite number",
            str: "a string"}.get(hint, getattr(hint, "__name__", str(hint)))


def _coerce(value, hint):
    """``value`` as type ``hint`` when it is one (numpy/torch integer scalars become int), else ``_MISMATCH``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            coerced = _coerce(value, arg)
            if coerced is not _MISMATCH:
                return coerced
        return _MISMATCH
    if origin is typing.Literal:
        return value if value in typing.get_args(hint) else _MISMATCH
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return _MISMATCH
        items = [_coerce(v, typing.get_args(hint)[0]) for v in value]
        return _MISMATCH if any(i is _MISMATCH for i in items) else items
    if hint is type(None):
        return None if value is None else _MISMATCH
    if hint is bool:
        return value if isinstance(value, bool) else _MISMATCH
    if isinstance(value, bool):  # True is an int to Python, never a count or a coefficient here
        return _MISMATCH
    if hint is int:
        return int(value) if isinstance(value, numbers.Integral) else _MISMATCH
    if hint is float:
        return value if isinstance(value, (int, float)) else float(value) if isinstance(value, numbers.Real) else _MISMATCH
    if hint is str:
        return value if isinstance(value, str) else _MISMATCH
    return value  # a type this check does not know is left to the field's own validation


_MISMATCH = object()


def _check_field_types(config) -> None:
    """Each field's value has its annotated type (bool is not an int, text is not a number or a bool) and every
    float is finite (except the fields in INFINITE_ALLOWED, which may be +inf); NaN is never allowed."""
    for name, hint in config_field_types(type(config)).items():
        value = getattr(config, name)
        coerced = _coerce(value, hint)
        if coerced is _MISMATCH:
            raise ValueError(f"{name}={value!r} ({type(value).__name__}) must be {describe_type(hint)}")
        if isinstance(coerced, float) and not math.isfinite(coerced):
            if math.isnan(coerced) or coerced < 0 or name not in INFINITE_ALLOWED:
                extra = " or +inf" if name in INFINITE_ALLOWED else ""
                raise ValueError(f"{name}={value!r} must be a finite number{extra}")
        if coerced is not value:
            setattr(config, name, coerced)


def resolve_field_aliases(kwargs: dict) -> dict:
    """``kwargs`` with the names of ``FIELD_ALIASES`` replaced by hizoo's; both spellings with different values, or
    ``rope_theta`` and ``rope_parameters["rope_theta"]`` with different values, raise ``ValueError``."""
    kwargs = dict(kwargs)
    for alias, field in FIELD_ALIASES.items():
        if alias not in kwargs:
            continue
        value = kwargs.pop(alias)
        if field in kwargs and kwargs[field] != value:
            raise ValueError(f"{alias}={value!r} and {field}={kwargs[field]!r} name the same setting ({alias} is "
                             f"hizoo's {field}); give one of them, or equal values")
        kwargs[field] = value
    rope = kwargs.get("rope_parameters") or kwargs.get("rope_scaling")
    theta = kwargs.get("rope_theta", _DEFAULT_ROPE_THETA)
    # rope_theta at its default counts as not given (the typed LightningCLI config passes every field)
    if isinstance(rope, dict) and "rope_theta" in rope and theta != _DEFAULT_ROPE_THETA and rope["rope_theta"] != theta:
        raise ValueError(f"rope_theta={theta!r} and rope_parameters['rope_theta']={rope['rope_theta']!r} name the same "
                         f"setting; give one of them, or equal values")
    return kwargs


_DEFAULT_ROPE_THETA = HizooConfig.rope_theta


def _accepting_aliases(init):
    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **resolve_field_aliases(kwargs))

    return __init__


# After the class is built: PreTrainedConfig wraps the dataclass __init__ at class creation, and the aliases must be
# renamed before that __init__ assigns the fields (HizooConfig.__post_init__ derives topk_groups from n_groups).
HizooConfig.__init__ = _accepting_aliases(HizooConfig.__init__)


def _check_choice(config, name: str, allowed: tuple[str, ...]) -> None:
    value = getattr(config, name)
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")


def _check_positive_int(config, name: str) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be an integer >= 1")


def _check_nonnegative_int(config, name: str) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}={value!r} must be an integer >= 0")


def _check_positive(config, name: str) -> None:
    value = getattr(config, name)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"{name}={value!r} must be a number > 0")


def _check_nonnegative(config, name: str) -> None:
    value = getattr(config, name)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
        raise ValueError(f"{name}={value!r} must be a number >= 0")
