import dataclasses

import pytest

import smoe
from smoe.routing import Router, available_routers, build_router, register_router, router_class, router_options
from smoe.routing.base import RouterOptions


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
    with pytest.raises(ValueError, match=r"router '_test_dummy' is registered twice: by .*Dummy from module "
                                         r"tests.routing.test_registry and by Other"):
        register_router("_test_dummy")(type("Other", (Router,), {}))


def test_each_router_declares_its_options_once_as_a_validated_dataclass():
    """Options are a RouterOptions dataclass per router, inherited fields not repeated (ssr keeps sinkhorn's
    transport options, the graph routers topk's softmax top-k ones); bad values fail in __post_init__."""
    for name in available_routers():
        cls = router_class(name)
        assert dataclasses.is_dataclass(cls.Options) and issubclass(cls.Options, RouterOptions), name
        assert router_options(name) == {f.name: f.default for f in dataclasses.fields(cls.Options)}
    assert {"cost", "eps", "max_iter", "tol", "plan_grad"} <= set(router_options("ssr"))
    assert not {"weights", "sinkhorn_in_eval"} & set(router_options("ssr"))  # fixed by SSR, not options
    assert {"mix", "normalize", "load_balance_coef"} <= set(router_options("similarity"))
    assert not {"noise", "softmax", "bias_rate"} & set(router_options("attention"))  # unused by graph routers
    with pytest.raises(ValueError, match=r"softmax must be one of \['before', 'after'\], got 'middle'"):
        router_class("topk").Options(softmax="middle")
    with pytest.raises(ValueError, match="k must be >= 1"):
        build_router("sinkhorn", d_model=4, num_experts=2, k=0)
    router = build_router("topk", d_model=4, num_experts=3, k=1, noise="fixed")
    assert router.options.k == 1 and router.options.noise == "fixed" and router.options.renormalize is False
    assert not hasattr(router, "k")  # options are read from router.options, never copied
