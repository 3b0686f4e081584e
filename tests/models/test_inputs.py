"""Bad model inputs raise a ValueError naming the argument, its shape or values and what is expected; good ones
(masks of any 0/1 dtype, -100 labels, caches) behave as before; the value checks cost one host sync."""

import pytest
import torch
import torch.nn.functional as F

from hizoo import HizooConfig, HizooForCausalLM, HizooModel
from hizoo.models.inputs import check_inputs
from hizoo.models.attention import causal_attention_mask

TINY = dict(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=96, max_position_embeddings=16, pad_token_id=0)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return HizooForCausalLM(HizooConfig(**TINY)).eval()


IDS = torch.tensor([[5, 6, 7, 8]])  # [1, 4]


def _embeds(*shape, dtype=torch.float32):
    return torch.zeros(shape, dtype=dtype)


BAD = [  # (id, forward kwargs, fragments the message must contain)
    ("ids 1-D", dict(input_ids=torch.tensor([5, 6, 7])),
     ["input_ids must be 2-D [batch, seq]; got shape (3,)", "input_ids[None]"]),
    ("ids 3-D", dict(input_ids=torch.ones(1, 2, 3, dtype=torch.long)),
     ["input_ids must be 2-D [batch, seq]; got shape (1, 2, 3)"]),
    ("ids float", dict(input_ids=IDS.float()), ["input_ids must be an integer tensor", "torch.float32"]),
    ("ids list", dict(input_ids=[[5, 6]]), ["input_ids must be a torch.Tensor; got list"]),
    ("empty sequence", dict(input_ids=torch.zeros(1, 0, dtype=torch.long)),
     ["input_ids of shape (1, 0): batch size and sequence length must both be at least 1"]),
    ("batch 0", dict(input_ids=torch.zeros(0, 4, dtype=torch.long)), ["input_ids of shape (0, 4)", "at least 1"]),
    ("beyond max positions", dict(input_ids=torch.ones(1, 17, dtype=torch.long)),
     ["input_ids of shape (1, 17): 17 tokens exceed max_position_embeddings=16"]),
    ("ids out of vocab", dict(input_ids=torch.tensor([[5, 97, 3]])), ["input_ids must be in [0, vocab_size=97)", "[97]"]),
    ("both ids and embeds", dict(input_ids=IDS, inputs_embeds=_embeds(1, 4, 64)), ["exactly one of input_ids"]),
    ("embeds hidden size", dict(inputs_embeds=_embeds(1, 4, 32)),
     ["inputs_embeds must be [batch, seq, hidden_size=64]; got shape (1, 4, 32)"]),
    ("embeds 2-D", dict(inputs_embeds=_embeds(4, 64)), ["inputs_embeds must be [batch, seq, hidden_size=64]", "(4, 64)"]),
    ("embeds integer", dict(inputs_embeds=_embeds(1, 4, 64, dtype=torch.long)),
     ["inputs_embeds must be a floating-point tensor; got dtype torch.int64"]),
    ("mask 3-D", dict(input_ids=IDS, attention_mask=torch.ones(1, 4, 4)),
     ["attention_mask must be 2-D [batch, seq] of 0/1; got shape (1, 4, 4)"]),
    ("prepared 4-D mask of another length", dict(input_ids=IDS, attention_mask=torch.ones(1, 1, 3, 4)),
     ["a prepared 4-D attention_mask must be [batch=1, heads, seq=4, keys]; got shape (1, 1, 3, 4)"]),
    ("mask too short", dict(input_ids=IDS, attention_mask=torch.ones(1, 3)),
     ["attention_mask must have shape [batch=1, seq 4 = 4]", "got shape (1, 3)"]),
    ("mask other batch", dict(input_ids=IDS, attention_mask=torch.ones(2, 4)),
     ["attention_mask must have shape [batch=1, seq 4 = 4]", "got shape (2, 4)"]),
    ("mask value 2", dict(input_ids=IDS, attention_mask=torch.tensor([[1, 1, 2, 1]])),
     ["attention_mask must hold only 0 (padding) and 1 (token); got [2] at 1 positions"]),
    ("mask value 0.5", dict(input_ids=IDS, attention_mask=torch.tensor([[1.0, 0.5, 1.0, 1.0]])),
     ["attention_mask must hold only 0 (padding) and 1 (token); got [0.5]"]),
    ("negative position", dict(input_ids=IDS, position_ids=torch.tensor([[-1, 0, 1, 2]])),
     ["position_ids must be in [0, max_position_embeddings=16); got [-1]"]),
    ("position too large", dict(input_ids=IDS, position_ids=torch.tensor([[0, 1, 2, 16]])),
     ["position_ids must be in [0, max_position_embeddings=16); got [16]"]),
    ("position 1-D", dict(input_ids=IDS, position_ids=torch.arange(4)),
     ["position_ids must have shape [batch=1 (or 1), seq=4]; got shape (4,)"]),
    ("position float", dict(input_ids=IDS, position_ids=torch.arange(4.0)[None]),
     ["position_ids must be an integer tensor", "torch.float32"]),
    ("labels other shape", dict(input_ids=IDS, labels=IDS[:, :3]),
     ["labels must have the shape of the input, [batch=1, seq=4]; got shape (1, 3)"]),
    ("labels out of vocab", dict(input_ids=IDS, labels=torch.tensor([[5, 6, 200, 8]])),
     ["labels must be token ids in [0, vocab_size=97) or -100 (ignored); got [200]"]),
    ("labels negative", dict(input_ids=IDS, labels=torch.tensor([[5, -5, 7, 8]])), ["or -100 (ignored); got [-5]"]),
    ("labels float", dict(input_ids=IDS, labels=IDS.float()), ["labels must be an integer tensor", "torch.float32"]),
    ("labels length 1", dict(input_ids=IDS[:, :1], labels=IDS[:, :1]),
     ["labels of shape (1, 1) leave no next-token target", "at least 2 tokens"]),
    ("labels all ignored", dict(input_ids=IDS, labels=torch.full((1, 4), -100)),
     ["labels of shape (1, 4) have no target token", "transformers returns nan"]),
    ("labels only first kept", dict(input_ids=IDS, labels=torch.tensor([[5, -100, -100, -100]])),
     ["have no target token", "labels[:, 0] is never a target"]),
    ("labels with logits_to_keep", dict(input_ids=IDS, labels=IDS, logits_to_keep=1),
     ["labels need the logits of every position; got logits_to_keep=1"]),
]


