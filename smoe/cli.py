"""The `smoe` command line. Each subcommand lives in its own function; heavy imports happen inside them."""

from __future__ import annotations

import argparse
import sys


def cmd_routers(args: argparse.Namespace) -> int:
    """Print every registered router with the paper it follows."""
    from smoe.routing import available_routers, router_summary

    names = available_routers()
    width = max(map(len, names))
    for name in names:
        print(f"{name:<{width}}  {router_summary(name)}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "layer":
        from smoe.bench.layer import main as bench_layer

        return bench_layer(args.rest)
    if args.what == "parallel":
        from smoe.bench.parallel import main as bench_parallel

        return bench_parallel(args.rest)
    raise SystemExit(f"unknown benchmark {args.what!r}")


def build_parser() -> argparse.ArgumentParser:
    from smoe.routing import available_routers

    parser = argparse.ArgumentParser(
        prog="smoe",
        description="Sparse mixture-of-experts workbench. Routers: " + ", ".join(available_routers()),
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("routers", help="list the routers and their papers")
    p.set_defaults(fn=cmd_routers)
    p = sub.add_parser("bench", help="benchmarks: `smoe bench layer --help`, `smoe bench parallel --help`",
                       add_help=False)
    p.add_argument("what", choices=["layer", "parallel"])
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
