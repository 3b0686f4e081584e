"""hizoo: hierarchical Mixture-of-Experts and hyper-connection language models.

``import hizoo`` registers ``HizooConfig`` / ``HizooModel`` / ``HizooForCausalLM`` with transformers'
``AutoConfig``, ``AutoModel`` and ``AutoModelForCausalLM`` (model_type ``"hizoo"``).
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .models import HizooConfig, HizooForCausalLM, HizooModel, HizooPreTrainedModel

AutoConfig.register(HizooConfig.model_type, HizooConfig, exist_ok=True)
AutoModel.register(HizooConfig, HizooModel, exist_ok=True)
AutoModelForCausalLM.register(HizooConfig, HizooForCausalLM, exist_ok=True)

__version__ = "0.1.0"
__all__ = ["HizooConfig", "HizooForCausalLM", "HizooModel", "HizooPreTrainedModel"]
