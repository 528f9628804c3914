"""The `smoe` command line. Each subcommand lives in its own function; heavy imports happen inside them."""

from __future__ import annotations

import argparse
import sys


def cmd_routers(args: argparse.Namespace) -> int:
    """Print every registered router, and every layer-level method (`build_moe`), with the paper it follows."""
    from smoe.layer import available_layers, layer_summary
    from smoe.routing import available_routers, router_summary

    rows = [(n, router_summary(n)) for n in available_routers()]
    rows += [(n, layer_summary(n) + "  [layer-level: smoe.build_moe]") for n in available_layers()]
    width = max(len(n) for n, _ in rows)
    for name, summary in sorted(rows):
        print(f"{name:<{width}}  {summary}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "layer":
        from smoe.bench.layer import main as bench_layer

        return bench_layer(args.rest)
    if args.what == "parallel":
        from smoe.bench.parallel import main as bench_parallel

        return bench_parallel(args.rest)
    raise SystemExit(f"unknown benchmark {args.what!r}")


def cmd_report(args: argparse.Namespace) -> int:
    """Re-render report.md, report.html and plots/ from DIR/results.json."""
    from smoe.report import write_report

    try:
        files = write_report(args.dir, args.out)
    except ValueError as err:
        print(f"smoe report: {err}", file=sys.stderr)
        return 2
    print(f"wrote {files.markdown} and {files.html} ({len(files.plots)} plots)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from smoe.layer import available_layers
    from smoe.routing import available_routers

    parser = argparse.ArgumentParser(
        prog="smoe",
        description="Sparse mixture-of-experts workbench. Routers: "
        + ", ".join(sorted(available_routers() + available_layers())),
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("routers", help="list the routers and their papers")
    p.set_defaults(fn=cmd_routers)
    p = sub.add_parser("bench", help="benchmarks: `smoe bench layer --help`, `smoe bench parallel --help`",
                       add_help=False)
    p.add_argument("what", choices=["layer", "parallel"])
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_bench)
    p = sub.add_parser("report", help="render report.md and report.html from a comparison's results.json")
    p.add_argument("dir", help="directory holding results.json (written by `smoe compare`)")
    p.add_argument("--out", help="directory for report.md, report.html and plots/ (default: DIR)")
    p.set_defaults(fn=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
