import pytest

import smoe
from smoe.routing import Router, available_routers, build_router, register_router, router_options


def test_core_routers_are_registered():
    assert {"topk", "expert_choice"} <= set(available_routers())
    assert available_routers("top*") == ["topk"]


def test_unknown_router_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown router 'nope'.*topk"):
        build_router("nope", d_model=4, num_experts=2)


def test_unknown_option_lists_valid_options():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['tempreature'\].*load_balance_coef"):
        build_router("topk", d_model=4, num_experts=2, tempreature=1.0)


def test_moe_unknown_router_and_option():
    with pytest.raises(ValueError, match="available routers"):
        smoe.MoE(8, 2, 16, router="sinkhorn_typo")
    with pytest.raises(ValueError, match="valid options"):
        smoe.MoE(8, 2, 16, bogus=3)


def test_router_options_reports_defaults():
    opts = router_options("topk")
    assert opts["k"] == 2 and opts["softmax"] == "before" and "d_model" not in opts


def test_register_a_new_router_is_one_decorated_class():
    @register_router("_test_dummy")
    class Dummy(Router):
        pass

    assert "_test_dummy" in available_routers()
    assert isinstance(build_router("_test_dummy", d_model=4, num_experts=3), Dummy)
    with pytest.raises(ValueError, match="already registered"):
        register_router("_test_dummy")(type("Other", (Router,), {}))
