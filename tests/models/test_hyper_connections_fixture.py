"""Frozen numbers and state-dict keys of every residual kind, recorded from the code before the connections became
one class per kind (models/hyper_connections.py, hc.py, mhc.py, stream_connection.py): the refactor, and any later
one, must change neither.

- ``data/residual_kinds.pt``: for every residual × n_streams × stream_init × hc_dynamic × stream_reduce × stream_start
  combination (hc_dynamic only for HC, stream_start only for n > 1), a tiny model built under a fixed seed, its
  parameters moved off their init by seeded noise (so every parameter gets a gradient), one forward and backward:
  the loss, and for the logits, the stream diagnostics, the gradients of the stream parameters and the gradients of
  the other parameters the norm and three seeded random projections of each (a sketch of a few KB in place of the
  tensors). Built in float64 with the coefficients in float32, as the model computes them.
- ``data/residual_state_dict_keys.json``: the connection keys and shapes of every kind at n = 1 and 4 (mHC's
  smallest n is 2) with both hc_dynamic values for HC, and the expansion's of every stream_init.

Regenerate (only for a deliberate change of the numbers, said so in the commit):
``python tests/models/test_hyper_connections_fixture.py``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from hizoo import HizooConfig, HizooForCausalLM

DATA = Path(__file__).parent / "data"
NUMBERS = DATA / "residual_kinds.pt"
KEYS = DATA / "residual_state_dict_keys.json"

TINY = dict(vocab_size=16, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=12)
# The option lists as they stood when the fixture was recorded (the fixture is a record of those combinations).
STREAM_INITS = ("copy", "lss", "rotate", "split", "perturb", "balanced_rotate")
STREAM_REDUCES = ("norm_sum", "sum_norm")
STREAM_STARTS = ("random", "cyclic")
SKETCH = 3  # random projections per sketched vector


def combinations() -> dict[str, dict]:
    """name -> config overrides, every valid combination of the stream options (plus hc_recompute per kind)."""
    out = {}
    for residual, ns in (("none", (1,)), ("hc", (1, 4)), ("mhc", (4,)), ("mhc_lite", (4,))):
        for n in ns:
            for init in STREAM_INITS if residual != "none" else ("copy",):
                for dynamic in (False, True) if residual == "hc" else (True,):
                    for reduce in STREAM_REDUCES:
                        for start in STREAM_STARTS if n > 1 else ("random",):
                            overrides = dict(residual=residual, n_streams=n, stream_init=init, hc_dynamic=dynamic,
                                             stream_reduce=reduce, stream_start=start)
                            out["-".join(map(str, overrides.values()))] = overrides
    for residual in ("hc", "mhc", "mhc_lite"):  # the recomputed connection gives the same numbers
        overrides = dict(residual=residual, n_streams=4, stream_init="lss", hc_dynamic=True, hc_recompute=True)
        out["-".join(map(str, overrides.values()))] = overrides
    return out


def _sketch(v: torch.Tensor, seed: int) -> torch.Tensor:
    """[1 + SKETCH]: ‖v‖ and SKETCH projections of v on seeded Gaussian directions (scaled by 1/√D)."""
    v = v.detach().double().flatten()
    u = torch.randn(SKETCH, v.numel(), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.cat([v.norm()[None], u @ v / math.sqrt(v.numel())])


def measure(overrides: dict) -> torch.Tensor:
    """[1 + 4·(1 + SKETCH)]: loss, then the sketches of the logits, the diagnostics, the stream parameters'
    gradients and the other parameters' gradients."""
    torch.manual_seed(0)
    model = HizooForCausalLM(HizooConfig(**TINY, **overrides)).double().train()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.1)
    ids = torch.randint(0, TINY["vocab_size"], (2, 5), generator=g)
    out = model(ids, labels=ids, output_diagnostics=True)
    out.loss.backward()
    diagnostics = [t for layer in out.diagnostics for part in ("attn", "ffn", "streams")
                   for t in ([layer[part]] if part == "streams" else [layer[part][k] for k in sorted(layer[part])])]
    stream = [p.grad for n, p in model.named_parameters() if "_conn." in n or ".expand." in n]
    other = [p.grad for n, p in model.named_parameters() if not ("_conn." in n or ".expand." in n)]
    flat = lambda ts: torch.cat([t.detach().double().flatten() for t in ts]) if ts else torch.zeros(1)  # noqa: E731
    return torch.cat([out.loss.detach().double()[None], _sketch(out.logits, 2), _sketch(flat(diagnostics), 3),
                      _sketch(flat(stream), 4), _sketch(flat(other), 5)])


