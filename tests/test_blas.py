import os
import subprocess
import sys

import pytest
import torch

from lmsuite import blas
from lmsuite.train.trainer import Trainer

applies = pytest.mark.skipif(
    not (blas._amd_with_avx2() and torch.backends.mkl.is_available()),
    reason="MKL's tuned products are loaded only on AMD CPUs with AVX2, under PyTorch's MKL")


def state_in_a_new_process(code: str, **env: str) -> str:
    script = code + "\nfrom lmsuite import blas\nprint(blas.state())"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, env={**os.environ, **env})
    return proc.stdout.strip()


@applies
def test_mkl_runs_its_tuned_products_when_lmsuite_is_imported_before_torch():
    assert state_in_a_new_process("import lmsuite\nimport torch") == "tuned"
    assert state_in_a_new_process("import torch\nimport lmsuite") == "late"
    assert state_in_a_new_process("import lmsuite", LMSUITE_MKL_TUNED="0") == "off"


@applies
def test_the_test_processes_run_the_tuned_products():
    # tests/__init__.py imports lmsuite first, so in-process and subprocess runs compare alike.
    assert blas.state() == "tuned"


@pytest.mark.parametrize("m, k, n, transposed", [
    (2048, 128, 384, False),    # a layer's forward product
    (2048, 384, 128, False),    # its input gradient
    (384, 2048, 128, True),     # its weight gradient, over the tokens
    (2048, 128, 2048, False),   # the output layer
    (2048, 2048, 128, False),   # the output layer's input gradient
    (128, 2048, 2048, True),    # and its weight gradient
])
def test_products_of_a_training_step_match_float64(m, k, n, transposed):
    gen = torch.Generator().manual_seed(m + k + n)
    a = torch.randn(k, m, generator=gen).t() if transposed else torch.randn(m, k, generator=gen)
    b = torch.randn(k, n, generator=gen)
    reference = a.double() @ b.double()
    error = ((a @ b).double() - reference).abs().max() / reference.abs().max()
    assert error < 5e-6  # fp32 rounding over k terms; a wrong kernel is off by order 1


def test_training_says_when_torch_was_imported_first(built_data, monkeypatch, capsys, tmp_path):
    suite, _ = built_data
    monkeypatch.setattr(blas, "_state", "late")
    Trainer(suite, "s1", "standard", tmp_path, progress=False)
    assert "torch was imported before lmsuite" in capsys.readouterr().err


@applies
def test_a_damaged_cached_library_is_built_again(tmp_path):
    cache = str(tmp_path)
    assert state_in_a_new_process("import lmsuite", LMSUITE_CACHE=cache) == "tuned"
    [library] = (tmp_path / "kernels").glob("mkl_vendor*.so")
    library.write_bytes(library.read_bytes()[:100])
    assert state_in_a_new_process("import lmsuite", LMSUITE_CACHE=cache) == "tuned"
    assert library.stat().st_size > 100
