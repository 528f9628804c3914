"""The router conformance suite (`smoe check-router NAME`): what every built-in router passes, run on any
registered router or layer-level method in seconds on a CPU.

Each check builds small layers, `build_moe(16, E=4, 32, router=NAME, **options)`, on B=2 sequences of T=8 tokens
(the last 3 of the first one masked) and reports pass, fail or skip with its reason:

  builds            the layer builds with the options, and refuses k=0
  shapes-dtypes     y has x's shape and dtype in float32, bfloat16 and float64; the Routing's fields have their
                    documented shapes and dtypes (probs (N, E) in float32, float64 for float64 input), finite
  mask              masked tokens are never routed and get output 0; what masked tokens hold changes neither the
                    aux losses nor the routing of real tokens; an all-masked batch routes nothing
  empty-batch       a batch of 0 tokens runs forward and backward
  k-range           experts in [0, E), tokens in [0, N), no (token, expert) pair twice, at most E experts a token
  capacity          under capacity_factor=1 no expert (of a routing group) keeps more pairs than its capacity
  gradients         every parameter that requires grad gets a finite gradient from y and the aux loss
  init-rule         every module with parameters has an init rule for keyed initialisation (`smoe.init`)
  keyed-init        `init_keyed` gives the same values whatever the global random state, and does not draw from it
  state-dict        a layer loaded from another's state_dict routes and computes the same
  pickle            a pickled and unpickled layer computes the same (the grid sends runs to worker processes)
  host-sync         forward + backward in training, forward in eval, dispatch no operator that makes the host
                    wait for the device (`smoe.host_sync`; grouped backend, float32)
  compile           torch.compile(fullgraph=True, dynamic=True) of forward + backward in bfloat16 traces one
                    graph and matches eager (the aot_eager backend: Dynamo, fake tensors and AOTAutograd, as
                    inductor traces, without generating kernels)

A router whose training forward must read the host declares why in `host_sync_in_training` (Sinkhorn's
stopping test); its host-sync and compile checks then run in eval mode. A router whose defaults do not build
declares `example_options` (hash: a vocabulary).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch._dynamo
import torch.nn.functional as F
from torch import Tensor, nn

from smoe.host_sync import OpRecorder
from smoe.init import init_keyed
from smoe.layer import LAYERS, MoEOutput, build_moe
from smoe.routing import Routing, router_class
from smoe.routing.base import router_dtype

D_MODEL, HIDDEN, BATCH, SEQ, MASKED = 16, 32, 2, 8, 3
DTYPES = (torch.float32, torch.bfloat16, torch.float64)


class CheckFailed(Exception):
    """A check found a problem (the message says what and, where it can, how to fix it)."""


class CheckSkipped(Exception):
    """A check cannot run here (the message says why)."""


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # "pass", "fail" or "skip"
    reason: str

    def line(self) -> str:
        return f"{self.status:<4}  {self.name:<13}  {self.reason}"


@dataclass
class Subject:
    """What the checks build: `build_moe(D_MODEL, num_experts, HIDDEN, router=name, k=k, **options)`; a router's
    `example_options` come first, `options` (the user's) win."""

    name: str
    options: dict = field(default_factory=dict)
    num_experts: int = 4

    def __post_init__(self):
        self.cls = LAYERS.get(self.name) if self.name in LAYERS else router_class(self.name)  # unknown: ValueError
        self.options = {**getattr(self.cls, "example_options", {}), **self.options}
        self.k = self.options.pop("k", min(2, self.num_experts))
        self.sync_reason: str | None = getattr(self.cls, "host_sync_in_training", None)

    @property
    def is_router(self) -> bool:
        return self.name not in LAYERS

    def build(self, dtype: torch.dtype = torch.float32, seed: int = 0, **layer_options) -> nn.Module:
        torch.manual_seed(seed)
        options = {"k": self.k, **self.options, **layer_options}
        return build_moe(D_MODEL, self.num_experts, HIDDEN, router=self.name, **options).to(dtype)

    def inputs(self, layer: nn.Module, dtype: torch.dtype = torch.float32, batch: int = BATCH,
               seed: int = 1) -> tuple[Tensor, Tensor, dict]:
        """x: (batch, SEQ, d) with requires_grad, mask: (batch, SEQ) (the first sequence's last MASKED tokens
        False), and the routing context every router may read (token ids, attention probabilities)."""
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(batch, SEQ, D_MODEL, generator=g).to(dtype).requires_grad_()
        mask = torch.ones(batch, SEQ, dtype=torch.bool)
        mask[:1, SEQ - MASKED:] = False
        vocab = getattr(layer.router, "vocab_size", None) or 64
        context = {"token_ids": torch.randint(0, vocab, (batch, SEQ), generator=g)}
        if getattr(layer.router, "needs_attn_probs", False):
            context["attn_probs"] = torch.softmax(torch.randn(batch, SEQ, SEQ, generator=g), dim=-1).to(dtype)
        return x, mask, context

    def call(self, layer: nn.Module, x: Tensor, mask: Tensor | None, context: dict, seed: int | None = 2) -> MoEOutput:
        """layer(x, mask, ...) with router noise from a generator seeded `seed` (None: from the global one)."""
        generator = {} if seed is None else {"generator": torch.Generator().manual_seed(seed)}
        return layer(x, mask, step=0, **generator, **context)

    def params(self, layer: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """The parameters the router owns (a layer-level method: all of them)."""
        if self.is_router:
            return [(f"router.{n}", p) for n, p in layer.router.named_parameters()]
        return list(layer.named_parameters())


def _loss(out: MoEOutput) -> Tensor:
    return out.y.float().square().mean() + out.aux_loss.float()


def routing_problems(routing: object, n: int, e: int, x_dtype: torch.dtype) -> list[str]:
    """What is wrong with a router's output for N=n tokens and E=e experts (empty: nothing)."""
    if not isinstance(routing, Routing):
        return [f"forward must return a smoe.Routing, got {type(routing).__name__}"]
    p, problems = routing.pairs, []
    s = tuple(p.token.shape)
    if len(s) != 1:
        problems.append(f"pairs.token must be 1-D (S,), got {tuple(p.token.shape)}")
    for name in ("expert", "weight", "priority", "group", "keep"):
        t = getattr(p, name)
        if t is not None and tuple(t.shape) != s:
            problems.append(f"pairs.{name} must have the shape of pairs.token {s}, got {tuple(t.shape)}")
    for name, ok, want in (("token", p.token.dtype == torch.long, "long"),
                           ("expert", p.expert.dtype == torch.long, "long"),
                           ("weight", p.weight.is_floating_point(), "floating point"),
                           ("group", p.group is None or p.group.dtype == torch.long, "long"),
                           ("keep", p.keep is None or p.keep.dtype == torch.bool, "bool")):
        if not ok:
            problems.append(f"pairs.{name} must be {want}, got {getattr(p, name).dtype}")
    want = router_dtype(torch.empty(0, dtype=x_dtype))
    if tuple(routing.probs.shape) != (n, e):
        problems.append(f"probs must have shape (N, E) = {(n, e)}, got {tuple(routing.probs.shape)}")
    elif routing.probs.dtype != want:
        problems.append(f"probs must be {want} for {x_dtype} input (smoe.routing.base.router_dtype), got "
                        f"{routing.probs.dtype}")
    if routing.num_experts != e:
        problems.append(f"num_experts must be {e}, got {routing.num_experts}")
    for name, value in routing.aux.items():
        if not isinstance(value, Tensor) or value.dim() != 0 or not value.is_floating_point():
            problems.append(f"aux[{name!r}] must be a 0-dim floating-point tensor, got {value!r}")
    if not problems:
        if not bool(torch.isfinite(p.weight).all()):
            problems.append("pairs.weight holds NaN or inf")
        if not bool(torch.isfinite(routing.probs).all()):
            problems.append("probs hold NaN or inf")
    return problems


# ---------------------------------------------------------------- the checks (each returns its pass reason)


def check_builds(s: Subject) -> str:
    layer = s.build()
    try:
        s.build(k=0)
    except ValueError:
        pass
    else:
        raise CheckFailed("k=0 was accepted; validate the options in the Options dataclass's __post_init__ "
                          "(call super().__post_init__(): RouterOptions checks k >= 1)")
    n = sum(p.numel() for _, p in s.params(layer))
    return f"{type(layer.router).__name__} with {s.options or 'default options'}, k={s.k}, {n} parameters"


def check_shapes(s: Subject) -> str:
    for dtype in DTYPES:
        layer = s.build(dtype)
        x, mask, context = s.inputs(layer, dtype)
        out = s.call(layer, x, mask, context)
        problems = routing_problems(out.routing, BATCH * SEQ, s.num_experts, dtype)
        if tuple(out.y.shape) != tuple(x.shape) or out.y.dtype != dtype:
            problems.append(f"y must be {tuple(x.shape)} {dtype}, got {tuple(out.y.shape)} {out.y.dtype}")
        if out.aux_loss.dim() != 0 or not bool(torch.isfinite(out.aux_loss)):
            problems.append(f"the aux loss must be a finite 0-dim tensor, got {out.aux_loss}")
        if problems:
            raise CheckFailed(f"{dtype}: " + "; ".join(problems))
    return "y and Routing as documented in float32, bfloat16 and float64"


def check_mask(s: Subject) -> str:
    layer = s.build()
    x, mask, context = s.inputs(layer)
    out = s.call(layer, x, mask, context)
    routed = sorted({int(t) for t in out.routing.token if not mask.reshape(-1)[t]})
    if routed:
        raise CheckFailed(f"masked tokens {routed} are routed: pairs of a token where ctx.mask is False must not be "
                          f"kept (set Routing's keep; Routing.from_token_choice does it from ctx.mask)")
    if bool(out.y[~mask].abs().max() > 0):
        raise CheckFailed("masked tokens get a non-zero output")
    with torch.no_grad():
        other = x.detach().clone()
        other[~mask] = 100 * torch.randn(int((~mask).sum()), D_MODEL, generator=torch.Generator().manual_seed(9))
    changed = s.call(layer, other, mask, context)
    real = mask.reshape(-1)
    for key in sorted(out.routing.aux.keys() | changed.routing.aux.keys()):
        a, b = out.routing.aux.get(key), changed.routing.aux.get(key)
        if a is None or b is None or not torch.allclose(a.detach(), b.detach(), rtol=1e-4, atol=1e-6):
            raise CheckFailed(f"the aux loss {key!r} changes with what masked tokens hold ({a} -> {b}): leave them "
                              f"out of every loss (e.g. smoe.routing.base.masked_mean)")
    if not torch.allclose(out.routing.dense_weights().detach()[real], changed.routing.dense_weights().detach()[real],
                          rtol=1e-4, atol=1e-6):
        raise CheckFailed("the routing of real tokens changes with what masked tokens hold: leave masked tokens "
                          "out of every pool, statistic and normalisation")
    none = s.call(layer, x, torch.zeros_like(mask), context)
    if none.routing.token.numel() or bool(none.y.abs().max() > 0) or not bool(torch.isfinite(none.aux_loss)):
        raise CheckFailed("an all-masked batch must route nothing, give y = 0 and a finite aux loss")
    return f"{int((~mask).sum())} masked tokens never routed nor counted; an all-masked batch routes nothing"


def check_empty(s: Subject) -> str:
    layer = s.build()
    x, mask, context = s.inputs(layer, batch=0)
    out = s.call(layer, x, mask, context)
    if tuple(out.y.shape) != (0, SEQ, D_MODEL) or not bool(torch.isfinite(out.aux_loss)):
        raise CheckFailed(f"a batch of 0 tokens gave y {tuple(out.y.shape)} and aux loss {out.aux_loss}")
    _loss(out).backward()
    return "0 tokens: forward and backward run"


def check_k(s: Subject) -> str:
    layer = s.build()
    x, mask, context = s.inputs(layer)
    routing = s.call(layer, x, mask, context).routing
    n, e = BATCH * SEQ, s.num_experts
    token, expert = routing.token, routing.expert
    if token.numel() == 0:
        raise CheckFailed("no pair is kept for a batch of real tokens")
    if bool((expert < 0).any() | (expert >= e).any()) or bool((token < 0).any() | (token >= n).any()):
        raise CheckFailed(f"kept pairs must have experts in [0, {e}) and tokens in [0, {n}), got experts "
                          f"{int(expert.min())}..{int(expert.max())}, tokens {int(token.min())}..{int(token.max())}")
    if (token * e + expert).unique().numel() != token.numel():
        raise CheckFailed("a (token, expert) pair is kept twice")
    per_token = routing.experts_per_token()
    return f"experts per real token {int(per_token[mask.reshape(-1)].min())}..{int(per_token.max())} (k={s.k})"


def check_capacity(s: Subject) -> str:
    layer = s.build(capacity_factor=1.0)
    x, mask, context = s.inputs(layer)
    out = s.call(layer, x, mask, context)
    if not bool(torch.isfinite(out.y).all()):
        raise CheckFailed("y is not finite under capacity_factor=1")
    plan = layer.dispatcher.plan(out.routing)
    if plan.capacity is None:
        return "the router owns capacity (it receives capacity_factor; dispatch is dropless)"
    pair = plan.row_pair if plan.valid is None else plan.row_pair[plan.valid]
    expert = out.routing.pairs.expert[pair]
    group = out.routing.pairs.group
    group = torch.zeros_like(expert) if group is None else group[pair]
    kept = torch.zeros(int(group.max()) + 1 if group.numel() else 1, s.num_experts, dtype=torch.long)
    kept.index_put_((group, expert), torch.ones_like(expert), accumulate=True)
    capacity = int(plan.capacity)
    if int(kept.max()) > capacity:
        raise CheckFailed(f"an expert keeps {int(kept.max())} pairs, over its capacity {capacity}")
    return f"at most {int(kept.max())} pairs an expert, capacity {capacity}"


def check_gradients(s: Subject) -> str:
    layer = s.build()
    x, mask, context = s.inputs(layer)
    _loss(s.call(layer, x, mask, context)).backward()
    params = [(n, p) for n, p in s.params(layer) if p.requires_grad]
    missing = [n for n, p in params if p.grad is None]
    if missing:
        raise CheckFailed(f"no gradient reaches {', '.join(missing)} (is it used in forward, outside no_grad, "
                          f"without .detach()?)")
    bad = [n for n, p in params if not bool(torch.isfinite(p.grad).all())]
    if bad:
        raise CheckFailed(f"non-finite gradient in {', '.join(bad)}")
    return f"every one of {len(params)} parameter(s) gets a finite gradient" if params else "no trainable parameters"


def check_init_rule(s: Subject) -> str:
    try:
        init_keyed(s.build(), 0)
    except TypeError as e:
        raise CheckFailed(str(e)) from None
    return "every module with parameters has one"


def check_keyed_init(s: Subject) -> str:
    layers = [s.build(seed=seed) for seed in (1, 2)]
    state = torch.get_rng_state()
    try:
        for layer in layers:
            init_keyed(layer, 7)
    except TypeError:
        raise CheckSkipped("needs an init rule (see init-rule)") from None
    if not torch.equal(state, torch.get_rng_state()):
        raise CheckFailed("init_keyed drew from the global generator: reset_parameters(generators) must pass "
                          "generator=generators(name) to every random draw")
    a, b = (dict(layer.named_parameters()) for layer in layers)
    differ = [name for name in a if not torch.equal(a[name], b[name])]
    if differ:
        raise CheckFailed(f"{', '.join(differ)} keep values from construction: reset_parameters(generators) must "
                          f"set every parameter of its module (drawn from generators(name), or a constant)")
    return "the same values from two global random states, which it leaves alone"


def _same_outputs(s: Subject, a: nn.Module, b: nn.Module) -> str | None:
    """Why a and b compute differently (train and eval mode, the same generator), or None."""
    for train in (True, False):
        a.train(train)
        b.train(train)
        x, mask, context = s.inputs(a)
        out_a, out_b = s.call(a, x, mask, context), s.call(b, x, mask, context)
        mode = "training" if train else "eval"
        if not torch.equal(out_a.routing.dense_weights(), out_b.routing.dense_weights()):
            return f"the routing differs in {mode} mode"
        if not torch.equal(out_a.y, out_b.y) or not torch.equal(out_a.aux_loss, out_b.aux_loss):
            return f"y or the aux loss differs in {mode} mode"
    return None


def check_state_dict(s: Subject) -> str:
    a, b = s.build(seed=1), s.build(seed=2)
    try:
        b.load_state_dict(a.state_dict())
    except RuntimeError as e:
        raise CheckFailed(f"load_state_dict: {e}") from None
    if (why := _same_outputs(s, a, b)) is not None:
        raise CheckFailed(f"{why} after load_state_dict: keep all state in parameters and buffers")
    return f"{len(a.state_dict())} tensors round trip"


def check_pickle(s: Subject) -> str:
    a = s.build()
    try:
        b = pickle.loads(pickle.dumps(a))
    except Exception as e:
        raise CheckFailed(f"{type(e).__name__}: {e} (no lambdas or open handles as attributes)") from None
    if (why := _same_outputs(s, a, b)) is not None:
        raise CheckFailed(f"{why} after a pickle round trip")
    return "a pickled layer computes the same"


def check_host_sync(s: Subject) -> str:
    if not hasattr(F, "grouped_mm"):
        raise CheckSkipped(f"torch {torch.__version__} has no grouped_mm (the layer's sync-free backend)")
    layer = s.build(backend="grouped")
    x, mask, context = s.inputs(layer)
    found = []
    modes = (False,) if s.sync_reason else (True, False)
    for train in modes:
        layer.train(train)
        with torch.set_grad_enabled(train):
            for recorder in (OpRecorder(), OpRecorder()):  # the first call warms up (lazy state, caches)
                with recorder:
                    out = s.call(layer, x, mask, context)
                    if train:
                        _loss(out).backward()
        rec = recorder
        found += [f"{op} ({kind}, {'training' if train else 'eval'})" for op, kind in rec.syncs]
    if found:
        raise CheckFailed(f"{len(found)} operators wait for the device: {', '.join(dict.fromkeys(found))}; no "
                          f".item(), int()/float()/bool() of a tensor, nonzero, boolean indexing or bincount")
    what = "forward in eval" if s.sync_reason else "forward + backward in training, forward in eval"
    return f"none in {what}" + (f" (training declares one: {s.sync_reason})" if s.sync_reason else "")


def check_compile(s: Subject) -> str:
    if not torch._dynamo.is_dynamo_supported():
        raise CheckSkipped(f"torch.compile is not supported here (torch {torch.__version__}, this Python)")
    if not hasattr(F, "grouped_mm"):
        raise CheckSkipped(f"torch {torch.__version__} has no grouped_mm (the layer's compilable backend)")
    layer = s.build(torch.bfloat16, backend="grouped").train(s.sync_reason is None)
    x, mask, context = s.inputs(layer, torch.bfloat16)
    torch._dynamo.reset()
    try:  # router noise from the global generator: Dynamo cannot trace a torch.Generator argument
        torch.manual_seed(5)
        out = s.call(torch.compile(layer, fullgraph=True, dynamic=True, backend="aot_eager"), x, mask, context, None)
        _loss(out).backward()
    except Exception as e:
        raise CheckFailed(f"{type(e).__name__}: {str(e).strip().splitlines()[0]}") from None
    finally:
        torch._dynamo.reset()
    torch.manual_seed(5)
    eager = s.call(layer, x, mask, context, None)
    if not torch.allclose(out.y.float(), eager.y.float(), atol=2e-2, rtol=2e-2):
        raise CheckFailed("the compiled layer's y differs from eager")
    mode = "training" if s.sync_reason is None else "eval (see host-sync)"
    return f"one graph in bfloat16, {mode}, matches eager"


CHECKS: dict[str, Callable[[Subject], str]] = {
    "builds": check_builds, "shapes-dtypes": check_shapes, "mask": check_mask, "empty-batch": check_empty,
    "k-range": check_k, "capacity": check_capacity, "gradients": check_gradients, "init-rule": check_init_rule,
    "keyed-init": check_keyed_init, "state-dict": check_state_dict, "pickle": check_pickle,
    "host-sync": check_host_sync, "compile": check_compile,
}


def check_router(name: str, options: dict | None = None, num_experts: int = 4,
                 checks: Sequence[str] | None = None) -> list[CheckResult]:
    """Run the conformance checks (default: all of `CHECKS`, in order) on router or layer-level method `name` with
    `options`; the caller's global random state is left as it was. A layer that does not build fails "builds" and
    skips the rest."""
    names = list(CHECKS) if checks is None else list(checks)
    unknown = sorted(set(names) - set(CHECKS))
    if unknown:
        raise ValueError(f"checks must be among {', '.join(CHECKS)}; got {unknown}")
    subject = Subject(name, dict(options or {}), num_experts)
    results: list[CheckResult] = []
    with torch.random.fork_rng(devices=[]):
        for check in names:
            if results and results[0].name == "builds" and results[0].status == "fail":
                results.append(CheckResult(check, "skip", "the layer does not build"))
                continue
            try:
                results.append(CheckResult(check, "pass", CHECKS[check](subject)))
            except CheckSkipped as e:
                results.append(CheckResult(check, "skip", str(e)))
            except CheckFailed as e:
                results.append(CheckResult(check, "fail", str(e)))
            except Exception as e:  # the router raised: that is the failure
                results.append(CheckResult(check, "fail", f"raised {type(e).__name__}: {e}"))
    return results


def failures(results: Sequence[CheckResult]) -> list[CheckResult]:
    return [r for r in results if r.status == "fail"]
