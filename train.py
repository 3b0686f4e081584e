"""hizoo's main job. Until the Lightning trainer lands this runs a smoke test: it builds a small random
hizoo model, runs a forward pass with loss and greedy generation with the KV cache, and says so."""

import torch

from hizoo import HizooConfig, HizooForCausalLM


def main() -> None:
    torch.manual_seed(0)
    config = HizooConfig(vocab_size=256, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=256, ffn="moe", num_experts=8, num_experts_per_tok=2,
                         moe_intermediate_size=64)
    model = HizooForCausalLM(config)
    ids = torch.randint(0, config.vocab_size, (2, 16))
    out = model(ids, labels=ids)
    generated = model.generate(ids[:, :4], max_new_tokens=8, do_sample=False)
    print(f"smoke run on a random model (training arrives with the training issue): "
          f"loss {out.loss.item():.3f}, aux {out.aux_loss.item():.4f}, generated {tuple(generated.shape)}")


if __name__ == "__main__":
    main()
