import math

import numpy as np

from sslkd.schedules import cosine_schedule


def test_cosine_with_warmup():
    s = cosine_schedule(1.0, 0.1, total_steps=20, warmup_steps=5, warmup_start=0.0)
    assert len(s) == 20
    np.testing.assert_allclose(s[:5], [0, 0.2, 0.4, 0.6, 0.8])
    assert s[5] == 1.0
    for i in range(5, 20):
        t = (i - 5) / 15
        assert math.isclose(s[i], 0.1 + 0.45 * (1 + math.cos(math.pi * t)))
    assert np.all(np.diff(s[5:]) < 0)


def test_momentum_schedule_goes_to_one():
    m = cosine_schedule(0.996, 1.0, 100)
    assert m[0] == 0.996 and m[-1] < 1.0 and 1 - m[-1] < 1e-5
    assert np.all(np.diff(m) >= 0)


def test_fine_tuning_warmup_counts_from_the_first_step():
    """MAE/BEiT fine-tuning: lr (i + 1) / W of the base during warmup, then the cosine to zero."""
    s = cosine_schedule(1.0, 0.0, 10, 4, warmup_from_first=True)
    np.testing.assert_allclose(s[:4], [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(s[4:], [0.5 * (1 + math.cos(math.pi * t / 6)) for t in range(6)])
    np.testing.assert_allclose(cosine_schedule(1.0, 0.0, 10, 4)[:4], [0.0, 0.25, 0.5, 0.75])


def test_default_freeze_covering_a_tiny_run_warns():
    """The default freezes the first 1% of a run, at least one step: in a 1-step run (or one cut to
    a step by train.max_steps) that is the whole run, which the user is told."""
    import warnings

    import pytest

    from sslkd.schedules import freeze_steps

    with pytest.warns(UserWarning, match="stays frozen for this whole run of 1 step"):
        assert freeze_steps(None, 1, 1, None) == 1
    with pytest.warns(UserWarning, match="train.freeze_last_layer=0"):
        assert freeze_steps(None, 100, 625, 1) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert freeze_steps(None, 100, 625, None) == 7  # a longer run: no warning
        assert freeze_steps(None, 1, 1, None, has_last_layer=False) == 1  # nothing to freeze
