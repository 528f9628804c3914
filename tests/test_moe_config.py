"""MoEConfig: the one typed config of a layer. Round trip, validation naming the argument, the keyword
convenience equal to the config, and the flat spelling of older configs read in today's."""

import dataclasses

import pytest
import torch
import yaml

from smoe import MoE, MoEConfig, S2MoEOptions, build_moe
from smoe.moe_config import nest_flat_moe, nest_keywords
from smoe.routing import router_class
from smoe.routing.expert_choice import ExpertChoiceOptions
from smoe.routing.topk import TopKOptions
from smoe.routing.xmoe import XMoEOptions


def test_router_options_are_the_routers_own_typed_options():
    config = MoEConfig(num_experts=4, router="xmoe", router_options={"dim": 8})
    assert type(config.router_options) is XMoEOptions and config.router_options.dim == 8
    assert config.router_options.k == XMoEOptions().k == 2  # k defaulted by the router, nowhere else
    default = MoEConfig(num_experts=4)
    assert type(default.router_options) is TopKOptions and default.router_options == TopKOptions()
    assert MoEConfig(num_experts=4, router="sinkhorn").router_options.k == 1  # the router's own default now applies


@pytest.mark.parametrize("config", [
    MoEConfig(num_experts=4),
    MoEConfig(num_experts=8, d_model=16, hidden=32, router="deepseek", router_options={"n_group": 2, "k": 3},
              capacity_factor=1.25, capacity_rounding="round", capacity_multiple=4, expert="gelu", bias=True,
              backend="loop", check_finite=True, num_shared_experts=2, shared_gate=True),
    MoEConfig(num_experts=4, router="expert_choice", router_options={"capacity_factor": 2.0}),
    MoEConfig(num_experts=4, d_model=8, hidden=16, method="s2moe", method_options={"noise_scale": 0.5}),
])
def test_to_dict_from_dict_round_trip_through_yaml(config):
    data = config.to_dict()
    assert isinstance(data["router_options"], dict) and data["router_options"]["k"] == config.router_options.k
    again = MoEConfig.from_dict(yaml.safe_load(yaml.safe_dump(data)))
    assert again == config and type(again.router_options) is type(config.router_options)
    assert type(again.method_options) is type(config.method_options)


def test_auto_options_stay_auto_in_the_saved_config():
    """normalize=None (auto: True for k > 1) is saved as None, so a saved config changed to k=1 still means auto."""
    data = MoEConfig(num_experts=4).to_dict()
    assert data["router_options"]["normalize"] is None
    data["router_options"]["k"] = 1
    assert MoEConfig.from_dict(data).router_options.renormalize is False


@pytest.mark.parametrize("kwargs, match", [
    ({"router": "nope"}, "unknown router 'nope'; available routers: .*attention, deepseek"),
    ({"router": "s2moe"}, "router='s2moe' is a layer-level method, not a router: set method='s2moe'"),
    ({"router_options": {"bogus": 1}}, r"router_options \(router 'topk'\): unknown option\(s\) \['bogus'\]; valid"),
    ({"router_options": {"k": 5}}, r"router_options \(router 'topk'\): k=5 must be <= num_experts=4"),
    ({"router_options": {"k": 0}}, r"router_options \(router 'topk'\): k must be >= 1"),
    ({"router_options": XMoEOptions()}, r"router_options \(router 'topk'\) must be a TopKOptions"),
    ({"router_options": {"eval_k": 9}}, "eval_k must be <= 4"),
    ({"num_experts": 0}, "num_experts must be >= 1"),
    ({"d_model": 0}, "d_model must be >= 1"),
    ({"capacity_factor": 0.0}, "capacity_factor must be > 0"),
    ({"router": "expert_choice", "capacity_factor": 1.0}, "router 'expert_choice' owns capacity; set router_options"),
    ({"capacity_rounding": "floor"}, "capacity_rounding must be one of"),
    ({"expert": "moe"}, "expert must be one of"),
    ({"backend": "fast"}, "backend must be one of"),
    ({"shared_gate": True}, "shared_gate=True needs num_shared_experts >= 1"),
    ({"method": "nope"}, "unknown method 'nope'; layer-level methods: s2moe"),
    ({"method_options": {"eval_k": 1}}, "method_options must be None without a method"),
    ({"method": "s2moe", "method_options": {"noise_scale": -1.0}}, r"method_options \(method 's2moe'\): noise_scale"),
    ({"method": "s2moe", "router": "usmoe"}, "needs a router with an eval_k option"),
])
def test_bad_values_are_errors_naming_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MoEConfig(**{"num_experts": 4, **kwargs})


