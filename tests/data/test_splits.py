import pytest

from smoe.data.splits import assign_splits, split_index


def counts(split):
    return {name: split.count(name) for name in ("train", "valid", "test")}


def test_sizes_per_stratum_follow_the_fractions():
    # 10 distinct keys in stratum 0 and 20 in stratum 1, valid 0.2, test 0.3:
    # stratum 0: test round(3.0) = 3, valid round(2.0) = 2, train 5; stratum 1: test 6, valid 4, train 10.
    keys = [bytes([i]) for i in range(30)]
    strata = [0] * 10 + [1] * 20
    split = assign_splits(keys, strata, 0.2, 0.3, seed=0)
    assert counts(split[:10]) == {"train": 5, "valid": 2, "test": 3}
    assert counts(split[10:]) == {"train": 10, "valid": 4, "test": 6}


def test_duplicates_share_a_split_and_count_once():
    # 4 distinct keys (a, b, c, d) with a twice and b three times; valid 0.25 -> 1 key, test 0.25 -> 1 key.
    keys = [b"a", b"b", b"a", b"c", b"b", b"d", b"b"]
    split = assign_splits(keys, None, 0.25, 0.25, seed=3)
    assert split[0] == split[2] and split[1] == split[4] == split[6]
    by_key = {k: s for k, s in zip(keys, split)}
    assert sorted(by_key.values()) == ["test", "train", "train", "valid"]


def test_split_depends_on_content_not_order_and_changes_with_seed():
    keys = [f"doc {i}".encode() for i in range(200)]
    split = dict(zip(keys, assign_splits(keys, None, 0.1, 0.1, seed=0)))
    shuffled = keys[::-1][100:] + keys[::-1][:100]
    assert dict(zip(shuffled, assign_splits(shuffled, None, 0.1, 0.1, seed=0))) == split
    assert dict(zip(keys, assign_splits(keys, None, 0.1, 0.1, seed=1))) != split


def test_split_index_lists_positions_in_order():
    assert split_index(["train", "test", "train", "valid"], "train").tolist() == [0, 2]


@pytest.mark.parametrize(("valid", "test", "match"), [(-0.1, 0.1, "valid_fraction"), (0.1, 1.0, "test_fraction"),
                                                      (0.5, 0.5, "valid_fraction \\+ test_fraction"),
                                                      ("0.1", 0.1, "valid_fraction")])
def test_bad_fractions_raise(valid, test, match):
    with pytest.raises(ValueError, match=match):
        assign_splits([b"a", b"b"], None, valid, test, seed=0)


def test_too_few_samples_for_a_requested_split_raise():
    with pytest.raises(ValueError, match="valid split is empty"):
        assign_splits([b"a", b"b", b"c"], None, 0.1, 0.4, seed=0)
    with pytest.raises(ValueError, match="strata"):
        assign_splits([b"a", b"b"], [0], 0.0, 0.0, seed=0)
