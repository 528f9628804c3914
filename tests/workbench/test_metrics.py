import math

import pytest
import torch

from smoe import MoE, MoEStats, Routing
from smoe.blocks import Block, BlockConfig, run_blocks
from smoe.workbench.measure.instrumentation import record_routing, routing_override, top_expert_sensitivity
from smoe.workbench.measure.routing_metrics import (
    ExpertLoad,
    active_experts,
    assignment_fluctuation,
    assignment_matrix,
    coactivation,
    coactivation_nmi,
    concat_routings,
    drop_top_expert,
    dropped_fraction,
    effective_rank,
    expert_counts,
    expert_load,
    expert_specialization,
    routing_entropy,
    routing_fluctuation,
    routing_margin,
    routing_summary,
    top1_expert,
)

F64 = torch.float64


def routing(pairs, num_tokens, num_experts, mask=None, probs=None, priority=None):
    """Routing from [(token, expert, weight), ...]."""
    token = torch.tensor([p[0] for p in pairs], dtype=torch.long)
    expert = torch.tensor([p[1] for p in pairs], dtype=torch.long)
    weight = torch.tensor([float(p[2]) for p in pairs], dtype=F64)
    probs = torch.full((num_tokens, num_experts), 1 / num_experts, dtype=F64) if probs is None else probs
    return Routing(token=token, expert=expert, weight=weight, probs=probs, num_experts=num_experts,
                   mask=None if mask is None else torch.tensor(mask),
                   priority=None if priority is None else torch.tensor(priority, dtype=F64))


def sets(pairs_by_token, num_experts, mask=None):
    """Routing where token t is assigned the experts in pairs_by_token[t] (first listed = top-1, weight 1/rank)."""
    pairs = [(t, e, 1.0 / (r + 1)) for t, experts in enumerate(pairs_by_token) for r, e in enumerate(experts)]
    return routing(pairs, len(pairs_by_token), num_experts, mask=mask)


def stats(routed, counts):
    routed, counts = torch.tensor(routed), torch.tensor(counts)
    dropped = (routed.sum() - counts.sum()).float() / routed.sum().clamp_min(1).float()
    return MoEStats(counts=counts, routed=routed, dropped_fraction=dropped, capacity=None)


# ---------------------------------------------------------------- load, drops, active experts

def test_expert_load_by_hand_excludes_masked_tokens():
    # token 3 is padding: its pair (expert 3) must not count
    r = routing([(0, 0, 1), (0, 1, 1), (1, 0, 1), (1, 2, 1), (2, 0, 1), (2, 1, 1), (3, 3, 1)], 4, 4,
                mask=[True, True, True, False])
    assert expert_counts(r).tolist() == [3, 2, 1, 0]
    load = expert_load(r)
    # fractions 3/6, 2/6, 1/6, 0; mean 1.5, var = (1.5^2 + .5^2 + .5^2 + 1.5^2) / 4 = 1.25 -> cv = sqrt(1.25) / 1.5
    assert torch.allclose(load.fractions, torch.tensor([0.5, 1 / 3, 1 / 6, 0.0], dtype=F64))
    assert math.isclose(load.cv, math.sqrt(1.25) / 1.5)  # 0.745356
    assert math.isclose(load.max_over_mean, 2.0)  # 3 / 1.5


def test_expert_load_from_stats_tensor_and_balanced():
    s1, s2 = stats([2, 2, 2], [2, 1, 2]), stats([0, 2, 1], [0, 2, 1])
    assert expert_counts(s1).tolist() == [2, 1, 2]
    assert expert_counts([s1, s2]).tolist() == [2, 3, 3]  # summed over calls
    balanced = expert_load(torch.tensor([4, 4, 4, 4]))
    assert balanced.cv == 0.0 and balanced.max_over_mean == 1.0
    empty = expert_load(torch.zeros(3, dtype=torch.long))
    assert isinstance(empty, ExpertLoad) and math.isnan(empty.cv) and math.isnan(empty.max_over_mean)


