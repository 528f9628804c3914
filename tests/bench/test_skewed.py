import pytest
import torch

from smoe.bench.skewed import SHAPE, SkewedStream, load_cv, run, window_mean
from smoe.layer import MoEConfig


def test_load_cv_by_hand():
    # counts [1, 3]: mean 2, population std 1 -> CV 0.5
    assert abs(load_cv(torch.tensor([1, 3])) - 0.5) < 1e-12
    assert load_cv(torch.tensor([4, 4, 4])) == 0.0


def test_bias_balancing_fixes_the_skewed_stream_and_no_bias_does_not():
    """Short run (rate 0.01 instead of 0.001 so that 30 steps suffice), two micro-batches per step."""

    def curve(rate):
        opts = {"bias_rate": rate, "seq_aux_coef": 0.0}
        moe = MoEConfig(**SHAPE, router="deepseek", router_options=opts)
        return run(SkewedStream(moe=moe, steps=30, tokens=256, micro_batches=2))

    balanced, skewed = curve(0.01), curve(None)
    assert balanced[0] == skewed[0] > 0.3  # same start, imbalanced
    end_balanced, end_skewed = window_mean(balanced, 29, 10), window_mean(skewed, 29, 10)
    assert end_balanced < 0.5 * balanced[0] and end_balanced < 0.5 * end_skewed
    assert end_skewed > 0.9 * skewed[0]


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, "steps must be >= 1"),
    ({"hot": 9}, "hot must be <= 8"),
    ({"lr": 0.0}, "lr must be > 0"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SkewedStream(**kwargs)
