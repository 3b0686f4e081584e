import math

import pytest
import torch

from hizoo.routing.base import RoutingResult
from hizoo.routing.stats import (LoadAccumulator, coefficient_of_variation, drop_rate, entropy, expert_counts,
                                 expert_load, group_loads, load_entropy, max_violation, routing_stats,
                                 within_group_collapse)


def test_balanced_load_has_zero_cv_and_maxvio_and_full_entropy():
    idx = torch.arange(8).view(4, 2)  # every expert chosen once
    load = expert_load(idx, 8)
    assert torch.allclose(load, torch.full((8,), 1 / 8, dtype=torch.float64))
    assert coefficient_of_variation(load) == pytest.approx(0.0, abs=1e-12)
    assert max_violation(load) == pytest.approx(0.0, abs=1e-12)
    assert load_entropy(load) == pytest.approx(math.log(8))
    assert load_entropy(load, normalized=True) == pytest.approx(1.0)


def test_all_tokens_on_one_expert():
    idx = torch.zeros(5, 1, dtype=torch.long)
    load = expert_load(idx, 4)  # [1, 0, 0, 0]
    assert max_violation(load) == pytest.approx(3.0)  # (1 - 1/4) / (1/4) = E - 1
    assert coefficient_of_variation(load) == pytest.approx(math.sqrt(3))  # std 0.433 / mean 0.25
    assert load_entropy(load) == 0.0


def test_known_skewed_load():
    idx = torch.tensor([[0, 1], [0, 1], [0, 2], [0, 3]])  # counts 4, 2, 1, 1 of 8
    load = expert_load(idx, 4)
    assert load.tolist() == [0.5, 0.25, 0.125, 0.125]
    assert max_violation(load) == pytest.approx(1.0)  # (0.5 - 0.25) / 0.25
    assert load_entropy(load) == pytest.approx(-(0.5 * math.log(0.5) + 0.25 * math.log(0.25) + 0.25 * math.log(0.125)))


def test_group_statistics():
    # E=4, G=2: group 0 = experts {0, 1}, group 1 = {2, 3}; counts 3, 1, 2, 2
    idx = torch.tensor([[0, 2], [0, 3], [0, 2], [1, 3]])
    s = routing_stats(idx, num_experts=4, n_groups=2)
    assert s.group_load == pytest.approx([0.5, 0.5])
    assert s.group_cv == pytest.approx(0.0)
    assert s.max_group_share == pytest.approx(0.5)
    assert s.group_collapse == pytest.approx([0.75, 0.5])  # busiest expert's share of its group
    assert s.within_group_collapse == pytest.approx(0.625)
    assert group_loads(torch.tensor([0.1, 0.2, 0.3, 0.4]), 2).tolist() == pytest.approx([0.3, 0.7])


def test_unused_group_has_nan_collapse_and_is_skipped_in_the_mean():
    load = torch.tensor([0.5, 0.5, 0.0, 0.0])
    collapse = within_group_collapse(load, 2)
    assert collapse[0] == pytest.approx(0.5) and torch.isnan(collapse[1])
    s = routing_stats(torch.tensor([[0, 1]]), 4, 2)
    assert s.within_group_collapse == pytest.approx(0.5)
    assert s.max_group_share == pytest.approx(1.0)


def test_drop_rate_reads_the_dropped_mask():
    assert drop_rate(None) == 0.0
    dropped = torch.tensor([[False, True], [False, False]])
    assert drop_rate(dropped) == pytest.approx(0.25)
    result = RoutingResult(torch.tensor([[0, 1], [1, 0]]), torch.ones(2, 2), torch.zeros(2, 2), {}, dropped)
    s = routing_stats(result.expert_idx, 2, dropped=getattr(result, "dropped", None))
    assert s.drop_rate == pytest.approx(0.25)


def test_accumulated_maxvio_differs_from_batch_maxvio():
    acc = LoadAccumulator(2)
    acc.update(torch.tensor([[0], [0]]))  # batch MaxVio 1
    acc.update(torch.tensor([[1], [1]]))  # batch MaxVio 1, but together balanced
    assert acc.max_violation() == pytest.approx(0.0)
    assert acc.cv() == pytest.approx(0.0)
    acc.update(torch.tensor([[0], [0]]))  # counts 4, 2
    assert acc.max_violation() == pytest.approx((4 / 6 - 0.5) / 0.5)
    acc.reset()
    with pytest.raises(ValueError, match="no routed pairs"):
        acc.load()


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="outside"):
        expert_load(torch.tensor([[4]]), 4)
    with pytest.raises(ValueError, match="must divide"):
        group_loads(torch.ones(6) / 6, 4)
    with pytest.raises(ValueError, match="empty"):
        expert_load(torch.zeros(0, 2, dtype=torch.long), 4)


def test_expert_counts_match_a_python_count_and_reject_indices_outside_the_experts():
    torch.manual_seed(0)
    idx = torch.randint(0, 6, (50, 3))
    expected = [sum(int(i) == e for i in idx.flatten()) for e in range(7)]  # expert 6 is never chosen
    counts = expert_counts(idx, 7)
    assert counts.dtype == torch.int64 and counts.tolist() == expected
    assert expert_counts(torch.zeros(0, 2, dtype=torch.long), 3).tolist() == [0, 0, 0]
    for bad in (torch.tensor([[0, 7]]), torch.tensor([[-1, 0]])):
        with pytest.raises(ValueError, match=r"outside \[0, 7\)"):
            expert_counts(bad, 7)


def test_entropy_matches_hand_values_and_torch_categorical():
    # hand: H(1/2, 1/4, 1/4) = 1.5 log 2; an empty entry adds nothing (0 log 0 = 0); one-hot gives 0
    assert float(entropy(torch.tensor([0.5, 0.25, 0.25]))) == pytest.approx(1.5 * math.log(2))
    assert float(entropy(torch.tensor([0.5, 0.0, 0.25, 0.25]))) == pytest.approx(1.5 * math.log(2))
    assert float(entropy(torch.tensor([0.0, 1.0, 0.0]))) == 0.0
    torch.manual_seed(0)
    p = torch.rand(4, 3, 6, dtype=torch.float64).softmax(-1)  # batched, along any dim
    torch.testing.assert_close(entropy(p), torch.distributions.Categorical(probs=p).entropy())
    torch.testing.assert_close(entropy(p.transpose(1, 2), dim=1), torch.distributions.Categorical(probs=p).entropy())
