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
    raise SystemExit(f"unknown benchmark {args.what!r}")


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
    p = sub.add_parser("bench", help="benchmarks: `smoe bench layer --help`", add_help=False)
    p.add_argument("what", choices=["layer"])
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