def test_dropped_fraction_pools_calls():
    s1, s2 = stats([4, 2], [2, 2]), stats([1, 1], [1, 1])
    assert dropped_fraction(s1) == pytest.approx(2 / 6)
    assert dropped_fraction([s1, s2]) == pytest.approx(2 / 8)  # (2 + 0) dropped of (6 + 2) routed
    m = MoE(8, 4, 16, k=2, capacity_factor=0.5)
    out = m(torch.randn(32, 8))
    assert dropped_fraction(out.stats) == pytest.approx(float(out.stats.dropped_fraction))


def test_active_experts_threshold():
    counts = torch.tensor([3, 2, 1, 0])
    assert [active_experts(counts, c) for c in (1, 2, 3, 4)] == [3, 2, 1, 0]
    with pytest.raises(ValueError, match="min_count must be >= 1"):
        active_experts(counts, 0)


def test_expert_counts_bad_input():
    with pytest.raises(ValueError, match=r"1-D \(E,\) tensor"):
        expert_counts(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="expected a Routing"):
        expert_counts([])


# ---------------------------------------------------------------- entropy and margin

PROBS = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.25, 0.25, 0.5]], dtype=F64)


def test_routing_entropy_by_hand():
    # rows: ln 2 = 0.693147, 0, -(2 * .25 ln .25 + .5 ln .5) = 1.039721 -> mean 0.577623
    expected = (math.log(2) + 0 + (0.5 * math.log(4) + 0.5 * math.log(2))) / 3
    assert routing_entropy(PROBS) == pytest.approx(expected)
    assert routing_entropy(PROBS, normalize=True) == pytest.approx(expected / math.log(3))  # 0.525775
    assert routing_entropy(PROBS, mask=torch.tensor([True, True, False])) == pytest.approx(math.log(2) / 2)
    r = routing([(0, 0, 1)], 3, 3, probs=PROBS, mask=[False, True, True])
    assert routing_entropy(r) == pytest.approx((0 + 1.039721) / 2, abs=1e-6)  # the routing's own mask


def test_routing_margin_by_hand():
    # top-1 minus top-2 per row: .5 - .5 = 0, 1 - 0 = 1, .5 - .25 = .25 -> mean 1.25 / 3
    assert routing_margin(PROBS) == pytest.approx(1.25 / 3)
    assert routing_margin(PROBS, torch.tensor([False, True, True])) == pytest.approx(0.625)
    with pytest.raises(ValueError, match="at least 2 experts"):
        routing_margin(torch.ones(4, 1))
    with pytest.raises(ValueError, match=r"mask must have shape \(3,\)"):
        routing_margin(PROBS, torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(N, E\) tensor"):
        routing_entropy(torch.ones(3))


# ---------------------------------------------------------------- effective rank

def test_effective_rank_by_hand():
    # singular values (3, 1) -> p = (.75, .25), H = .562335 nats -> exp(H) = 1.754765
    assert effective_rank(torch.diag(torch.tensor([3.0, 1.0]))) == pytest.approx(1.754765, abs=1e-6)
    assert effective_rank(torch.eye(4, dtype=F64) * 2) == pytest.approx(4.0)  # equal singular values: full
    rank_one = torch.outer(torch.tensor([1.0, -2.0, 3.0]), torch.tensor([0.5, 1.0]))
    assert effective_rank(rank_one) == pytest.approx(1.0)
    assert effective_rank(torch.zeros(5, 3)) == 0.0


def test_effective_rank_mask_center_and_rotation_invariance():
    x = torch.tensor([[2.0, 0.0], [0.0, 2.0], [100.0, 100.0]], dtype=F64)
    mask = torch.tensor([True, True, False])
    assert effective_rank(x, mask) == pytest.approx(2.0)
    # centred: rows (1, -1), (-1, 1) -> rank one
    assert effective_rank(x, mask, center=True) == pytest.approx(1.0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=F64))
    y = torch.randn(20, 6, dtype=F64)
    assert effective_rank(y @ q) == pytest.approx(effective_rank(y))
    with pytest.raises(ValueError, match=r"x must be an \(N, d\) tensor"):
        effective_rank(torch.ones(3))


