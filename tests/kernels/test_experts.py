"""GroupedExperts backend dispatch."""

import pytest
import torch

from hizoo.kernels import BACKENDS, GroupedExperts, resolve_backend


def test_auto_picks_triton_on_cuda_and_grouped_mm_on_cpu():
    assert resolve_backend("auto", torch.device("cuda")) == "triton"
    assert resolve_backend("auto", torch.device("cpu")) == "grouped_mm"
    for name in ("triton", "grouped_mm", "eager"):
        assert resolve_backend(name, torch.device("cpu")) == name


def test_bad_backend_name_errors_with_the_choices():
    with pytest.raises(ValueError, match="cuda_magic.*auto.*triton"):
        resolve_backend("cuda_magic", torch.device("cpu"))
    with pytest.raises(ValueError, match="cuda_magic"):
        GroupedExperts(4, 8, 4, backend="cuda_magic")
    assert BACKENDS == ("auto", "triton", "grouped_mm", "eager")


def test_cpu_module_auto_equals_eager():
    torch.manual_seed(0)
    auto, eager = GroupedExperts(4, 8, 8, backend="auto"), GroupedExperts(4, 8, 8, backend="eager")
    for m in (auto, eager):
        torch.nn.init.normal_(m.w13, std=0.3, generator=torch.Generator().manual_seed(1))
        torch.nn.init.normal_(m.w2, std=0.3, generator=torch.Generator().manual_seed(2))
    x, idx, wt = torch.randn(6, 8), torch.randint(0, 4, (6, 2)), torch.rand(6, 2)
    torch.testing.assert_close(auto(x, idx, wt), eager(x, idx, wt), atol=1e-5, rtol=1e-5)