def test_from_dict_names_unknown_and_missing_keys():
    with pytest.raises(ValueError, match=r"moe: unknown key\(s\) \['k'\]; valid keys: num_experts"):
        MoEConfig.from_dict({"num_experts": 4, "k": 2})
    with pytest.raises(ValueError, match=r"moe: .*num_experts"):
        MoEConfig.from_dict({"router": "topk"})


def test_keyword_convenience_builds_the_same_config():
    keywords = MoE(16, 4, 32, router="topk", k=1, capacity_factor=1.25, noise="fixed", expert="gelu").config
    nested = MoEConfig(num_experts=4, d_model=16, hidden=32, router="topk",
                       router_options=TopKOptions(k=1, noise="fixed"), capacity_factor=1.25, expert="gelu")
    assert keywords == nested
    # a router that owns capacity takes capacity_factor as its option, and dispatch stays dropless
    owned = MoE(16, 4, 32, router="expert_choice", capacity_factor=2.0)
    assert owned.config.router_options == ExpertChoiceOptions(capacity_factor=2.0)
    assert owned.config.capacity_factor is None and owned.dispatcher.capacity_factor is None
    # a layer-level method's name selects it, its own options go to method_options, the rest to its router
    s2 = build_moe(16, 4, 32, router="s2moe", k=2, noise_scale=0.5, load_balance_coef=0.1).config
    assert (s2.method, s2.router, s2.method_options) == ("s2moe", "topk", S2MoEOptions(noise_scale=0.5))
    assert s2.router_options == TopKOptions(k=2, load_balance_coef=0.1)


@pytest.mark.parametrize("router, options", [("topk", {"k": 1, "noise": "fixed"}), ("xmoe", {"dim": 4}),
                                             ("deepseek", {"n_group": 2})])
def test_keyword_and_config_construction_give_the_same_parameters_bit_for_bit(router, options):
    torch.manual_seed(3)
    by_keywords = MoE(16, 4, 32, router=router, num_shared_experts=1, **options)
    torch.manual_seed(3)
    by_config = MoE(MoEConfig(num_experts=4, d_model=16, hidden=32, router=router,
                              router_options=router_class(router).Options(**options), num_shared_experts=1))
    a, b = by_keywords.state_dict(), by_config.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    x = torch.randn(2, 5, 16)
    g = torch.Generator().manual_seed(0)
    y = by_keywords(x, generator=g).y
    assert torch.equal(y, by_config(x, generator=g.manual_seed(0)).y)


def test_a_layer_needs_its_widths_and_a_model_config_leaves_them_to_the_model():
    config = MoEConfig(num_experts=4)
    with pytest.raises(ValueError, match="needs d_model and hidden"):
        MoE(config)
    sized = config.sized(16, 32)
    assert (sized.d_model, sized.hidden) == (16, 32) and MoE(sized).experts.w_in.shape == (4, 16, 64)
    with pytest.raises(ValueError, match=r"moe\.hidden=32 differs from the model's hidden=8"):
        sized.sized(16, 8)
    with pytest.raises(ValueError, match="pass a MoEConfig alone"):
        MoE(sized, 4, 32)
    with pytest.raises(ValueError, match=r"layer-level method, not a router: build it with smoe\.build_moe"):
        MoE(dataclasses.replace(sized, method="s2moe"))


def test_nest_keywords_sorts_flat_keywords():
    assert nest_keywords({"router": "topk", "k": 2, "capacity_factor": 1.5, "noise": "fixed", "bias": True}) == {
        "router": "topk", "capacity_factor": 1.5, "bias": True, "router_options": {"k": 2, "noise": "fixed"},
        "method_options": None}


def test_a_flat_model_section_of_an_older_run_reads_in_todays_spelling():
    old = {"d_model": 64, "num_layers": 2, "ffn_hidden": 128, "expert": "swiglu", "num_experts": 4, "k": 2,
           "router": "topk", "router_options": {"noise": "fixed"}, "capacity_factor": None, "num_shared_experts": 0,
           "shared_gate": False, "moe_every": 1}
    new = nest_flat_moe(old)
    assert {k: v for k, v in new.items() if k != "moe"} == {"d_model": 64, "num_layers": 2, "ffn_hidden": 128,
                                                             "moe_every": 1}
    assert MoEConfig.from_dict(new["moe"]) == MoEConfig(num_experts=4, router_options={"k": 2, "noise": "fixed"})
    assert nest_flat_moe(new) == new  # today's spelling comes back as it is
    s2moe = nest_flat_moe({"num_experts": 4, "k": 2, "router": "s2moe",
                           "router_options": {"noise_scale": 0.5, "base_router": "xmoe", "dim": 8}})["moe"]
    config = MoEConfig.from_dict({**s2moe, "method_options": {**s2moe["method_options"], "eval_k": None}})
    assert (config.method, config.router, config.router_options.dim) == ("s2moe", "xmoe", 8)
    assert config.method_options.noise_scale == 0.5