@pytest.mark.parametrize("kwargs, fragments", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_raises_a_value_error_that_says_what_is_expected(model, kwargs, fragments):
    with pytest.raises(ValueError) as err:
        model(**kwargs)
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)


def test_the_base_model_checks_its_inputs_too(model):
    base = model.model
    assert isinstance(base, HizooModel)
    with pytest.raises(ValueError, match=r"input_ids must be 2-D \[batch, seq\]; got shape \(3,\)"):
        base(torch.tensor([5, 6, 7]))


def test_with_a_cache_the_mask_and_the_length_count_the_cached_tokens(model):
    ids = torch.randint(1, 97, (1, 12))
    with torch.no_grad():
        past = model(ids, use_cache=True).cache  # 12 tokens cached
        with pytest.raises(ValueError, match=r"5 tokens after 12 cached tokens \(past \+ new = 17\) exceed "
                                             r"max_position_embeddings=16"):
            model(torch.randint(1, 97, (1, 5)), cache=past, use_cache=True)
        with pytest.raises(ValueError, match=r"attention_mask must have shape \[batch=1, past 12 \+ new 1 = 13\].*"
                                             r"got shape \(1, 1\)"):
            model(ids[:, :1], cache=past, attention_mask=torch.ones(1, 1), use_cache=True)
        step = model(ids[:, :1], cache=past, attention_mask=torch.ones(1, 13, dtype=torch.long), use_cache=True)
    assert step.logits.shape == (1, 1, 97)


@pytest.mark.parametrize("dtype", [torch.long, torch.bool, torch.float32, torch.int32])
def test_a_0_1_mask_of_any_dtype_gives_the_same_logits(model, dtype):
    ids = torch.tensor([[0, 0, 5, 6, 7], [3, 4, 5, 6, 7]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        ref = model(ids, attention_mask=mask).logits
        got = model(ids, attention_mask=mask.to(dtype)).logits
    torch.testing.assert_close(got, ref)


def test_labels_with_ignored_positions_average_over_the_targets_only(model):
    ids = torch.randint(1, 97, (2, 6))
    labels = ids.clone()
    labels[0, 3:] = -100
    labels[1, :] = -100
    labels[1, 2] = ids[1, 2]  # one target in the second row
    with torch.no_grad():
        out = model(ids, labels=labels)
    targets = labels[:, 1:]
    expected = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)
    assert torch.isfinite(out.loss)


class _SyncCounter:
    """Counts the calls that copy a tensor's value to the host (each one a device sync on a GPU)."""

    NAMES = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")

    def __init__(self, monkeypatch):
        self.calls = []
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)

            def counted(t, *args, _original=original, _name=name, **kwargs):
                self.calls.append(_name)
                return _original(t, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)


def test_value_checks_cost_one_host_sync(monkeypatch):
    config = HizooConfig(**TINY)
    ids = torch.tensor([[0, 5, 6, 7]])
    kwargs = dict(input_ids=ids, inputs_embeds=None, attention_mask=torch.tensor([[0, 1, 1, 1]]),
                  position_ids=torch.tensor([[0, 0, 1, 2]]), labels=ids, past_len=0)
    counter = _SyncCounter(monkeypatch)
    padded = check_inputs(config, **kwargs)
    assert padded is True and counter.calls == ["tolist"]
    counter.calls.clear()
    assert check_inputs(config, **{**kwargs, "attention_mask": torch.ones(1, 4, dtype=torch.bool)}) is False
    assert counter.calls == ["tolist"]
    counter.calls.clear()
    embeds = torch.zeros(1, 4, TINY["hidden_size"])
    for padded, mask in ((True, kwargs["attention_mask"]), (False, torch.ones(1, 4, dtype=torch.long))):
        causal_attention_mask(config, embeds, mask, None, padded=padded)  # told by check_inputs: no second sync
        assert counter.calls == [], padded


def test_a_padded_forward_syncs_once(monkeypatch, model):
    """The whole forward of a dense model with left padding: the one sync of the value checks, none in the mask."""
    ids, mask = torch.tensor([[0, 0, 5, 6], [3, 4, 5, 6]]), torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    counter = _SyncCounter(monkeypatch)
    with torch.no_grad():
        model(ids, attention_mask=mask, use_cache=False)
    assert counter.calls == ["tolist"]
