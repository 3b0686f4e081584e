"""models/stream_init.py: the stream expansions, the perturbed connection init, and which inits make the streams
distinguishable."""

import pytest
import torch
from torch import nn

from hizoo import HizooConfig, HizooForCausalLM
from hizoo.models.stream_init import PERTURB_STD, StreamExpansion, init_static

TINY = dict(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)


def _model(seed=0, **overrides) -> HizooForCausalLM:
    torch.manual_seed(seed)
    return HizooForCausalLM(HizooConfig(**{**TINY, **overrides})).eval()


def _ids(seed=1, shape=(2, 9)):
    return torch.randint(0, TINY["vocab_size"], shape, generator=torch.Generator().manual_seed(seed))
SYMMETRY_BREAKING = ("lss", "rotate", "split", "perturb", "balanced_rotate")


# ---------------------------------------------------------------------------------------------- expansions


def test_lss_init_range_and_parameter_name():
    exp = StreamExpansion(HizooConfig(**TINY, residual="hc", n_streams=4, stream_init="lss"))
    bound = (6 / (32 + 4)) ** 0.5
    lam = exp.stream_scale.detach()
    assert lam.shape == (4, 32) and (lam - 0.6).abs().max() <= bound and lam.std() > bound / 4
    x = torch.randn(2, 3, 32)
    assert torch.equal(exp(x), x[..., None, :] * lam)


def test_rotate_keeps_norms_and_split_sums_to_the_embedding():
    x = torch.randn(2, 3, 33)
    cfg = dict(TINY, hidden_size=33, num_attention_heads=1, head_dim=32, residual="hc", n_streams=3)
    rot = StreamExpansion(HizooConfig(**cfg, stream_init="rotate"))(x)  # odd d: the last channel is kept
    torch.testing.assert_close(rot.norm(dim=-1), x.norm(dim=-1, keepdim=True).expand(2, 3, 3))
    assert torch.equal(rot[..., -1], x[..., None, -1].expand(2, 3, 3))
    split = StreamExpansion(HizooConfig(**cfg, stream_init="split"))(x)
    torch.testing.assert_close(split.sum(-2), x)
    assert not torch.allclose(split[..., 0, :], split[..., 1, :])


@pytest.mark.parametrize("residual", ["hc", "mhc", "mhc_lite"])
@pytest.mark.parametrize("stream_init", ("copy",) + SYMMETRY_BREAKING)
def test_only_copy_keeps_streams_interchangeable_at_init(residual, stream_init):
    """The streams entering block 1 are all the same exactly when HC starts from copy (A_r = I and B = 1 write the
    branch output into every stream alike), and then permuting them changes nothing. Every symmetry-breaking init
    makes them differ, and so does mHC even from copy: its write gate H_post = 2σ(±1) gives the starting stream
    2σ(1) ≈ 1.46 of the branch output and the others 2σ(−1) ≈ 0.54. Streams that differ are not interchangeable:
    permuting them changes the logits."""
    model = _model(residual=residual, n_streams=4, stream_init=stream_init, hc_dynamic=True)
    ids = _ids()
    entering = []

    def permute(module, args):
        entering.append(args[0])  # [B, S, 4, d]
        return (args[0][..., [1, 2, 3, 0], :], *args[1:])

    with torch.no_grad():
        ref = model(ids).logits
        hook = model.model.layers[1].register_forward_pre_hook(permute)
        permuted = model(ids).logits
        hook.remove()
    streams = entering[0]
    same = torch.equal(streams, streams[..., :1, :].expand_as(streams))
    if stream_init == "copy" and residual == "hc":
        assert same and torch.equal(permuted, ref)
    else:
        assert not same and not torch.allclose(permuted, ref, atol=1e-4)


def test_perturb_perturbs_the_connections():
    base = _model(residual="hc", n_streams=4).model.layers[0].attn_conn
    pert = _model(residual="hc", n_streams=4, stream_init="perturb").model.layers[0].attn_conn
    assert torch.equal(base.static_mix.detach(), torch.eye(4))
    delta = pert.static_mix.detach() - torch.eye(4)
    assert 0.02 < delta.std() < 0.3


def test_init_static_adds_the_perturbation_only_under_perturb():
    mix, write = nn.Parameter(torch.empty(4, 4)), nn.Parameter(torch.empty(4))
    for stream_init in ("copy", "lss", "rotate", "split", "balanced_rotate"):
        init_static({mix: torch.eye(4), write: torch.ones(4)}, stream_init)
        assert torch.equal(mix.detach(), torch.eye(4)) and torch.equal(write.detach(), torch.ones(4))
    torch.manual_seed(3)
    init_static({mix: torch.eye(4), write: torch.ones(4)}, "perturb")
    torch.manual_seed(3)  # one draw per parameter, in the order given
    assert torch.equal(mix.detach(), torch.eye(4) + PERTURB_STD * torch.randn(4, 4))
    assert torch.equal(write.detach(), torch.ones(4) + PERTURB_STD * torch.randn(4))
