import pytest
import torch

from smoe.data.batches import lm_batches, tensor_batches


def take(it, n):
    return [next(it) for _ in range(n)]


def test_lm_windows_come_from_the_stream_and_targets_shift_by_one():
    stream = torch.arange(100, 200)  # token value = 100 + position, so a window reveals its start
    g = torch.Generator().manual_seed(0)
    for inputs, targets in take(lm_batches(stream, 4, 8, g), 20):
        assert inputs.shape == targets.shape == (4, 8) and inputs.dtype == torch.long
        starts = inputs[:, 0] - 100
        assert torch.equal(inputs, stream[starts[:, None] + torch.arange(8)])
        assert torch.equal(targets, inputs + 1)
        assert int(starts.min()) >= 0 and int(starts.max()) <= 100 - 9


def test_lm_every_start_is_reachable():
    stream = torch.arange(12)
    g = torch.Generator().manual_seed(1)
    seen = {int(x[0, 0]) for x, _ in take(lm_batches(stream, 1, 3, g), 300)}
    assert seen == set(range(12 - 3))  # starts 0 .. L - T - 1 = 8


def test_lm_batches_resume_exactly_from_the_generator_state():
    stream = torch.randint(0, 50, (500,))
    g = torch.Generator().manual_seed(3)
    straight = take(lm_batches(stream, 3, 10, g), 6)
    g = torch.Generator().manual_seed(3)
    take(lm_batches(stream, 3, 10, g), 4)
    state = g.get_state().clone()
    resumed = torch.Generator()
    resumed.set_state(state)
    for (a, b), (c, d) in zip(straight[4:], take(lm_batches(stream, 3, 10, resumed), 2)):
        assert torch.equal(a, c) and torch.equal(b, d)


def test_tensor_batches_keep_rows_aligned_distinct_and_resume_exactly():
    x, y = torch.arange(30).reshape(10, 3), torch.arange(10)
    g = torch.Generator().manual_seed(0)
    straight = take(tensor_batches(x, y, batch_size=4, generator=g), 7)
    for bx, by in straight:
        assert torch.equal(bx, x[by]) and len(set(by.tolist())) == 4
    assert {i for _, by in straight for i in by.tolist()} == set(range(10))
    g = torch.Generator().manual_seed(0)
    take(tensor_batches(x, y, batch_size=4, generator=g), 5)
    resumed = torch.Generator()
    resumed.set_state(g.get_state())
    for a, b in zip(straight[5:], take(tensor_batches(x, y, batch_size=4, generator=resumed), 2)):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_tensor_batches_without_shuffle_make_one_ordered_pass():
    x = torch.arange(10)
    assert [b.tolist() for (b,) in tensor_batches(x, batch_size=4, shuffle=False)] == [[0, 1, 2, 3], [4, 5, 6, 7],
                                                                                      [8, 9]]


def test_bad_arguments():
    g = torch.Generator()
    with pytest.raises(ValueError, match="seq_len \\+ 1"):
        lm_batches(torch.arange(5), 2, 5, g)
    with pytest.raises(ValueError, match="1-D long"):
        lm_batches(torch.zeros(100), 2, 5, g)
    with pytest.raises(ValueError, match="batch_size"):
        lm_batches(torch.arange(100), 0, 5, g)
    with pytest.raises(ValueError, match="first dim"):
        tensor_batches(torch.zeros(4), torch.zeros(5), batch_size=2, generator=g)
    with pytest.raises(ValueError, match=r"needs a torch\.Generator"):
        tensor_batches(torch.zeros(4), batch_size=2)
    with pytest.raises(ValueError, match="exceeds"):
        tensor_batches(torch.zeros(4), batch_size=5, generator=g)
    with pytest.raises(ValueError, match="at least one"):
        tensor_batches(batch_size=2, generator=g)
