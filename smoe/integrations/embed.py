"""MoEE embeddings of MoE language models (smoe LMs and HF sparse-MoE models).

Li & Zhou 2024, "Your Mixture-of-Experts LLM Is Secretly an Embedding Model for Free" (USMoE uses the same
protocol): "hs" the last real token's last-layer hidden state, "rw" the last real token's router logits
concatenated over the MoE layers, "moee" both (each z-scored over the batch). The offline evaluation suite
behind `smoe eval-embed` is `smoe.workbench.run.embed_suite`.

Legend: B batch, T tokens, d hidden size, n documents.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from smoe.integrations.hf import record_router_logits

KINDS = ("hs", "rw", "moee")
Embedder = Callable[[Tensor, Tensor], dict[str, Tensor]]  # (ids (B, T), mask (B, T)) -> {kind: (B, D)}


def last_token_index(mask: Tensor) -> Tensor:
    """(B, T) mask -> (B,) index of each row's last real token (right or left padding)."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    return (mask.long() * (positions + 1)).argmax(1)


def embeddings_from(hidden: Tensor, layer_logits: list[Tensor], mask: Tensor) -> dict[str, Tensor]:
    """hidden: (B, T, d), layer_logits: per MoE layer (B, T, E), mask (B, T) -> {"hs", "rw", "moee"}."""
    idx = last_token_index(mask)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    hs = hidden[rows, idx].float()
    rw = torch.cat([x[rows, idx].float() for x in layer_logits], dim=-1)
    return {"hs": hs, "rw": rw, "moee": torch.cat([_zscore(hs), _zscore(rw)], dim=-1)}


def _zscore(x: Tensor) -> Tensor:
    return (x - x.mean(0)) / x.std(0, correction=0).clamp_min(1e-6)


def smoe_lm_embedder(model: nn.Module) -> Embedder:
    """Embedder of an smoe LM (`smoe.models.LM`): hidden state after the final LayerNorm, router logits per layer."""

    @torch.no_grad()
    def embed(ids: Tensor, mask: Tensor) -> dict[str, Tensor]:
        captured = {}
        hook = model.ln_f.register_forward_hook(lambda m, a, out: captured.update(hidden=out))
        try:
            out = model(ids, mask)
        finally:
            hook.remove()
        logits = [o.routing.logits if o.routing.logits is not None else o.routing.probs.clamp_min(1e-30).log()
                  for o in out.moe]
        return embeddings_from(captured["hidden"], [x.view(*ids.shape, -1) for x in logits], mask)

    return embed


def embed_all(embed: Embedder, ids: Tensor, mask: Tensor, batch_size: int = 32) -> dict[str, Tensor]:
    """Embed n documents in batches -> {kind: (n, D)}; "moee" is z-scored over all n, not per batch."""
    parts: dict[str, list[Tensor]] = {}
    for start in range(0, ids.shape[0], batch_size):
        out = embed(ids[start:start + batch_size], mask[start:start + batch_size])
        for kind in ("hs", "rw"):
            parts.setdefault(kind, []).append(out[kind].cpu())
    hs, rw = torch.cat(parts["hs"]), torch.cat(parts["rw"])
    return {"hs": hs, "rw": rw, "moee": torch.cat([_zscore(hs), _zscore(rw)], dim=-1)}


def hf_embedder(model: nn.Module) -> Embedder:
    """Embedder of a HF sparse-MoE causal LM : last-layer hidden states and router logits."""

    @torch.no_grad()
    def embed(ids: Tensor, mask: Tensor) -> dict[str, Tensor]:
        with record_router_logits(model) as logits:
            out = model(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
        return embeddings_from(out.hidden_states[-1], [x.view(*ids.shape, -1) for x in logits], mask.bool())

    return embed
