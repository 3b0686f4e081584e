"""hizoo models: configuration, the causal LM, MoE and residual-stream layers, conversion."""

from .configuration import HizooConfig
from .modeling import HizooForCausalLM, HizooModel, HizooPreTrainedModel

__all__ = ["HizooConfig", "HizooForCausalLM", "HizooModel", "HizooPreTrainedModel"]
