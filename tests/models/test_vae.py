import math

import pytest
import torch

from smoe.models import SMoEVAE, VAEConfig, VAEOutput
from smoe.routing import Routing


def small(num_experts: int = 3, k: int = 1, **kw) -> VAEConfig:
    """A small VAE: num_experts decoders, top-k gate without load balancing (k=1: the release's)."""
    base = {"image_size": 8, "latent_dim": 3, "encoder_channels": [2, 3, 4], "decoder_channels": [2, 3],
            "gate_hidden": [5],
            "moe": {"num_experts": num_experts, "router_options": {"k": k, "load_balance_coef": 0.0}}}
    return VAEConfig(**{**base, **kw})


def decoders_on(model: SMoEVAE, z: torch.Tensor) -> torch.Tensor:
    """(E, B, 1, H, W): every decoder on every latent."""
    return torch.stack([dec(z) for dec in model.moe.decoders])


def test_training_output_is_softmax_weighted_sum_of_all_decoders():
    model = SMoEVAE(small()).double().train()
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    out = model(x, generator=g)
    eps = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    z = out.mu + torch.exp(0.5 * out.logvar) * eps
    probs = torch.softmax(model.moe.router.gate(model.moe.gate_mlp(z)), -1)
    assert torch.allclose(out.moe[0].routing.probs, probs)
    expected = (probs.T[:, :, None, None, None] * decoders_on(model, z)).sum(0)
    assert torch.allclose(out.recon, expected)


def test_eval_output_is_exactly_the_argmax_decoder():
    model = SMoEVAE(small()).double().eval()
    x = torch.rand(5, 1, 8, 8, dtype=torch.float64)
    out = model(x)
    z = out.mu  # no sampling at eval
    best = out.moe[0].routing.probs.argmax(-1)
    expected = decoders_on(model, z)[best, torch.arange(5)]
    assert torch.equal(out.recon, expected)
    assert int(out.moe[0].stats.counts.sum()) == 5


def test_sparse_training_renormalises_the_kept_weights():
    model = SMoEVAE(small(dense_train=False, k=2)).double().train()
    out = model(torch.rand(4, 1, 8, 8, dtype=torch.float64), generator=torch.Generator().manual_seed(1))
    w = out.moe[0].routing.dense_weights()
    w = w / w.sum(-1, keepdim=True)
    z = out.mu + torch.exp(0.5 * out.logvar) * torch.randn(4, 3, dtype=torch.float64,
                                                            generator=torch.Generator().manual_seed(1))
    expected = (w.T[:, :, None, None, None] * decoders_on(model, z)).sum(0)
    assert torch.allclose(out.recon, expected)


def test_gradcheck_dense_and_sparse_mixtures():
    for dense, k in ((True, 1), (False, 2)):
        model = SMoEVAE(small(k=k)).double()
        z = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda z, m=model, d=dense: m.moe(z, dense=d).y, (z,))


def _output(recon, mu, logvar, probs) -> VAEOutput:
    from smoe.layer import MoEOutput, MoEStats

    n, e = probs.shape
    routing = Routing(token=torch.arange(n), expert=probs.argmax(-1), weight=torch.ones(n), probs=probs,
                      num_experts=e)
    stats = MoEStats(counts=torch.zeros(e), routed=torch.zeros(e), dropped_fraction=torch.zeros(()), capacity=None)
    return VAEOutput(recon=recon, mu=mu, logvar=logvar, moe=[MoEOutput(recon, torch.zeros(()), routing, stats)])


def test_four_term_loss_by_hand():
    model = SMoEVAE(small(num_experts=2, image_size=4, latent_dim=2))
    x = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    recon = torch.full_like(x, 0.5)
    mu = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    logvar = torch.zeros(2, 2, dtype=torch.float64)
    probs = torch.tensor([[0.75, 0.25], [1.0, 0.0]], dtype=torch.float64)
    terms = model.loss(x, _output(recon, mu, logvar, probs))
    # recon: 2 images * 16 pixels * 0.5^2 = 8
    assert terms["recon"].item() == pytest.approx(8.0)
    # kl: -0.5 * sum(1 + 0 - mu^2 - 1) = 0.5 * 1 = 0.5; times beta 0.01
    assert terms["kl"].item() == pytest.approx(0.005)
    # balance: usage = (0.875, 0.125); 200 * E=2 * ((0.375)^2 + (0.375)^2) = 400 * 0.28125 = 112.5
    assert terms["balance"].item() == pytest.approx(112.5)
    # entropy: mean(-(0.75 ln 0.75 + 0.25 ln 0.25), ~0) * 400 = 0.5 * 0.562335 * 400 = 112.467
    h = -(0.75 * math.log(0.75 + 1e-8) + 0.25 * math.log(0.25 + 1e-8)) - math.log(1 + 1e-8)
    assert terms["entropy"].item() == pytest.approx(400 * h / 2, rel=1e-6)
    assert set(terms) == {"recon", "kl", "balance", "entropy"}


def test_supervised_loss_by_hand_and_labels_required():
    model = SMoEVAE(small(num_experts=2, image_size=4, latent_dim=2, supervised=True))
    x = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    probs = torch.tensor([[0.75, 0.25], [0.25, 0.75]], dtype=torch.float64)
    out = _output(x, torch.zeros(2, 2, dtype=torch.float64), torch.zeros(2, 2, dtype=torch.float64), probs)
    # labels 2, 3 -> experts 2 mod 2 = 0, 3 mod 2 = 1: 200 * (-ln 0.75 - ln 0.75) = 115.073
    terms = model.loss(x, out, torch.tensor([2, 3]))
    assert terms["label"].item() == pytest.approx(-400 * math.log(0.75))
    assert set(terms) == {"recon", "kl", "label"}
    with pytest.raises(ValueError, match="needs labels"):
        model.loss(x, out)


def test_supervised_gate_gets_no_reconstruction_gradient():
    model = SMoEVAE(small(supervised=True)).train()
    x = torch.rand(6, 1, 8, 8)
    out = model(x, generator=torch.Generator().manual_seed(0))
    assert int(out.moe[0].stats.counts.sum()) == 6  # hard top-1 in training
    model.loss(x, out, torch.arange(6))["recon"].backward()
    gate = [*model.moe.gate_mlp.parameters(), *model.moe.router.parameters()]
    assert all(p.grad is None or torch.all(p.grad == 0) for p in gate)
    assert any(p.grad is not None and torch.any(p.grad != 0) for p in model.moe.decoders.parameters())


def test_moe_layers_and_bad_input():
    model = SMoEVAE(small())
    assert model.moe_layers() == [model.moe]
    with pytest.raises(ValueError, match="x must be a float \\(B, 1, 8, 8\\)"):
        model(torch.rand(2, 1, 7, 7))
    with pytest.raises(ValueError, match="divisible by 4"):
        small(image_size=10)
    with pytest.raises(ValueError, match="encoder_channels must be a list of 3"):
        small(encoder_channels=[4, 4])
    with pytest.raises(ValueError, match=r"experts are its decoders; leave \['expert', 'num_shared_experts'\]"):
        small(moe={"num_experts": 3, "expert": "gelu", "num_shared_experts": 1})
