"""lmsuite: train and study suites of language models the way the Pythia suite was built."""

from lmsuite.blas import use_tuned_products

use_tuned_products()  # before anything imports torch (see lmsuite/blas.py)

from lmsuite.config import SuiteConfig, load_suite, save_suite  # noqa: E402
from lmsuite.model.hf import load_model, save_model  # noqa: E402
from lmsuite.model.neox import GPTNeoX, NeoXConfig  # noqa: E402

__all__ = ["GPTNeoX", "NeoXConfig", "SuiteConfig", "load_model", "load_suite", "save_model",
           "save_suite"]
__version__ = "0.1.0"
