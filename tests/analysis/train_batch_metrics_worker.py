"""Run by test_train_batch_metrics.py as 2 processes over gloo (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set).
Argument: an output file. Each rank runs two training micro-batches of its own (rank r: sequences
``batches(...)[2r]`` and ``[2r + 1]``), then ``update_router_states``; rank 0 saves every layer's reduced
``step_counts`` so the test can compare them with one process over the union of the four micro-batches."""

import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(__file__))
from train_batch_metrics_cases import batches, tiny_model  # noqa: E402

from hizoo.models.moe import update_router_states  # noqa: E402

if __name__ == "__main__":
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = tiny_model().train()
    for ids in batches()[2 * rank: 2 * rank + 2]:
        model(ids, labels=ids, use_cache=False).loss.backward()
    update_router_states(model)
    if rank == 0:
        torch.save({i: layer.ffn.router.step_counts for i, layer in enumerate(model.model.layers)}, sys.argv[1])
    dist.barrier()
    dist.destroy_process_group()
