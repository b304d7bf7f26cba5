"""GPT-NeoX in plain PyTorch and its Hugging Face folders."""

from lmsuite.model.hf import load_model, read_model_config, save_model
from lmsuite.model.neox import GPTNeoX, NeoXConfig, config_for_size, count_parameters, generate

__all__ = ["GPTNeoX", "NeoXConfig", "config_for_size", "count_parameters", "generate",
           "load_model", "read_model_config", "save_model"]