# ---------------------------------------------------------------- top-1, fluctuation, co-activation

def test_top1_expert_pairs_ties_and_empty_tokens():
    # token 0: (2, .3), (1, .7) -> 1; token 1: tie (0, .5), (3, .5) -> earliest pair, 0; token 2: 1; token 3: none
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4]] * 4, dtype=F64)
    r = routing([(0, 2, 0.3), (0, 1, 0.7), (1, 0, 0.5), (1, 3, 0.5), (2, 1, 1.0)], 4, 4, probs=probs)
    assert top1_expert(r).tolist() == [1, 0, 1, -1]
    assert top1_expert(r, by="probs").tolist() == [3, 3, 3, 3]
    masked = r.replace(mask=torch.tensor([True, False, True, True]))
    assert top1_expert(masked).tolist() == [1, -1, 1, -1]
    with pytest.raises(ValueError, match="by must be one of"):
        top1_expert(r, by="weights")


def test_routing_fluctuation_by_hand():
    before = sets([[0, 1], [2, 3], [1, 0], [], []], 4, mask=[True] * 4 + [False])
    after = sets([[1, 0], [2, 3], [1, 3], [2], []], 4, mask=[True] * 4 + [False])
    # top-1: 0->1 changed, 2->2, 1->1, -1->2 changed -> 2 / 4 (token 4 is masked)
    # sets: {0,1}={0,1}: 0; same: 0; {0,1} vs {1,3}: 1 - 1/2; {} vs {2}: 1 - 0/1 -> (0 + 0 + .5 + 1) / 4
    f = routing_fluctuation(before, after)
    assert f.top1_changed == pytest.approx(0.5)
    assert f.topk_changed == pytest.approx(0.375)
    same = routing_fluctuation(before, before)
    assert same.top1_changed == 0.0 and same.topk_changed == 0.0


def test_assignment_fluctuation_from_stored_assignments_by_hand():
    top1_a, top1_b = torch.tensor([0, 2, 1]), torch.tensor([1, 2, -1])
    sets_a = torch.tensor([[1, 1, 0], [0, 0, 1], [0, 1, 0]], dtype=torch.bool)
    sets_b = torch.tensor([[1, 1, 0], [1, 0, 1], [0, 0, 0]], dtype=torch.bool)
    # top-1: changed, same, changed -> 2/3; sets: {0,1}={0,1}: 0; {2} vs {0,2}: 1 - 1/2; {1} vs {}: 1 -> 1.5/3
    f = assignment_fluctuation(top1_a, top1_b, sets_a, sets_b)
    assert f.top1_changed == pytest.approx(2 / 3) and f.topk_changed == pytest.approx(0.5)
    empty = torch.zeros(0, 3, dtype=torch.bool)
    assert math.isnan(assignment_fluctuation(top1_a[:0], top1_b[:0], empty, empty).top1_changed)
    with pytest.raises(ValueError, match="same 3 tokens"):
        assignment_fluctuation(top1_a, top1_b[:2], sets_a, sets_b)


def test_routing_fluctuation_needs_one_token_set():
    a = sets([[0], [1]], 2)
    with pytest.raises(ValueError, match="same tokens"):
        routing_fluctuation(a, sets([[0]], 2))
    with pytest.raises(ValueError, match="same token mask"):
        routing_fluctuation(a, sets([[0], [1]], 2, mask=[True, False]))


