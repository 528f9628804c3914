"""The registered claims of the seed papers and the comparisons that test them: what docs/results.md reproduces
and `smoe claims` lists. One `Comparison` per grid, one `Claim` per statement of a paper.

The language-model comparisons tune the learning rate per entry (`LM_TUNE`, half a decade either side of the tiny
preset's 3e-3, which brackets the medium preset's 2e-3): a router or residual rule is never judged at another's
learning rate."""

from __future__ import annotations

from smoe.workbench.claims.claim import CLAIMS, COMPARISONS, Claim, Comparison

LM = "lm-bbc"
LM_TUNE = ("train.lr=1e-3,3e-3,1e-2",)
MOMENTUM_ENTRIES = ("residual=topk,momentum=topk+rule=momentum,adam=topk+rule=adam,"
                    "momentum-official=topk+rule=momentum+rule_options.form=official,"
                    "adam-official=topk+rule=adam+rule_options.form=official")
VAE_DATA_ENTRIES = ",".join(f"e{e}-n{n}=topk+model.moe.num_experts={e}+num_per_class={n}"
                            for n in (200, 2000) for e in (3, 8))

for _comparison in (
    Comparison("deepseek", LM, "topk,deepseek,ssr", "topk", tune=LM_TUNE),
    Comparison("xmoe", LM, "topk,xmoe", "topk", tune=LM_TUNE),
    Comparison("momentum", LM, MOMENTUM_ENTRIES, "residual", tune=LM_TUNE),
    Comparison("graph", LM, "topk,similarity,attention", "topk", tune=LM_TUNE),
    Comparison("ssr", LM, "topk,topk-noaux=topk:load_balance_coef=0.0,ssr,ssr-p0.1=ssr:p=0.1,"
               "sinkhorn-always=ssr:p=1.0", "topk", tune=LM_TUNE),
    Comparison("s2moe", LM, "topk,s2moe,topk-eval1=topk:eval_k=1", "topk", tune=LM_TUNE),
    Comparison("usmoe", LM, "topk,expert_choice,usmoe,usmoe-batch=usmoe:pool=batch", "topk", tune=LM_TUNE),
    Comparison("vmoe-bpr", "digits", "vmoe", "vmoe", corruptions=(), capacities=(0.1, 0.25, 0.5, 0.75, 1.0),
               overrides=("model.moe.capacity_factor=1.05",)),
    Comparison("vae", "sketch-vae", "unsup=topk,sup=topk+supervised=true,unsup-e8=topk+model.moe.num_experts=8",
               "sup"),
    Comparison("vae-data", "sketch-vae", VAE_DATA_ENTRIES, "e3-n2000"),
):
    COMPARISONS.add(_comparison.name, _comparison)

DEEPSEEK = "DeepSeek-V3 (2024); Wang et al. 2024"
XMOE = "Chi et al. 2022 (X-MoE)"
MOMENTUM = "Teo & Nguyen 2024 (MomentumSMoE)"
GRAPH = "Nguyen, Tran, Nguyen, Baraniuk 2025"
SSR = "Nguyen et al. 2025 (SSR)"
USMOE = "Do, Le, Tran 2025 (USMoE)"
VAE = "Nikolic et al. 2025 (SMoE-VAE)"
CONTAMINATED = "robust.substitute@5"  # 40 % of the tokens substituted: stands in for the papers' word-swap attack
STAND_IN = "substitute@5 stands in for the papers' word-swap attack (not public)"
JENSEN = ("reads the entropy of each token's own gate (softmax of its logits): the entropy of the mixed distribution "
          "the router selects from rises with mixing by concavity whatever the router learns")

