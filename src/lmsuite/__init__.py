"""lmsuite: train and study suites of language models the way the Pythia suite was built."""

from lmsuite.config import SuiteConfig, load_suite, save_suite
from lmsuite.model.hf import load_model, save_model
from lmsuite.model.neox import GPTNeoX, NeoXConfig

__all__ = ["GPTNeoX", "NeoXConfig", "SuiteConfig", "load_model", "load_suite", "save_model",
           "save_suite"]
__version__ = "0.1.0"