def test_routing_fluctuation_of_an_unchanged_and_a_retrained_layer():
    m = MoE(8, 4, 16, k=2).eval()
    x = torch.randn(64, 8)
    r0 = m(x).routing
    assert routing_fluctuation(r0, m(x).routing).top1_changed == 0.0
    with torch.no_grad():
        m.router.gate.weight.copy_(m.router.gate.weight.flip(0))  # experts renamed 0<->3, 1<->2
    f = routing_fluctuation(r0, m(x).routing)
    # every token's top-1 changes name; its top-2 set changes unless it was {0,3} or {1,2}
    assert f.top1_changed == 1.0
    top2 = [set(s.nonzero().flatten().tolist()) for s in assignment_matrix(r0)]
    kept = sum(s in ({0, 3}, {1, 2}) for s in top2)
    assert f.topk_changed == pytest.approx(1 - kept / 64)


def test_coactivation_by_hand():
    first = sets([[0], [0], [1], [0, 1]], 2)
    second = sets([[1], [2], [1], [0, 1]], 3)
    # expert 0 of layer 1 serves t0, t1, t3 -> next-layer experts 1; 2; 0, 1 -> counts [1, 2, 1]
    # expert 1 serves t2, t3 -> 1; 0, 1 -> counts [1, 2, 0]
    count = torch.tensor([[1.0, 2.0, 1.0], [1.0, 2.0, 0.0]], dtype=F64)
    assert torch.equal(coactivation(first, second, "count"), count)
    assert torch.allclose(coactivation(first, second, "joint"), count / 4)
    assert torch.allclose(coactivation(first, second), count / torch.tensor([[3.0], [2.0]], dtype=F64))
    unused = coactivation(sets([[0], [0]], 2), sets([[1], [0]], 2))
    assert unused[1].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="normalize must be one of"):
        coactivation(first, second, "rows")


# NMI with arithmetic normalisation for a = (0, 0, 0, 1), b = (0, 0, 1, 1):
# H(a) = -(.75 ln .75 + .25 ln .25) = 0.5623351, H(b) = ln 2 = 0.6931472,
# H(a, b) = -(.5 ln .5 + 2 * .25 ln .25) = 1.0397208, I = 0.5623351 + 0.6931472 - 1.0397208 = 0.2157616,
# NMI = I / ((H(a) + H(b)) / 2) = 0.2157616 / 0.6277412 = 0.3437110
NMI_PARTIAL = 0.3437110


def test_coactivation_nmi_by_hand():
    assert coactivation_nmi(sets([[0], [0], [1], [1]], 2), sets([[1], [1], [0], [0]], 2)) == pytest.approx(1.0)
    assert coactivation_nmi(sets([[0], [0], [1], [1]], 2), sets([[0], [1], [0], [1]], 2)) == pytest.approx(0.0)
    first, second = sets([[0], [0], [0], [1]], 2), sets([[0], [0], [1], [1]], 2)
    assert coactivation_nmi(first, second) == pytest.approx(NMI_PARTIAL, abs=1e-6)


def test_expert_specialization_by_hand():
    labels = torch.tensor([[0, 0], [1, 1]])  # (B, T) labels, flattened to 4 tokens
    assert expert_specialization(torch.tensor([0, 0, 0, 1]), labels) == pytest.approx(NMI_PARTIAL, abs=1e-6)
    assert expert_specialization(torch.tensor([3, 3, 1, 1]), labels) == pytest.approx(1.0)  # renaming
    # a Routing with a padding token: that token's label must not count
    r = sets([[0], [0], [0], [1], [1]], 2, mask=[True, True, True, True, False])
    assert expert_specialization(r, torch.tensor([0, 0, 1, 1, 0])) == pytest.approx(NMI_PARTIAL, abs=1e-6)
    masked = torch.tensor([True, True, True, True, False])
    assert expert_specialization(torch.tensor([0, 0, 0, 1, 0]), torch.tensor([0, 0, 1, 1, 1]),
                                 mask=masked) == pytest.approx(NMI_PARTIAL, abs=1e-6)