for _claim in (
    Claim("deepseek-balance", DEEPSEEK, "the aux-loss-free expert bias balances the experts better than the "
          "load-balancing loss", "deepseek", "routing.load_cv", "deepseek", "better", reconstruction=True),
    Claim("deepseek-quality", DEEPSEEK, "balancing by the expert bias instead of an aux loss gives a better model",
          "deepseek", "final.metric", "deepseek", "better", reconstruction=True),
    Claim("xmoe-collapse", XMOE, "hypersphere routing avoids representation collapse: the router's inputs keep a "
          "higher effective rank", "xmoe", "routing.effective_rank_input", "xmoe", "higher"),
    Claim("xmoe-consistency", XMOE, "X-MoE routes more consistently: fewer tokens change their top-1 expert between "
          "checkpoints", "xmoe", "fluctuation.top1", "xmoe", "better"),
    *(Claim(f"{rule}-{kind}", MOMENTUM, f"{text} lowers the {kind} perplexity{form}", "momentum",
            "final.metric" if kind == "clean" else CONTAMINATED, rule, "better",
            reconstruction=not form,  # the canonical form is our restatement; the official one follows their code
            caveat="" if kind == "clean" else STAND_IN)
      for rule, text, form, kinds in (
          ("momentum", "heavy-ball momentum across the MoE layers", "", ("clean", "contaminated")),
          ("adam", "AdamSMoE (an Adam step, then momentum)", "", ("clean", "contaminated")),
          ("momentum-official", "heavy-ball momentum", " (the official form, with LayerNorms)", ("contaminated",)),
          ("adam-official", "AdamSMoE", " (the official form, with LayerNorms)", ("contaminated",)))
      for kind in kinds),
    *(Claim(f"{router}-{short}", GRAPH, f"{router}-aware routing lowers the {what} of top-k routing", "graph",
            column, router, direction, reconstruction=True, caveat=caveat)
      for router in ("similarity", "attention")
      for short, column, what, direction, caveat in (
          ("fluctuation", "fluctuation.top1", "routing fluctuation", "better", ""),  # lower is better
          ("entropy", "routing.entropy_own", "entropy of expert selection", "lower", JENSEN))),
    Claim("ssr-balance", SSR, "selective Sinkhorn balances the experts without an aux loss (against top-k without "
          "one)", "ssr", "routing.load_cv", "ssr", "better", baseline="topk-noaux", reconstruction=True),
    Claim("ssr-quality", SSR, "SSR without an aux loss reaches at least the quality of softmax top-k with the "
          "load-balancing loss", "ssr", "final.metric", "ssr", "better", kind="non-inferiority", margin="2%",
          reconstruction=True),
    Claim("s2moe-top1", "Do, Le, Tran 2025 (S2MoE)", "S2MoE's training lets a model run one expert per token better "
          "than a top-2 model run at top-1", "s2moe", "final.metric", "s2moe", "better", baseline="topk-eval1",
          reconstruction=True),
    Claim("usmoe-vs-topk", USMOE, "unified competitive routing beats token choice at the same budget", "usmoe",
          "final.metric", "usmoe", "better"),
    Claim("usmoe-vs-expert-choice", USMOE, "unified competitive routing beats expert choice at the same budget",
          "usmoe", "final.metric", "usmoe-batch", "better", baseline="expert_choice",
          caveat="both route over every token of the batch (not causal), so neither sees more of the future"),
    Claim("vmoe-bpr", "Riquelme et al. 2021 (V-MoE)", "at test-time capacity 0.1, Batch Prioritized Routing keeps "
          "more accuracy than dropping by position", "vmoe-bpr", "robust.capacity-bpr@5", "vmoe", "better",
          against="robust.capacity-vanilla@5"),
    Claim("vae-unsupervised", VAE, "an unsupervised gate reconstructs better than the label-supervised one "
          "(5 experts)", "vae", "final.metric", "unsup", "better"),
    Claim("vae-unsupervised-e8", VAE, "an unsupervised gate over 8 experts reconstructs better than the "
          "label-supervised one", "vae", "final.metric", "unsup-e8", "better"),
    Claim("vae-data-more-experts", VAE, "with more data (2,000 per class), 8 experts reconstruct better than 3",
          "vae-data", "final.metric", "e8-n2000", "better"),
    Claim("vae-data-few-examples", VAE, "with little data (200 per class), 8 experts reconstruct worse than 3",
          "vae-data", "final.metric", "e8-n200", "worse", baseline="e3-n200"),
):
    CLAIMS.add(_claim.name, _claim)
