import math

import pytest

from lmsuite.train.schedule import checkpoint_steps, lr_at


def test_pythias_schedule_has_its_154_checkpoints():
    steps = checkpoint_steps(143000, 1000)
    assert len(steps) == 154
    assert steps[:12] == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000]
    assert steps[-1] == 143000 and all(s % 1000 == 0 for s in steps[11:])


def test_short_runs_keep_only_log_steps_within_the_run_and_always_the_last():
    assert checkpoint_steps(20, 8) == [0, 1, 2, 4, 8, 16, 20]
    assert checkpoint_steps(20, 8, log_checkpoints=False) == [0, 8, 16, 20]
    assert checkpoint_steps(3, 100) == [0, 1, 2, 3]


def test_lr_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    peak, steps = 1e-3, 1000
    lrs = [lr_at(s, peak, steps, 0.01, 0.1) for s in range(steps)]
    assert lrs[:10] == pytest.approx([peak * (s + 1) / 10 for s in range(10)])
    assert lrs[9] == pytest.approx(peak)
    assert lrs[-1] == pytest.approx(0.1 * peak)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    middle = 10 + (steps - 1 - 10) // 2  # half-way through the decay: the mean of peak and floor
    expected = 0.1 * peak + 0.9 * peak * 0.5 * (1 + math.cos(math.pi * (middle - 10) / 989))
    assert lrs[middle] == pytest.approx(expected)
    assert lrs[middle] == pytest.approx(0.55 * peak, rel=2e-3)


def test_no_warmup_starts_at_the_peak():
    assert lr_at(0, 1.0, 100, 0.0, 0.1) == 1.0
    assert lr_at(99, 1.0, 100, 0.0, 0.1) == pytest.approx(0.1)