def state_dict_layouts() -> dict[str, list]:
    """name -> [[key, shape], ...] of the stream entries of a one-layer model's state dict: the connections of every
    residual × n_streams × hc_dynamic (with ``copy``), and the expansion of every stream_init (HC, n = 4)."""
    def layout(**overrides) -> list:
        model = HizooForCausalLM(HizooConfig(**{**TINY, "num_hidden_layers": 1, **overrides}))
        return [[k, list(v.shape)] for k, v in model.state_dict().items() if "_conn." in k or ".expand." in k]

    out = {}
    for residual, ns in (("none", (1,)), ("hc", (1, 4)), ("mhc", (2, 4)), ("mhc_lite", (2, 4))):
        for n in ns:
            for dynamic in (False, True) if residual == "hc" else (True,):
                out[f"{residual}-{n}-{dynamic}"] = layout(residual=residual, n_streams=n, hc_dynamic=dynamic)
    for init in STREAM_INITS:
        out[f"expand-{init}"] = [entry for entry in layout(residual="hc", n_streams=4, stream_init=init)
                                 if ".expand." in entry[0]]
    return out


# ---------------------------------------------------------------------------------------------- tests

_RECORDED = torch.load(NUMBERS, weights_only=True) if NUMBERS.is_file() else None


def test_fixture_covers_every_combination():
    assert _RECORDED is not None and list(_RECORDED["names"]) == list(combinations())
    assert _RECORDED["values"].shape == (len(combinations()), 1 + 4 * (1 + SKETCH))


@pytest.mark.parametrize("name", list(combinations()))
def test_numbers_match_the_recorded_ones(name):
    """Recorded and checked bit for bit on one machine; compared to 1e-6 (relative to each vector's norm) so that
    other CPUs' float32 kernels in the coefficient math (their rounding, not the formulas) pass as well."""
    expected = _RECORDED["values"][list(_RECORDED["names"]).index(name)]
    actual = measure(combinations()[name])
    torch.testing.assert_close(actual[0], expected[0], rtol=1e-6, atol=0)  # loss
    for part in range(4):
        got, want = actual[1 + part * (1 + SKETCH):][:1 + SKETCH], expected[1 + part * (1 + SKETCH):][:1 + SKETCH]
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6 * max(want[0].item(), 1e-3),
                                   msg=lambda m: f"{name}, part {part}: {m}")


def test_state_dict_keys_and_shapes_are_unchanged():
    expected = json.loads(KEYS.read_text(encoding="utf-8"))
    actual = state_dict_layouts()
    assert list(actual) == list(expected)
    for name, layout in expected.items():
        assert actual[name] == layout, name


if __name__ == "__main__":
    DATA.mkdir(exist_ok=True)
    names = list(combinations())
    values = torch.stack([measure(combinations()[name]) for name in names])
    torch.save({"names": names, "values": values}, NUMBERS)
    layouts = state_dict_layouts()  # one entry per line: reviewable in a diff
    entries = {name: ",".join(f"\n    {json.dumps(entry)}" for entry in layout) for name, layout in layouts.items()}
    KEYS.write_text("{\n" + ",\n".join(f"  {json.dumps(name)}: [{text}" + ("\n  ]" if text else "]")
                                        for name, text in entries.items()) + "\n}\n", encoding="utf-8")
    assert json.loads(KEYS.read_text(encoding="utf-8")) == layouts
    print(f"{len(names)} combinations -> {NUMBERS} ({NUMBERS.stat().st_size} bytes), {KEYS} ({KEYS.stat().st_size} "
          f"bytes)")
