"""Importing lmsuite changes nothing in the process; its public names load on first use."""

import subprocess
import sys


def run_python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_import_lmsuite_imports_no_torch_and_loads_nothing_native():
    out = run_python(
        "import sys, lmsuite\n"
        "maps = open('/proc/self/maps').read()\n"
        "print('torch' in sys.modules, [m for m in sys.modules if m.startswith('lmsuite.')],\n"
        "      'lmsuite' in maps or 'kernels/' in maps)")
    assert out == "False [] False"


def test_mkls_own_path_is_in_force_after_import_lmsuite():
    out = run_python("import lmsuite, torch\nfrom lmsuite.accel import blas\n"
                     "print(blas.state() in ('not configured', 'not applicable'))")
    assert out == "True"


def test_public_names_load_on_first_use_and_still_change_nothing(tmp_path):
    out = run_python(
        "import lmsuite\n"
        "cfg = lmsuite.NeoXConfig(vocab_size=64, layers=1, d_model=16, heads=2)\n"
        f"lmsuite.save_model(lmsuite.GPTNeoX(cfg), {str(tmp_path)!r})\n"
        f"model = lmsuite.load_model({str(tmp_path)!r})\n"
        "import sys\n"
        "maps = open('/proc/self/maps').read()\n"
        "print(type(model).__name__, 'mkl_vendor' in maps,\n"
        "      sorted(m for m in sys.modules if m.startswith('lmsuite.accel')))")
    assert out == "GPTNeoX False []"
    assert callable(__import__("lmsuite").batch_at)
