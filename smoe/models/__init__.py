"""smoe models: the MoE LM (and its classification head), V-MoE, SMoE-VAE. Each takes a config dataclass and
returns an output whose `moe` field holds one `MoEOutput` per layer of `model.moe_layers()`."""

from smoe.models.common import ModelOutput, StackConfig, aux_losses, moe_positions
from smoe.models.lm import LM, LMConfig
from smoe.models.vae import SMoEVAE, VAEConfig, VAEOutput
from smoe.models.vit import ViT, ViTConfig

__all__ = [
    "LM",
    "LMConfig",
    "ModelOutput",
    "SMoEVAE",
    "StackConfig",
    "VAEConfig",
    "VAEOutput",
    "ViT",
    "ViTConfig",
    "aux_losses",
    "moe_positions",
]
