import os
import subprocess
import sys

import pytest
import torch

from lmsuite.accel import blas

applies = pytest.mark.skipif(
    not (blas._amd_with_avx2() and torch.backends.mkl.is_available()),
    reason="MKL's tuned products are loaded only on AMD CPUs with AVX2, under PyTorch's MKL")


def state_in_a_new_process(code: str, **env: str) -> tuple[str, str]:
    """(blas state, stderr) of a fresh Python running `code`."""
    script = code + "\nfrom lmsuite.accel import blas\nprint(blas.state())"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, env={**os.environ, **env})
    return proc.stdout.strip(), proc.stderr


CONFIGURED = "import lmsuite.accel\nlmsuite.accel.configure_process()\nimport torch"


@applies
def test_mkl_runs_its_tuned_products_only_when_the_process_is_configured_before_torch():
    assert state_in_a_new_process(CONFIGURED)[0] == "tuned"
    assert state_in_a_new_process("import lmsuite\nimport torch")[0] == "not configured"
    state, err = state_in_a_new_process(
        "import torch\nimport lmsuite.accel\nlmsuite.accel.configure_process()")
    assert state == "late" and "torch was imported before" in err
    assert state_in_a_new_process(CONFIGURED, LMSUITE_MKL_TUNED="0")[0] == "off"


@applies
def test_the_lmsuite_command_configures_its_process_first():
    code = ("import sys\nfrom lmsuite import cli\nsys.argv = ['lmsuite', 'model', 'info', "
            "'configs/pythia.toml']\ncli.main()")
    assert state_in_a_new_process(code)[0].splitlines()[-1] == "tuned"


@applies
def test_the_test_processes_run_the_tuned_products():
    # tests/__init__.py configures the process first, so in-process and subprocess runs
    # compare alike.
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


@applies
def test_a_damaged_cached_library_is_built_again(tmp_path):
    cache = str(tmp_path)
    assert state_in_a_new_process(CONFIGURED, LMSUITE_CACHE=cache)[0] == "tuned"
    [library] = (tmp_path / "kernels").glob("mkl_vendor*.so")
    library.write_bytes(library.read_bytes()[:100])
    assert state_in_a_new_process(CONFIGURED, LMSUITE_CACHE=cache)[0] == "tuned"
    assert library.stat().st_size > 100
