"""SMoE-VAE (Nikolic, Oguz, Psaltis 2025, arXiv 2509.10025): one encoder, a gate on the latent, decoders as experts.

Legend: B batch (one image = one token), H = W image side, z latent width, E experts (decoders).

Follows the authors' release (`strajdzsha/smoe-vae`, read for the method notes; the paper body was not read):
    mu, logvar = Enc(x);  z = mu + exp(logvar / 2) * eps    (z = mu at eval: our choice, the release's
                                                              eval-time sampling was not checked)
    features = MLP(z) (z -> 64 -> 32, ReLU after each);  routing = Router(features)   (any registered router;
    its linear gate is the MLP's last layer, 32 -> E, without bias: the release's last layer has a bias)
    training, dense (the paper):  xhat = sum_e p_e Dec_e(z)  with p = routing.probs, every decoder runs
    eval, or training with dense_train=False:  the router's kept experts, weights renormalised to sum 1 per image
    (decoders output images, so the mixture stays convex); with top-1 that is the paper's xhat = Dec_argmax(z)
    loss = SSE(xhat, x) + beta * KL + balance_coef * E * sum_e (mean_b p_be - 1/E)^2
           + entropy_coef * mean_b H(p_b)        (SSE and KL summed over the batch, the gate terms batch means)
Defaults are the release's: latent 32, E = 5, beta = 0.01, balance 200, entropy 400 (batch 128; the gate
terms do not scale with the batch, so other batch sizes change their relative weight).

Label-supervised baseline (supervised=True, as released): hard top-1 routing in training and eval, the gate
trained only by label_coef * sum_b CE(p_b, label_b mod E) (reconstruction gradients never reach it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoe._validate import check_float, check_int
from smoe.dispatch import Dispatcher
from smoe.layer import MoEConfig, MoEOutput, MoEStats, aux_total
from smoe.moe_config import option_values
from smoe.routing import Routing, RoutingContext, build_router

# the MoEConfig fields of a layer with MLP experts, which the SMoE-VAE (decoders as experts) has no use for
UNUSED_MOE_FIELDS = ("method", "expert", "bias", "backend", "check_finite", "num_shared_experts", "shared_gate")


def release_moe() -> MoEConfig:
    """The release's gate: 5 experts, top-1 (the paper's hard routing at eval)."""
    return MoEConfig(num_experts=5, router_options={"k": 1})


@dataclass(kw_only=True)
class VAEConfig:
    """SMoE-VAE. encoder_channels: conv3x3 widths with strides 1, 2, 2; decoder_channels: the "lite" decoder's
    two conv widths; gate_hidden: the gate MLP before the router's linear gate. moe: the gate's MoEConfig (or a
    mapping of its fields): num_experts decoders, the router and its options, capacity; no widths (the router's
    input is the gate MLP's output) and none of the MLP-expert fields (UNUSED_MOE_FIELDS)."""

    image_size: int = 28
    latent_dim: int = 32
    encoder_channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    decoder_channels: list[int] = field(default_factory=lambda: [8, 16])
    gate_hidden: list[int] = field(default_factory=lambda: [64, 32])
    moe: MoEConfig = field(default_factory=release_moe)
    dense_train: bool = True
    supervised: bool = False
    beta: float = 0.01
    balance_coef: float = 200.0
    entropy_coef: float = 400.0
    label_coef: float = 200.0

    def __post_init__(self):
        check_int("image_size", self.image_size, low=4)
        if self.image_size % 4:
            raise ValueError(f"image_size must be divisible by 4 (two stride-2 convolutions), got {self.image_size}")
        check_int("latent_dim", self.latent_dim, low=1)
        for name, length in (("encoder_channels", 3), ("decoder_channels", 2), ("gate_hidden", None)):
            value = getattr(self, name)
            if not isinstance(value, list) or (length is not None and len(value) != length):
                raise ValueError(f"{name} must be a list of {length or 'any number of'} ints, got {value!r}")
            for c in value:
                check_int(name, c, low=1)
        self.moe = MoEConfig.of(self.moe, "moe")
        defaults = MoEConfig.__dataclass_fields__
        unused = [n for n in ("d_model", "hidden", *UNUSED_MOE_FIELDS) if getattr(self.moe, n) != defaults[n].default]
        if unused:
            raise ValueError(f"moe: the SMoE-VAE's experts are its decoders; leave {unused} at their defaults")
        for name in ("beta", "balance_coef", "entropy_coef", "label_coef"):
            check_float(name, getattr(self, name), low=0.0)
        for name in ("dense_train", "supervised"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class Encoder(nn.Module):
    """x: (B, 1, H, W) -> mu, logvar: (B, z). Three conv3x3 (strides 1, 2, 2) with ReLU, then two linear heads."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        c1, c2, c3 = config.encoder_channels
        self.convs = nn.Sequential(
            nn.Conv2d(1, c1, 3, stride=1, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(c2, c3, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(),
        )
        flat = c3 * (config.image_size // 4) ** 2
        self.mu = nn.Linear(flat, config.latent_dim)
        self.logvar = nn.Linear(flat, config.latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.convs(x)
        return self.mu(h), self.logvar(h)


class Decoder(nn.Module):
    """The release's "lite" decoder. z: (B, z) -> (B, 1, H, W) in [0, 1]."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        c1, c2 = config.decoder_channels
        self.side = config.image_size // 4
        self.c1 = c1
        self.fc = nn.Linear(config.latent_dim, c1 * self.side ** 2)
        self.convs = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c1, c2, 3, padding=1), nn.ELU(),
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c2, 1, 3, padding=1), nn.Sigmoid(),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.convs(self.fc(z).view(-1, self.c1, self.side, self.side))


