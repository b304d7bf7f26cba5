import warnings

import pytest
import torch
import torch.nn.functional as F

from lmsuite import accel
from lmsuite.accel.kernels import gelu_forward
from lmsuite.accel.libraries import (
    attention_library,
    cross_entropy_library,
    gelu_library,
    layer_norm_library,
)
from lmsuite.accel.native import build
from lmsuite.model.neox import GPTNeoX, NeoXConfig


def clear_kernel_caches():
    for library in (attention_library, cross_entropy_library, gelu_library, layer_norm_library):
        library.cache_clear()


def test_build_is_cached_and_atomic(kernels, tmp_path, monkeypatch):
    monkeypatch.setenv("LMSUITE_CACHE", str(tmp_path))
    first = build("attention", {"HD": 8})
    assert first is not None and first.parent == tmp_path / "kernels"
    stamp = first.stat().st_mtime_ns
    assert build("attention", {"HD": 8}) == first
    assert first.stat().st_mtime_ns == stamp  # not rebuilt
    assert [p.name for p in (tmp_path / "kernels").iterdir()] == [first.name]  # no temp files


def test_without_a_compiler_the_model_runs_as_written_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("LMSUITE_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.warns(UserWarning, match="no C compiler"):
        assert build("attention", {"HD": 16}) is None
    clear_kernel_caches()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cfg = NeoXConfig(vocab_size=128, layers=1, d_model=32, heads=2)
            model = GPTNeoX(cfg)
            model.init_weights(0)
            assert accel.install(model) == []
            tokens = torch.randint(0, 128, (2, 9))
            logits = model(tokens)
        assert logits.shape == (2, 9, 128) and torch.isfinite(logits).all()
        assert not any(tmp_path.joinpath("kernels").glob("*.so"))
    finally:
        monkeypatch.delenv("CC")
        clear_kernel_caches()


def test_a_damaged_cached_kernel_is_built_again(kernels, tmp_path, monkeypatch):
    # A file cut short (a machine that went down) must not break every later run.
    monkeypatch.setenv("LMSUITE_CACHE", str(tmp_path))
    path = build("gelu", {})
    path.write_bytes(path.read_bytes()[:100])
    clear_kernel_caches()
    try:
        lib = gelu_library()
        assert lib is not None and path.stat().st_size > 100
        x = torch.randn(50)
        torch.testing.assert_close(gelu_forward(x, False, lib)[0], F.gelu(x), atol=1e-6,
                                   rtol=1e-6)
    finally:
        clear_kernel_caches()


def test_a_failed_build_leaves_nothing_and_warns(tmp_path, monkeypatch):
    script = tmp_path / "broken-cc"
    script.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo broken 1.0; exit 0; fi\n"
                      "echo 'error: this compiler is broken' >&2\nexit 1\n")
    script.chmod(0o755)
    monkeypatch.setenv("LMSUITE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(script))
    with pytest.warns(UserWarning, match="this compiler is broken"):
        assert build("attention", {"HD": 16}) is None
    assert list((tmp_path / "cache" / "kernels").iterdir()) == []
