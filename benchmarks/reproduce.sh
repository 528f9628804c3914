#!/usr/bin/env bash
# The paper comparisons of docs/results.md: one `smoe compare` each, into runs/repro/<name>/ (results.json,
# report.md, report.html). Tiny presets, 3 seeds; on a 2-core CPU each takes from ~5 min (vmoe-bpr) to ~25 min.
#
#   benchmarks/reproduce.sh                 # all of them
#   benchmarks/reproduce.sh xmoe ssr        # some of them (names: the case labels below)
#   SEEDS=1 STEPS=30 OUT=runs/repro-check benchmarks/reproduce.sh   # a quick check that every command works
#
# A comparison is resumable: run the same line again after an interruption. Options: SMOE (the smoe command,
# default .venv/bin/smoe when it exists), SEEDS (3), STEPS (unset: the preset's), OUT (runs/repro).
set -euo pipefail
cd "$(dirname "$0")/.."
SMOE=${SMOE:-$( [ -x .venv/bin/smoe ] && echo .venv/bin/smoe || echo smoe )}
SEEDS=${SEEDS:-3}
OUT=${OUT:-runs/repro}
EXTRA=(--seeds "$SEEDS")
[ -n "${STEPS:-}" ] && EXTRA+=(--steps "$STEPS")
ALL=(xmoe momentum vmoe-bpr ssr vae vae-data graph s2moe usmoe deepseek)

compare() { # name, then the smoe compare arguments
  local name=$1; shift
  echo "== $name: smoe compare $* ${EXTRA[*]} --out $OUT/$name" >&2
  "$SMOE" compare "$@" "${EXTRA[@]}" --out "$OUT/$name"
}

for name in "${@:-${ALL[@]}}"; do
  case $name in
    # X-MoE: less representation collapse (effective rank), more consistent routing (fluctuation) than topk
    xmoe)     compare xmoe --task lm-bbc --routers topk,xmoe ;;
    # MomentumSMoE / AdamSMoE: lower clean and contaminated perplexity than the plain residual (canonical form
    # x' = h + m, and the official code's form with two LayerNorms)
    momentum) compare momentum --task lm-bbc --routers residual=topk,momentum=topk+rule=momentum,adam=topk+rule=adam,momentum-official=topk+rule=momentum+rule_options.form=official,adam-official=topk+rule=adam+rule_options.form=official ;;
    # V-MoE: trained at capacity 1.05; at test-time capacity < 1, BPR keeps more accuracy than positional dropping
    vmoe-bpr) compare vmoe-bpr --task digits --routers vmoe --set model.capacity_factor=1.05 \
                --capacity 0.1,0.25,0.5,0.75,1.0 --corrupt '' ;;
    # SSR: balance without aux loss, accuracy against topk + aux loss, overhead against Sinkhorn on every call
    ssr)      compare ssr --task lm-bbc \
                --routers topk,topk-noaux=topk:load_balance_coef=0.0,ssr,ssr-p0.1=ssr:p=0.1,sinkhorn-always=ssr:p=1.0 ;;
    # SMoE-VAE: unsupervised routing reconstructs better than the label-supervised gate; active experts
    vae)      compare vae --task sketch-vae --routers unsup=topk,sup=topk+supervised=true,unsup-e8=topk+num_experts=8 ;;
    # SMoE-VAE data-size trend: with more data, more experts pay off
    vae-data) compare vae-data --task sketch-vae \
                --routers e3-n200=topk+num_experts=3+num_per_class=200,e8-n200=topk+num_experts=8+num_per_class=200,e3-n2000=topk+num_experts=3+num_per_class=2000,e8-n2000=topk+num_experts=8+num_per_class=2000 ;;
    # Graph of tokens: similarity- and attention-aware routing fluctuate less, with lower routing entropy
    graph)    compare graph --task lm-bbc --routers topk,similarity,attention ;;
    # S2MoE: top-1 inference close to the top-2 baseline (experts per token, eval time); topk trained k=2, run k=1
    s2moe)    compare s2moe --task lm-bbc --routers topk,s2moe,topk-eval1=topk:eval_k=1 ;;
    # USMoE: unified competition against token choice (topk) and expert choice
    usmoe)    compare usmoe --task lm-bbc --routers topk,expert_choice,usmoe ;;
    # Aux-loss-free bias balancing (DeepSeek-V3) against topk + load-balancing loss and SSR: load CV, perplexity
    deepseek) compare deepseek --task lm-bbc --routers deepseek,topk,ssr ;;
    *) echo "unknown comparison $name; one of: ${ALL[*]}" >&2; exit 2 ;;
  esac
done
