"""OLMoE checkpoints on the Hub (allenai/OLMoE-1B-7B-0924) store every expert as separate gate/up/down matrices;
transformers' weight-conversion mapping for OLMoE fuses them on load. hizoo's converter loads through
OlmoeForCausalLM, so it reads that layout too and gives the same logits."""

import json

import torch
from safetensors.torch import save_file
from transformers import OlmoeConfig, OlmoeForCausalLM

from hizoo import HizooForCausalLM
from hizoo.models.conversion import convert_olmoe_checkpoint


def _per_expert_state(model: OlmoeForCausalLM) -> dict[str, torch.Tensor]:
    """The fused experts (gate_up_proj [E, 2f, d], down_proj [E, d, f]) written one matrix per expert."""
    state = {}
    for name, tensor in model.state_dict().items():
        if name.endswith("mlp.experts.gate_up_proj"):
            prefix, f = name[: -len("gate_up_proj")], tensor.shape[1] // 2
            for e in range(tensor.shape[0]):
                state[f"{prefix}{e}.gate_proj.weight"] = tensor[e, :f].clone()
                state[f"{prefix}{e}.up_proj.weight"] = tensor[e, f:].clone()
        elif name.endswith("mlp.experts.down_proj"):
            prefix = name[: -len("down_proj")]
            for e in range(tensor.shape[0]):
                state[f"{prefix}{e}.down_proj.weight"] = tensor[e].clone()
        else:
            state[name] = tensor.clone()
    return state


def test_a_per_expert_olmoe_checkpoint_converts_with_the_same_logits(tmp_path):
    torch.manual_seed(0)
    config = OlmoeConfig(vocab_size=128, hidden_size=64, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
                         max_position_embeddings=64, pad_token_id=0, eos_token_id=1)
    olmoe = OlmoeForCausalLM(config).eval()
    with torch.no_grad():
        for p in olmoe.parameters():
            p.normal_(0.0, 0.1) if p.ndim >= 2 else p.uniform_(0.7, 1.3)
    src = tmp_path / "olmoe"
    src.mkdir()
    state = _per_expert_state(olmoe)
    assert "model.layers.0.mlp.experts.3.down_proj.weight" in state and not any("gate_up_proj" in k for k in state)
    save_file(state, src / "model.safetensors", metadata={"format": "pt"})
    (src / "config.json").write_text(json.dumps({**config.to_dict(), "architectures": ["OlmoeForCausalLM"]}))

    convert_olmoe_checkpoint(src, tmp_path / "hizoo")
    ours = HizooForCausalLM.from_pretrained(tmp_path / "hizoo").eval()
    ids = torch.randint(0, 128, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, olmoe(ids).logits, atol=1e-4, rtol=1e-4)
