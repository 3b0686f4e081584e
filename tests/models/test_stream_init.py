"""models/stream_init.py: the stream expansions' own formulas (LSS's range and parameter, rotation keeping norms,
split summing to the embedding). The expansions inside a model, against the official code: test_stream_reference.py;
the symmetry each init breaks at the model level: test_hyper_connections.py."""

import torch

from hizoo import HizooConfig
from hizoo.models.stream_init import StreamExpansion

TINY = dict(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)


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
