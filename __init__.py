"""hizoo: hierarchical Mixture-of-Experts and hyper-connection language models.

``import hizoo`` registers ``HizooConfig`` / ``HizooModel`` / ``HizooForCausalLM`` with transformers'
``AutoConfig``, ``AutoModel`` and ``AutoModelForCausalLM`` (model_type ``"hizoo"``).
"""

__version__ = "0.1.0"
__all__ = ["HizooConfig", "HizooForCausalLM", "HizooModel", "HizooPreTrainedModel", "RouterUpdateCallback"]

if __name__ != "hizoo":
    # The repository root is this package. pytest collects the root directory as a package and imports this
    # file by path under the checkout's folder name; alias that name to the installed `hizoo` instead of
    # building a second copy of every class (two HizooConfig classes would break isinstance and Auto*).
    import importlib as _importlib
    import sys as _sys

    _sys.modules[__name__] = _importlib.import_module("hizoo")
else:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from .models import HizooConfig, HizooForCausalLM, HizooModel, HizooPreTrainedModel
    from .models.hf_trainer import RouterUpdateCallback

    AutoConfig.register(HizooConfig.model_type, HizooConfig, exist_ok=True)
    AutoModel.register(HizooConfig, HizooModel, exist_ok=True)
    AutoModelForCausalLM.register(HizooConfig, HizooForCausalLM, exist_ok=True)