def test_expert_specialization_bad_input():
    with pytest.raises(ValueError, match="labels must hold 4 integer values"):
        expert_specialization(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="labels must hold 4 integer values"):
        expert_specialization(torch.tensor([0, 0, 1, 1]), torch.tensor([0.0, 1.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="source must be a Routing"):
        expert_specialization(torch.tensor([0.0, 1.0]), torch.tensor([0, 1]))


def test_concat_routings_offsets_tokens():
    a = routing([(0, 1, 1.0), (1, 0, 1.0)], 2, 2)
    b = routing([(0, 1, 0.5), (2, 0, 0.5)], 3, 2, mask=[True, False, True])
    c = concat_routings([a, b])
    assert c.num_tokens == 5 and c.token.tolist() == [0, 1, 2, 4] and c.expert.tolist() == [1, 0, 1, 0]
    assert c.mask.tolist() == [True, True, True, False, True] and c.logits is None
    with pytest.raises(ValueError, match="share num_experts"):
        concat_routings([a, routing([], 1, 3)])
    with pytest.raises(ValueError, match="at least one"):
        concat_routings([])


# ---------------------------------------------------------------- top-expert removal and the layer hook

def test_drop_top_expert_by_hand():
    r = routing([(0, 2, 0.3), (0, 1, 0.7), (1, 0, 0.5), (1, 3, 0.5), (2, 1, 1.0), (3, 0, 0.6), (3, 2, 0.3)], 4, 4,
                priority=[0, 0, 0, 0, 0, -1, -1])
    d = drop_top_expert(r)
    # t0 keeps expert 2: .3 * (1.0 / .3) = 1; t1 tie, drops the earliest (expert 0), keeps 3: 1;
    # t2 keeps nothing; t3 (unnormalised weights, sum .9) keeps expert 2 with .3 * (.9 / .3) = .9
    assert d.token.tolist() == [0, 1, 3] and d.expert.tolist() == [2, 3, 2]
    assert torch.allclose(d.weight, torch.tensor([1.0, 1.0, 0.9], dtype=F64))
    assert d.priority.tolist() == [0, 0, -1]
    raw = drop_top_expert(r, renormalize=False)
    assert torch.allclose(raw.weight, torch.tensor([0.3, 0.5, 0.3], dtype=F64))


def test_drop_top_expert_gradcheck():
    r = routing([(0, 2, 0.3), (0, 1, 0.7), (1, 0, 0.2), (1, 3, 0.5), (1, 2, 0.1)], 2, 4)
    w = r.weight.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda w: drop_top_expert(r.replace(weight=w)).weight, (w,))


def test_routing_transform_hook_on_bare_moe():
    m = MoE(6, 4, 10, k=2).double()
    x = torch.randn(12, 6, dtype=F64)
    clean = m(x)
    assert m.routing_transform is None
    with routing_override(m, drop_top_expert):
        ablated = m(x)
    assert m.routing_transform is None  # restored
    assert torch.equal(m(x).y, clean.y)
    # k=2 renormalised: without its top expert, each token is served by its second choice with weight 1
    second = clean.routing.probs.topk(2, dim=-1).indices[:, 1]
    expected = torch.stack([m.experts.dense_forward(x[t:t + 1], int(second[t]))[0] for t in range(12)])
    assert torch.allclose(ablated.y, expected)
    assert torch.equal(ablated.routing.experts_per_token(), torch.ones(12, dtype=torch.long))


def test_routing_override_restores_on_error_and_needs_moe():
    m = MoE(6, 4, 10)
    with pytest.raises(RuntimeError, match="boom"), routing_override(m, drop_top_expert):
        raise RuntimeError("boom")
    assert m.routing_transform is None
    with pytest.raises(ValueError, match="no MoE layer"), routing_override(torch.nn.Linear(2, 2), None):
        pass


def test_top_expert_sensitivity_by_hand_on_bare_moe():
    m = MoE(6, 4, 10, k=2).double()
    x, target = torch.randn(12, 6, dtype=F64), torch.randn(12, 6, dtype=F64)

    def mse() -> float:
        with torch.no_grad():
            return float((m(x).y - target).square().mean())

    s = top_expert_sensitivity(m, mse)
    with torch.no_grad():
        second = m(x).routing.probs.topk(2, dim=-1).indices[:, 1]
        y2 = torch.stack([m.experts.dense_forward(x[t:t + 1], int(second[t]))[0] for t in range(12)])
    assert s.clean == pytest.approx(mse())
    assert s.ablated == pytest.approx(float((y2 - target).square().mean()))
    assert s.change == pytest.approx(s.ablated - s.clean) and s.change != 0


def test_top_expert_sensitivity_is_zero_for_identical_experts():
    m = MoE(6, 4, 10, k=2).double()
    with torch.no_grad():  # every expert the same function: removing the top one and renormalising changes nothing
        m.experts.w_in.copy_(m.experts.w_in[:1].expand_as(m.experts.w_in))
        m.experts.w_out.copy_(m.experts.w_out[:1].expand_as(m.experts.w_out))
    x = torch.randn(12, 6, dtype=F64)
    s = top_expert_sensitivity(m, lambda: float(m(x).y.square().sum()))
    assert s.change == pytest.approx(0.0, abs=1e-10)


# ---------------------------------------------------------------- recording a stack and the per-layer summary

def test_record_routing_on_a_block_stack():
    cfg = BlockConfig(d_model=8, num_heads=2, ffn_hidden=16, moe={"num_experts": 4, "router_options": {"k": 2}})
    blocks = torch.nn.ModuleList([Block(cfg), Block(cfg)]).eval()
    x = torch.randn(2, 5, 8)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    with record_routing(blocks) as rec:
        _, outs = run_blocks(blocks, x, mask)
        run_blocks(blocks, x, mask)
    assert list(rec) == ["0.ffn", "1.ffn"]
    first, second = rec["0.ffn"], rec["1.ffn"]
    assert len(first.routings) == 2 and first.input.shape == (20, 8)
    assert torch.equal(first.routings[0].token, outs[0].moe.routing.token)
    assert not first.routings[0].probs.requires_grad
    run_blocks(blocks, x, mask)
    assert len(first.routings) == 2  # hooks removed
    # the two calls saw the same tokens: the concatenated routing pairs each token with its own copy
    r = first.routing
    assert r.num_tokens == 20 and int(r.mask.sum()) == 16  # 2 calls x (10 tokens - 2 padding)
    c = coactivation(first.routing, second.routing, "count")
    assert c.shape == (4, 4) and float(c.sum()) == 16 * 2 * 2  # every real token: 2 experts x 2 experts
    assert 0.0 <= coactivation_nmi(first.routing, second.routing) <= 1.0


def test_routing_summary_keys_and_values():
    m = MoE(8, 4, 16, k=2, capacity_factor=0.5)
    x = torch.randn(2, 6, 8)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 4:] = False
    with record_routing(m) as rec:
        out = m(x, mask)
    s = routing_summary(out.routing, out.stats, rec[""].input)
    assert s["load_cv"] == pytest.approx(expert_load(out.stats).cv)
    assert s["entropy"] == pytest.approx(routing_entropy(out.routing))
    assert s["margin"] == pytest.approx(routing_margin(out.routing))
    assert s["dropped_fraction"] == pytest.approx(float(out.stats.dropped_fraction))
    assert s["input_rank"] == pytest.approx(effective_rank(x.reshape(-1, 8), mask.reshape(-1)))
    assert s["feature_rank"] == pytest.approx(effective_rank(out.routing.logits, mask.reshape(-1)))
    own = torch.softmax(out.routing.logits.double(), -1)
    assert s["entropy_own"] == pytest.approx(routing_entropy(own, mask.reshape(-1)))
    assert s["entropy_own"] == pytest.approx(s["entropy"])  # top-k: the gate's own distribution is probs
    assert all(math.isfinite(v) for v in s.values())
    bare = routing_summary(sets([[0], [0]], 1))
    assert set(bare) == {"load_cv", "load_max_over_mean", "active_experts", "entropy"}
