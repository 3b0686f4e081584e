"""Training hizoo models with the Hugging Face ``Trainer``: the router-state callback.

Routers keep state that must change once per optimizer step, after the last micro-batch of the gradient
accumulation window: DeepSeek-V3's loss-free balancing bias (``group_limited``), the global-batch expert counts of
``topk`` with ``router_global_balance``, Hi-MoE's step counter that drives the λ1 warm-up. Lightning runs
``models.moe.update_router_states`` from ``HizooLightningModule``; under the HF ``Trainer`` add the callback::

    from transformers import Trainer
    from hizoo import RouterUpdateCallback

    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[RouterUpdateCallback()])

Without it the Trainer trains, but the bias, the global counts and the warm-up never move. The Trainer's loss
handling needs nothing else: ``HizooForCausalLM.forward`` takes its ``num_items_in_batch`` (transformers' causal-LM
loss), so gradient accumulation gives the loss and gradients of one large batch.
"""

from __future__ import annotations

from transformers import TrainerCallback

from .moe import update_router_states


class RouterUpdateCallback(TrainerCallback):
    """Calls ``update_router_states(model)`` at ``on_step_end``, which the Trainer fires once per optimizer step (after
    ``optimizer.step()`` and ``zero_grad``; micro-batches inside an accumulation window fire ``on_substep_end``).
    ``updates`` counts the calls."""

    def __init__(self):
        self.updates = 0

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise ValueError("RouterUpdateCallback needs the model: the Trainer passes it to its callbacks as `model`")
        update_router_states(model)
        self.updates += 1
