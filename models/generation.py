"""Generation from prompts with a HizooForCausalLM and its tokenizer: the settings of ``python train.py predict``
(``--generation.*``) and one prompt's completion through transformers' ``generate``.

Each prompt is generated on its own (a batch of one, no padding), so a completion is exactly what
``model.generate(ids, ...)`` gives for that prompt alone. Generation stops at the tokenizer's end-of-text token or
after ``max_new_tokens``. Sampling draws from ``torch``'s generator seeded with ``seed`` and the prompt's position in
the file: a completion depends on its prompt, its position and the seed, not on the other prompts (on the same
hardware and software).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch
from transformers import GenerationConfig

from .files import atomic_write_text


@dataclasses.dataclass(frozen=True, kw_only=True)
class GenerationSettings:
    """How ``predict`` generates (transformers' ``generate`` arguments of the same names).

    Args:
        max_new_tokens: tokens generated after the prompt at most (>= 1); prompt + max_new_tokens must fit the
            model's context length (``max_position_embeddings``).
        do_sample: False: greedy decoding (the most likely token each step); True: sampling.
        temperature: softmax temperature of sampling (> 0; only with do_sample).
        top_k: sample among the k most likely tokens (>= 1; None: no top-k filter; only with do_sample).
        top_p: nucleus sampling, the smallest set of tokens with probability >= top_p (in (0, 1]; None: no
            filter; only with do_sample).
        seed: seed of sampling (>= 0); prompt number i (0-based) is sampled with seed·100003 + i.
    """

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"generation.max_new_tokens={self.max_new_tokens!r} must be an integer >= 1")
        if not isinstance(self.do_sample, bool):
            raise ValueError(f"generation.do_sample={self.do_sample!r} must be true or false")
        if not _finite_number(self.temperature) or self.temperature <= 0:
            raise ValueError(f"generation.temperature={self.temperature!r} must be a finite number > 0")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int)
                                       or self.top_k < 1):
            raise ValueError(f"generation.top_k={self.top_k!r} must be an integer >= 1, or null for no top-k filter")
        if self.top_p is not None and (not _finite_number(self.top_p) or not 0 < self.top_p <= 1):
            raise ValueError(f"generation.top_p={self.top_p!r} must be a number in (0, 1], or null for no filter")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"generation.seed={self.seed!r} must be an integer >= 0")
        if not self.do_sample:
            unused = [f"{name}={value!r}" for name, value, default in
                      (("temperature", self.temperature, 1.0), ("top_k", self.top_k, None), ("top_p", self.top_p, None))
                      if value != default]
            if unused:
                raise ValueError(f"{', '.join('generation.' + u for u in unused)}: apply only when sampling; set "
                                 "generation.do_sample=true, or leave them at their defaults (temperature=1.0, "
                                 "top_k=null, top_p=null) for greedy decoding")

    def generation_config(self, tokenizer) -> GenerationConfig:
        """transformers' GenerationConfig of these settings, stopping at the tokenizer's end-of-text token."""
        eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        kwargs = dict(max_new_tokens=self.max_new_tokens, do_sample=self.do_sample, eos_token_id=eos,
                      pad_token_id=pad if pad is not None else eos, bos_token_id=tokenizer.bos_token_id)
        if self.do_sample:  # explicit values: transformers would otherwise fill top_k=50 in
            kwargs.update(temperature=self.temperature, top_k=self.top_k or 0, top_p=self.top_p or 1.0)
        return GenerationConfig(**kwargs)


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@torch.no_grad()
def generate_completion(model, tokenizer, prompt_ids: torch.Tensor, settings: GenerationSettings,
                        index: int = 0) -> dict:
    """One prompt's completion: ``prompt_ids`` [1, P] -> a dict with the generated ids and text.

    Returns ``{"completion": str, "completion_ids": [int], "finish_reason": "eos" | "length"}``; the completion
    text is decoded without special tokens, ``completion_ids`` keep the end-of-text id when generation stopped
    there. ``index`` is the prompt's position (it names the prompt in errors and seeds its sampling)."""
    if prompt_ids.dim() != 2 or prompt_ids.shape[0] != 1 or prompt_ids.shape[1] == 0:
        raise ValueError(f"prompt {index}: expected token ids of shape [1, P] with P >= 1, got {tuple(prompt_ids.shape)}")
    limit = model.config.max_position_embeddings
    if prompt_ids.shape[1] + settings.max_new_tokens > limit:
        raise ValueError(
            f"prompt {index}: {prompt_ids.shape[1]} prompt tokens + generation.max_new_tokens={settings.max_new_tokens} "
            f"exceed the model's context length (max_position_embeddings={limit}); shorten the prompt or lower "
            "generation.max_new_tokens")
    config = settings.generation_config(tokenizer)
    devices = [prompt_ids.device] if prompt_ids.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # the caller's random state is left as it was
        torch.manual_seed(settings.seed * 100_003 + index)
        out = model.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids), generation_config=config)
    new = out[0, prompt_ids.shape[1]:].tolist()
    stopped = config.eos_token_id is not None and len(new) > 0 and new[-1] == config.eos_token_id
    return {"completion": tokenizer.decode(new, skip_special_tokens=True), "completion_ids": new,
            "finish_reason": "eos" if stopped else "length"}


def write_predictions(path: str | Path, predictions: list[dict]) -> Path:
    """``predictions`` as jsonl (one JSON object per line, in order, text kept as UTF-8), written atomically
    (``models/files.py``): the file is complete or absent, never half written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions))
    return path
