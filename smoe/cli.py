"""The `smoe` command line. Each subcommand lives in its own function; heavy imports happen inside them.

Errors a user's input causes (`USER_ERRORS`: a bad value, a busy or damaged run folder, an unusable checkpoint, a
missing optional package, an unusable path) end the command with one line on stderr, `smoe CMD: error: ...`, and
exit status 2; `--debug` anywhere on the command line shows the traceback instead.

Plugins (`smoe.plugins`) are imported before the parser is built, so their routers and tasks are valid choices:
the entry points of `smoe.plugins`, then SMOE_PLUGINS, then every `--import MODULE_OR_FILE.py` (taken from
anywhere on the command line, for every subcommand).
"""

from __future__ import annotations

import argparse
import sys

from smoe.bench.layer import main as bench_layer
from smoe.bench.parallel import main as bench_parallel
from smoe.bench.train import main as bench_train
from smoe.claims_cli import add_claims_parser
from smoe.data.corrupt import available_corruptions
from smoe.layer import available_layers, layer_options, layer_summary
from smoe.plugin_cli import add_import_argument, add_plugin_parsers, recorded_command
from smoe.plugins import load_all, split_imports
from smoe.routing import available_routers, router_options, router_summary
from smoe.workbench.grid.compare import CompareConfig, run_compare
from smoe.workbench.grid.jobs import add_grid_arguments, grid_config
from smoe.workbench.grid.sequential import SequentialConfig, parse_budget, run_sequential
from smoe.workbench.grid.tune import TUNE_SEED_START, parse_tune
from smoe.workbench.measure.rule import Margin
from smoe.workbench.report.across_tasks import write_across
from smoe.workbench.report.comparison import write_report
from smoe.workbench.report.export import columns_table, robustness_table, write_tables
from smoe.workbench.report.show import show_run
from smoe.workbench.results.verdicts import RECORDED
from smoe.workbench.run.analysis import ANALYSIS_FILE, analyze_run, format_analysis
from smoe.workbench.run.config import resolve_config, resolve_config_file
from smoe.workbench.run.embed_suite import main as eval_embed
from smoe.workbench.run.entry import __doc__ as entry_doc
from smoe.workbench.run.entry import parse_entries
from smoe.workbench.run.evaluate import eval_file, evaluate_run, format_eval
from smoe.workbench.run.runner import train_run
from smoe.workbench.tasks import available_tasks, get_task
from smoe.workbench.train.data_parallel import ParallelConfig
from smoe.workbench.train.hints import thread_hint