class DecoderMoE(nn.Module):
    """The VAE's MoE layer: gate MLP + router on z, decoders as experts, the shared dispatcher for sparse calls."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width = config.latent_dim
        for hidden in config.gate_hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.gate_mlp = nn.Sequential(*layers)
        moe = config.moe
        self.router = build_router(moe.router, d_model=width, num_experts=moe.num_experts,
                                   **option_values(moe.router_options))
        self.dispatcher = Dispatcher(moe.num_experts, moe.capacity_factor, moe.capacity_rounding,
                                     moe.capacity_multiple)
        self.decoders = nn.ModuleList(Decoder(config) for _ in range(moe.num_experts))
        self.routing_transform: Callable[[Routing], Routing] | None = None

    def forward(self, z: Tensor, *, dense: bool, unit_weights: bool = False, step: int | None = None,
                generator: torch.Generator | None = None) -> MoEOutput:
        """z: (B, z) -> MoEOutput with y: (B, 1, H, W).

        dense: y = sum_e probs_e Dec_e(z) over all experts; otherwise the kept pairs, weights renormalised per
        image (unit_weights: weight 1, no gradient to the gate).
        """
        routing = self.router(self.gate_mlp(z), RoutingContext(batch_shape=(z.shape[0],), step=step,
                                                               generator=generator))
        if self.routing_transform is not None:
            routing = self.routing_transform(routing)
        plan = self.dispatcher.plan(routing).kept()  # the decoders run on the kept rows
        if dense:
            probs = routing.probs.to(z.dtype)
            y = sum(probs[:, e, None, None, None] * dec(z) for e, dec in enumerate(self.decoders))
        else:
            rows = torch.cat([dec(z[plan.token[lo:hi]]) for dec, lo, hi in zip(self.decoders, *_bounds(plan.counts))])
            if unit_weights:
                weight = torch.ones_like(plan.weight)
            else:
                total = plan.weight.new_zeros(z.shape[0]).index_add(0, plan.token, plan.weight)
                weight = plan.weight / total[plan.token].clamp_min(torch.finfo(total.dtype).tiny)
            flat = self.dispatcher.combine(rows.flatten(1), replace(plan, row_weight=weight), z.shape[0])
            y = flat.view(z.shape[0], 1, *rows.shape[-2:])
        return MoEOutput(y=y, aux_loss=aux_total(routing.aux, z.device), routing=routing,
                         stats=MoEStats.from_plan(plan))

    @torch.no_grad()
    def after_step(self, stats: list[MoEStats] | None = None) -> None:
        """Called by the Trainer once per optimizer step with this layer's stats of that step."""
        self.router.after_step(stats)


def _bounds(counts: Tensor) -> tuple[list[int], list[int]]:
    """(E,) group sizes -> the start and end row of each expert's group."""
    ends = torch.cumsum(counts, 0).tolist()
    return [0, *ends[:-1]], ends


@dataclass
class VAEOutput:
    """recon: (B, 1, H, W); mu, logvar: (B, z); moe: the one MoEOutput of `model.moe_layers()`."""

    recon: Tensor
    mu: Tensor
    logvar: Tensor
    moe: list[MoEOutput]


class SMoEVAE(nn.Module):
    """SMoE-VAE. forward(x: (B, 1, H, W) in [0, 1]) -> VAEOutput; loss(x, out, labels) -> named loss terms."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.moe = DecoderMoE(config)

    def moe_layers(self) -> list[DecoderMoE]:
        return [self.moe]

    def forward(self, x: Tensor, *, step: int | None = None, generator: torch.Generator | None = None) -> VAEOutput:
        side = self.config.image_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, side, side) or not x.is_floating_point():
            raise ValueError(f"x must be a float (B, 1, {side}, {side}) tensor, got {tuple(x.shape)} {x.dtype}")
        mu, logvar = self.encoder(x)
        if self.training:
            eps = torch.randn(mu.shape, dtype=mu.dtype, device=mu.device, generator=generator)
            z = mu + torch.exp(0.5 * logvar) * eps
        else:
            z = mu
        dense = self.training and self.config.dense_train and not self.config.supervised
        moe = self.moe(z, dense=dense, unit_weights=self.config.supervised, step=step, generator=generator)
        return VAEOutput(recon=moe.y, mu=mu, logvar=logvar, moe=[moe])

    def loss(self, x: Tensor, out: VAEOutput, labels: Tensor | None = None) -> dict[str, Tensor]:
        """The weighted loss terms (their sum is the VAE loss; the router's own aux losses are not included).

        x: (B, 1, H, W), labels: (B,) long, needed by the supervised baseline.
        """
        cfg = self.config
        probs = out.moe[0].routing.probs
        terms = {
            "recon": F.mse_loss(out.recon, x, reduction="sum"),
            "kl": cfg.beta * -0.5 * torch.sum(1 + out.logvar - out.mu.pow(2) - out.logvar.exp()),
        }
        if cfg.supervised:
            if labels is None:
                raise ValueError("the supervised SMoE-VAE needs labels (B,) long")
            target = labels % cfg.moe.num_experts
            terms["label"] = cfg.label_coef * F.nll_loss(probs.clamp_min(1e-12).log(), target, reduction="sum")
        else:
            usage = probs.mean(0)
            e = cfg.moe.num_experts
            terms["balance"] = cfg.balance_coef * e * (usage - 1 / e).pow(2).sum()
            entropy = -(probs * torch.log(probs + 1e-8)).sum(-1)
            terms["entropy"] = cfg.entropy_coef * entropy.mean()
        return terms