def cmd_routers(args: argparse.Namespace) -> int:
    """Print every registered router and layer-level method (`build_moe`) with the paper it follows; with NAME or
    --options, also each router's options and their defaults."""
    names = sorted(available_routers() + available_layers())
    if args.name is not None and args.name not in names:
        raise ValueError(f"unknown router {args.name!r}; available: {', '.join(names)}")
    width = max(map(len, names))
    for name in [args.name] if args.name else names:
        layer = name in available_layers()
        summary = layer_summary(name) + "  [layer-level: smoe.build_moe]" if layer else router_summary(name)
        print(f"{name:<{width}}  {summary}")
        if args.options or args.name:
            for option, default in (layer_options(name) if layer else router_options(name)).items():
                print(f"{'':<{width}}    {option} = {default!r}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "layer":
        return bench_layer(args.rest)
    if args.what == "train":
        return bench_train(args.rest)
    if args.what == "parallel":
        return bench_parallel(args.rest)
    raise SystemExit(f"unknown benchmark {args.what!r}")


def cmd_report(args: argparse.Namespace) -> int:
    """Re-render report.md, report.html and plots/ from DIR/results.json (or print a compact table); with several
    DIRs, the report across their tasks into --out."""
    if len(args.dir) > 1:
        if args.out is None or args.columns or args.robustness:
            raise ValueError("several DIRs make a report across tasks: give --out DIR (and no --columns or "
                             "--robustness)")
        files = write_across(args.dir, args.out, baseline=args.baseline, margin=_margin(args.margin),
                             latex=args.latex, csv_file=args.csv)
        tables = files.tables
    elif args.columns or args.robustness:
        print(columns_table(args.dir[0], args.columns) if args.columns else robustness_table(args.dir[0]))
        return 0
    else:
        margin = _margin(args.margin)
        files = write_report(args.dir[0], args.out, baseline=args.baseline, margin=margin)
        tables = write_tables(args.dir[0], files.html.parent, latex=args.latex, csv_file=args.csv,
                              baseline=args.baseline, margin=margin)
    print(f"wrote {files.markdown} and {files.html} ({len(files.plots)} plots)")
    for path in tables:
        print(f"wrote {path}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """Routing pictures of one trained run (and of --text) as PNG files and an HTML page."""
    files = show_run(args.run_dir, text=args.text, out=args.out, device=args.device)
    print(f"wrote {len(files.pictures)} pictures and {files.html}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train one router on one task; the run folder gets config.yaml, metrics, checkpoints and final.json."""
    import json
    import os


    if (args.task is None) == (args.config is None) or (args.config and args.preset):
        raise ValueError("give --task (and --preset) or --config FILE.yaml (e.g. a run's config.yaml, which names "
                         "its task and preset)")
    if args.config is not None:
        run = resolve_config_file(args.config, router=args.router, seed=args.seed, device=args.device,
                                  steps=args.steps, overrides=args.set or [])
    else:
        run = resolve_config(args.task, preset=args.preset or "tiny", router=args.router or "topk",
                             seed=args.seed or 0, device=args.device or "cpu", steps=args.steps,
                             overrides=args.set or [])
    parallel = ParallelConfig(expert_parallel=args.expert_parallel, global_view=args.global_view,
                              timeout_s=args.dist_timeout)
    if hint := thread_hint():  # once the configuration is valid: an error stays one line
        print(hint, file=sys.stderr)
    result = train_run(run, args.out, resume=args.resume, progress=not args.no_progress, parallel=parallel)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports for all
        pass
    elif result.status == "interrupted":
        print(f"interrupted at step {result.step}; checkpoint written, continue with --resume", file=sys.stderr)
    else:
        print(json.dumps({"step": result.step, **result.final}, indent=1))
    return 128 + result.signal if result.status == "interrupted" else 0


def train_help(steps_note: bool = True) -> str:
    lines = ["tasks (and presets):"]
    for name in available_tasks():
        task = get_task(name)
        lines.append(f"  {name:<11} {task.summary} [presets: {', '.join(task.presets)}]; metric: {task.metric}")
    lines.append("routers: " + ", ".join(available_routers() + available_layers())
                 + "  (`smoe routers` gives their papers)")
    lines.append("--set keys: section.field with section data, model or train (a bare field when unambiguous), "
                 "e.g. --set model.moe.num_experts=16 --set model.moe.router_options.k=1 --set train.lr=3e-4 "
                 "--set model.moe.router_options.noise=learned")
    if steps_note:
        lines.append("--steps N is where training stops; the learning-rate schedule runs over train.schedule_steps, "
                     "so `--steps n` then `--steps 2n --resume` equals `--steps 2n` exactly")
        lines.append("several processes: torchrun --nproc_per_node=N -m smoe train ... (train.batch_size is the "
                     "global batch, split over the ranks; experts sharded when num_experts is divisible by N)")
    return "\n".join(lines)


def cmd_eval_embed(args: argparse.Namespace) -> int:
    return eval_embed(args.rest)


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _margin(text: str | None) -> Margin | str | None:
    """--margin of `smoe report`: None -> the recorded one, 'none' -> no margin, else `Margin.parse`."""
    if text is None:
        return RECORDED
    return None if text.strip().lower() == "none" else Margin.parse(text)


def _specs(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def cmd_compare(args: argparse.Namespace) -> int:
    """Train, evaluate and analyse entries x seeds on one task; write results.json and the report."""
    auto = args.seeds == "auto"
    seeds = int(args.seeds) if not auto and args.seeds.isdigit() else None
    if not auto and (seeds is None or seeds < 1):
        raise ValueError(f"--seeds must be a positive int or 'auto', got {args.seeds!r}")
    if not auto and (args.max_seeds is not None or args.budget is not None):
        raise ValueError("--max-seeds and --budget go with --seeds auto")
    if auto and args.tune:
        raise ValueError("--tune goes with a fixed --seeds (tune first, then compare with --seeds auto)")
    config = CompareConfig(task=args.task, entries=parse_entries(args.routers), out=args.out,
                           seeds=(args.max_seeds or 10) if auto else seeds, preset=args.preset, steps=args.steps,
                           overrides=args.set or [], device=args.device, corruptions=args.corrupt,
                           capacities=args.capacity or [], bpr=args.bpr, baseline=args.baseline, margin=args.margin,
                           tune=parse_tune(args.tune, args.tune_seeds) if args.tune else None)
    command = recorded_command("compare", args.argv)
    if hint := thread_hint():
        print(hint, file=sys.stderr)
    if auto:
        seq = SequentialConfig(max_seeds=args.max_seeds or 10,
                               budget_s=None if args.budget is None else parse_budget(args.budget))
        result = run_sequential(config, seq, command=command, progress=not args.no_progress, grid=grid_config(args))
    else:
        result = run_compare(config, command=command, progress=not args.no_progress, grid=grid_config(args))
    if result.interrupted is not None:
        print(f"interrupted; {result.results} holds the runs so far; run the same command again to resume",
              file=sys.stderr)
        return 128 + result.interrupted
    print(f"results: {result.results}\nreport:  {result.report} (and report.md beside it)")
    for line in result.failed:
        print(f"failed: {line}", file=sys.stderr)
    return 1 if result.failed else 0


def cmd_analyze(args: argparse.Namespace) -> int:
    """Routing analytics of a trained run on its probe set; prints tables and writes RUN_DIR/analysis.json."""
    analysis = analyze_run(args.run_dir, args.device)
    print(format_analysis(analysis))
    print(f"wrote {args.run_dir}/{ANALYSIS_FILE}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Task metric of a trained run, clean and corrupted, at test-time capacities, with eval_k experts."""
    result = evaluate_run(args.run_dir, args.device, split=args.split, corruptions=args.corrupt,
                          capacities=args.capacity or [], bpr=args.bpr, eval_k=args.eval_k)
    print(format_eval(result))
    print(f"wrote {args.run_dir}/{eval_file(args.eval_k)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smoe",
        description="Sparse mixture-of-experts workbench. Routers: "
        + ", ".join(sorted(available_routers() + available_layers()))
        + ". Your own router: --import MODULE_OR_FILE.py on any command (or SMOE_PLUGINS, or a 'smoe.plugins' "
          "entry point); docs/writing-a-router.md.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error instead of its one line (anywhere on the command line)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("routers", help="list the routers and their papers (with NAME or --options: their options)")
    p.add_argument("name", nargs="?", metavar="NAME", help="show this router's options and their defaults")
    p.add_argument("--options", action="store_true", help="list every router's options and their defaults")
    p.set_defaults(fn=cmd_routers)
    p = sub.add_parser("bench", help="benchmarks: `smoe bench layer --help`, `smoe bench parallel --help`, "
                                     "`smoe bench train --help`", add_help=False)
    p.add_argument("-h", "--help", action="help", help="show this help (each benchmark's: smoe bench NAME --help)")
    p.add_argument("what", choices=["layer", "parallel", "train"])
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_bench)
    p = sub.add_parser("report", help="render report.md and report.html from a comparison's results.json (several: "
                                      "a report across their tasks)")
    p.add_argument("dir", nargs="+", metavar="DIR",
                   help="directory holding results.json (written by `smoe compare`); several DIRs (comparisons that "
                        "share entries): normalised scores per task, the aggregate and a critical-difference diagram")
    p.add_argument("--out", help="directory for report.md, report.html and plots/ (default: DIR; required with "
                                 "several DIRs)")
    p.add_argument("--columns", type=_specs, metavar="KEY[,...]",
                   help="print only a table of these columns (e.g. final.metric,routing.load_cv; a wrong key lists "
                        "the available ones) instead of writing the report")
    p.add_argument("--robustness", action="store_true",
                   help="print only the metric at every corruption (and capacity) level instead of the report")
    p.add_argument("--baseline", metavar="LABEL", default=None,
                   help="the entry the verdicts compare every other with (default: the one results.json records)")
    p.add_argument("--margin", metavar="M", default=None,
                   help="judge again with this margin: '2%%' of the baseline's mean or an absolute '0.5' (equivalent, "
                        "non-inferior, non-superior verdicts); 'none' for none (default: the one results.json records)")
    p.add_argument("--latex", action="store_true",
                   help="also write the verdict, per-seed and summary tables as OUT/tables.tex (booktabs; across "
                        "tasks: OUT/across.tex)")
    p.add_argument("--csv", action="store_true",
                   help="also write raw numbers: OUT/tables.csv (mean, std, n), verdicts.csv (every comparison), "
                        "seeds.csv (every run; across tasks: across_tasks.csv and aggregate.csv)")
    p.set_defaults(fn=cmd_report)
    p = sub.add_parser("show", help="routing pictures of a trained run (and of your own text) as PNG + HTML")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder of smoe train or smoe compare")
    p.add_argument("--text", metavar="TEXT", help="text tasks: route this text and draw it by expert")
    p.add_argument("--out", metavar="DIR", help="where the pictures and index.html go (default RUN_DIR/show)")
    p.add_argument("--device", default=None, help="where to load the model (default: the run's device)")
    p.set_defaults(fn=cmd_show)
    p = sub.add_parser("eval-embed", help="MoEE embeddings of an MoE LM on an offline MTEB-style mini suite, "
                                          "with routers swapped in without training (`smoe eval-embed --help`)",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_eval_embed)
    add_train_parser(sub)
    add_compare_parser(sub)
    add_claims_parser(sub)
    add_analysis_parsers(sub)
    add_plugin_parsers(sub)
    for name in ("report", "show", "train", "compare", "claims", "analyze", "eval"):
        add_import_argument(sub.choices[name])
    return parser


def add_compare_parser(sub) -> None:
    syntax = entry_doc.split("Entry syntax", 1)[1]
    p = sub.add_parser("compare", help="train, evaluate and analyse routers x seeds on a task; results + report",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="entry syntax" + syntax + "\n" + train_help(steps_note=False))
    p.add_argument("--task", required=True, choices=available_tasks(), metavar="TASK",
                   help="one of: " + ", ".join(available_tasks()))
    p.add_argument("--routers", required=True, metavar="ENTRIES",
                   help="comma-separated entries, e.g. topk,xmoe,ssr:p=0.1,topk+rule=momentum (syntax below)")
    p.add_argument("--seeds", default="3", metavar="N|auto",
                   help="seeds 0..N-1 of every entry (default 3); auto: 3 seeds, then 2 more at a time to the entries "
                        "not yet decided, under a group-sequential rule (docs/metrics.md)")
    p.add_argument("--max-seeds", type=int, default=None, metavar="N", help="with --seeds auto: at most N (default 10)")
    p.add_argument("--budget", default=None, metavar="TIME",
                   help="with --seeds auto: training time the runs may take in all (90m, 2h); no batch starts that "
                        "would overrun it")
    p.add_argument("--preset", default="tiny", help="tiny (default); each task's presets are listed below")
    p.add_argument("--steps", type=int, default=None, help="the preset's schedule compressed to N steps")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value of every run")
    p.add_argument("--corrupt", type=_specs, default=None, metavar="NAME:LEVEL[,...]",
                   help="corruptions to evaluate (default: the task's sweep, every level; '' for none)")
    p.add_argument("--capacity", type=_floats, metavar="C[,...]",
                   help="also evaluate at these test-time capacity ratios (V-MoE; BPR on and off for vmoe)")
    p.add_argument("--bpr", default="both", choices=["both", "on", "off"], help="with --capacity (default both)")
    p.add_argument("--out", required=True, metavar="DIR", help="the comparison folder (runs/, results.json, report)")
    p.add_argument("--baseline", metavar="LABEL", default=None,
                   help="the entry every other is compared with, paired by seed (default: the first entry)")
    p.add_argument("--tune", action="append", metavar="KEY=V1,V2,...",
                   help="pick each entry's value of KEY on the validation split first (tuning runs in DIR/tune/ at "
                        f"seeds {TUNE_SEED_START}.., disjoint from --seeds), then compare every entry at its pick; "
                        "repeat for a grid over several keys, e.g. --tune train.lr=3e-4,1e-3,3e-3")
    p.add_argument("--tune-seeds", type=int, default=1, metavar="N",
                   help=f"tuning seeds per value ({TUNE_SEED_START}..; default 1); the pick has the best mean")
    p.add_argument("--margin", metavar="M", default=None,
                   help="the difference that does not matter, '2%%' of the baseline's mean or an absolute '0.5': "
                        "adds the verdicts equivalent, non-inferior and non-superior (default: none); with --seeds "
                        "auto an entry may stop as equivalent")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]")
    p.add_argument("--no-progress", action="store_true", help="no progress line")
    add_grid_arguments(p)
    p.set_defaults(fn=cmd_compare)


def add_analysis_parsers(sub) -> None:
    p = sub.add_parser("analyze", help="routing analytics of a trained run (writes RUN_DIR/analysis.json)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder of smoe train or smoe compare")
    p.add_argument("--device", default=None, help="where to load the model (default: the run's device)")
    p.set_defaults(fn=cmd_analyze)
    p = sub.add_parser("eval", help="task metric of a trained run under corruption, capacity or eval_k "
                                    "(writes RUN_DIR/eval.json)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder of smoe train or smoe compare")
    p.add_argument("--corrupt", type=_specs, default=None, metavar="NAME:LEVEL[,...]",
                   help="corruptions (level 0-5) among " + ", ".join(available_corruptions())
                   + "; default: the task's sweep (text: substitute, insert; images: noise, blur, occlude)")
    p.add_argument("--capacity", type=_floats, metavar="C[,...]",
                   help="test-time capacity ratios, e.g. 0.1,0.25,0.5,1.0 (each MoE layer's dispatcher)")
    p.add_argument("--bpr", default="both", choices=["both", "on", "off"],
                   help="with --capacity: Batch Prioritized Routing on, off or both (routers with it: vmoe)")
    p.add_argument("--eval-k", type=int, default=None, metavar="K",
                   help="experts per token at inference (routers with eval_k: topk, s2moe); writes eval-kK.json")
    p.add_argument("--split", default="test", choices=["valid", "test"], help="default test")
    p.add_argument("--device", default=None, help="where to load the model (default: the run's device)")
    p.set_defaults(fn=cmd_eval)


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a router on a task", epilog=train_help(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=available_tasks(), metavar="TASK",
                   help="one of: " + ", ".join(available_tasks()) + " (or --config)")
    p.add_argument("--config", metavar="FILE.yaml",
                   help="start from this configuration instead of --task/--preset (a run folder's config.yaml is "
                        "one); --router, --seed, --device, --steps and --set apply on top")
    p.add_argument("--router", default=None, metavar="NAME", help="a registered router (default topk)")
    p.add_argument("--preset", default=None, metavar="PRESET", help="tiny (default; CPU, minutes), medium or small")
    p.add_argument("--steps", type=int, default=None, help="total optimizer steps (default: the preset's)")
    p.add_argument("--seed", type=int, default=None, help="seed of init, data order, dropout and router noise "
                                                          "(default 0)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--out", required=True, metavar="DIR", help="the run folder")
    p.add_argument("--device", default=None, help="cpu (default) or cuda[:i]")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--expert-parallel", choices=["auto", "on", "off"], default="auto",
                   help="under torchrun: shard the experts over the ranks (auto: when num_experts is divisible by the "
                        "number of processes; off: pure data parallelism)")
    p.add_argument("--global-view", action="store_true",
                   help="under torchrun, with expert parallelism: routers that pool tokens (expert_choice) pool every "
                        "rank's tokens")
    p.add_argument("--dist-timeout", type=float, default=600.0, metavar="SECONDS",
                   help="under torchrun: seconds a collective waits for a dead or hung rank before it fails "
                        "(default 600)")
    p.set_defaults(fn=cmd_train)


USER_ERRORS = (ValueError, ImportError, OSError)  # ValueError: also FolderBusyError, DamagedFileError, CheckpointError
EXTRAS = {"transformers": "hf", "dask": "cluster", "distributed": "cluster"}  # optional packages -> smoe[extra]


def user_error(e: BaseException) -> str | None:
    """The one-line message of an error the user's input caused, None for any other (a bug: its traceback shows).
    ImportError: of an optional package, not of smoe itself; OSError: of a path (a user's file or folder)."""
    if not isinstance(e, USER_ERRORS):
        return None
    if isinstance(e, ImportError):
        if (e.name or "").split(".")[0] == "smoe":
            return None
        extra = EXTRAS.get((e.name or "").split(".")[0])
        return f"{e}; pip install 'smoe[{extra}]'" if extra else str(e)
    if isinstance(e, OSError) and e.filename is None:
        return None
    return "; ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    command = ""
    try:
        argv, imports = split_imports(argv)
        command = " ".join(argv[:1])
        load_all(imports)
        if argv[:1] == ["eval-embed"]:  # its own parser: argparse's REMAINDER would not take a leading -h or --option
            return eval_embed(argv[1:])
        args = build_parser().parse_args(argv)
        args.argv = argv[1:]
        what = getattr(args, "what", None)  # claims run, claims table, bench layer
        command = f"{args.command} {what}" if isinstance(what, str) else args.command
        return args.fn(args)
    except USER_ERRORS as e:
        message = user_error(e)
        if debug or message is None:
            raise
        print(f"{f'smoe {command}' if command else 'smoe'}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
