"""The command line's `smoe claims`: list the registered paper claims, run their comparisons and judge them
(`smoe claims run`), regenerate docs/results.md's verdict table from the committed results (`smoe claims table`)."""

from __future__ import annotations

import argparse
import sys

from smoe.workbench.claims.claim import CLAIMS, COMPARISONS
from smoe.workbench.claims.data import DEFAULT_DATA, STORE_ENV, store_dir
from smoe.workbench.claims.run import run_claims, write_claims_across, write_summary
from smoe.workbench.claims.table import CLAIMS_END, CLAIMS_START, DEFAULT_DOC, update_doc
from smoe.workbench.grid.jobs import add_grid_arguments, grid_config
from smoe.workbench.train.hints import thread_hint


def cmd_claims(args: argparse.Namespace) -> int:
    """`smoe claims`: list the paper claims; `smoe claims run NAME... | --all`: run their comparisons and judge;
    `smoe claims table`: regenerate docs/results.md's verdict table from the committed results."""
    if args.what is None:
        store = store_dir()
        print(f"{len(CLAIMS.names())} paper claims in {len(COMPARISONS.names())} comparisons; `smoe claims run NAME` "
              f"runs one (its comparison in the run store {store}/<comparison>/, its results to "
              f"{DEFAULT_DATA}/<comparison>/), `--all` every one:")
        for comparison in COMPARISONS.names():
            print(f"\n{comparison}: {COMPARISONS.get(comparison).command(store / comparison)}")
            for claim in (CLAIMS.get(n) for n in CLAIMS.names()):
                if claim.comparison == comparison:
                    marks = [m for m, on in (("reconstruction", claim.reconstruction),
                                             ("exploratory", claim.exploratory)) if on]
                    print(f"  {claim.name}  [{claim.paper}]\n    {claim.statement}\n    judged: {claim.describe()}"
                          + (f" [{', '.join(marks)}]" if marks else "")
                          + (f"\n    caveat: {claim.caveat}" if claim.caveat else ""))
        return 0
    if args.what == "table":
        return claims_table(args)
    if bool(args.names) == args.all:
        raise ValueError("name claims (see `smoe claims`) or give --all, not both")
    if hint := thread_hint():
        print(hint, file=sys.stderr)
    run = run_claims(args.names, args.store, args.data, seeds=args.seeds, steps=args.steps, preset=args.preset,
                     overrides=args.set or [], progress=not args.no_progress, grid=grid_config(args),
                     device=args.device)
    for note in run.notes:
        print(f"note: {note}", file=sys.stderr)
    for judgment in run.judgments:
        print(judgment.line())
    sizes = {j.result["family"]: j.result["family_size"] for j in run.judgments if j.result is not None}
    print(f"judged as one family: {sizes.get('claims', 0)} confirmatory claim(s) with results in {args.data}, Holm "
          f"(Benjamini-Hochberg as a second reading in claims.md); {sizes.get('exploratory claims', 0)} exploratory "
          f"claim(s) apart")
    markdown, _ = write_summary(store_dir(args.store), args.data, "smoe claims " + " ".join(args.argv))
    print(f"results: {args.data}/<comparison>/results.json (`smoe claims table` puts them into {DEFAULT_DOC}); "
          f"summary of every claim with results there: {markdown} (and claims.json beside it)")
    if across := write_claims_across(store_dir(args.store), args.data, run.judgments):
        print(f"their comparisons read together: {across}")
    for line in run.failed:
        print(f"failed: {line}", file=sys.stderr)
    if run.interrupted is not None:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 128 + run.interrupted
    return 1 if run.failed else 0


def claims_table(args: argparse.Namespace) -> int:
    """`smoe claims table [--check]`: the verdict table of --doc regenerated from --data."""
    changed = update_doc(args.doc, args.data, check=args.check)
    if args.check:
        print(f"{args.doc}: the claims table {'differs from' if changed else 'equals'} the one regenerated from "
              f"{args.data}" + ("; run `smoe claims table`" if changed else ""))
        return 1 if changed else 0
    print(f"{args.doc}: claims table regenerated from {args.data} ({'changed' if changed else 'unchanged'})")
    return 0


def add_claims_parser(sub) -> None:
    p = sub.add_parser("claims", help="paper claims as data: list them; `smoe claims run` tests them, `smoe claims "
                                      "table` regenerates docs/results.md's verdict table")
    p.set_defaults(fn=cmd_claims, what=None)
    commands = p.add_subparsers(dest="what")
    r = commands.add_parser(
        "run", help="run the claims' comparisons (resumable) and print supported / contradicted / not resolved")
    r.add_argument("names", nargs="*", metavar="NAME", help="claims to run (see `smoe claims`)")
    r.add_argument("--all", action="store_true", help="every claim")
    r.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default: each comparison's, 3)")
    r.add_argument("--steps", type=int, default=None, help="every preset's schedule compressed to N steps")
    r.add_argument("--preset", default=None,
                   help="run at this preset where the task has it (default: each comparison's, tiny)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value of every run, after the comparison's own (repeatable)")
    r.add_argument("--store", default=None, metavar="DIR",
                   help=f"the run store: comparisons run in DIR/<comparison>/ (every run folder, resumable across "
                        f"days); DIR/claims.md and claims.json summarise the claims with results in --data (default "
                        f"${STORE_ENV}, else ~/.cache/smoe/claims)")
    r.add_argument("--data", default=DEFAULT_DATA, metavar="DIR",
                   help=f"each finished comparison's compact results go to DIR/<comparison>/results.json (default "
                        f"{DEFAULT_DATA}, kept in the repository)")
    r.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]")
    add_grid_arguments(r)
    r.add_argument("--no-progress", action="store_true", help="no progress line")
    t = commands.add_parser("table", help=f"regenerate the verdict table of {DEFAULT_DOC} (between {CLAIMS_START} and "
                                          f"{CLAIMS_END}) from the committed results; no training")
    t.add_argument("--data", default=DEFAULT_DATA, metavar="DIR",
                   help=f"the compact results, DIR/<comparison>/results.json (default {DEFAULT_DATA})")
    t.add_argument("--doc", default=DEFAULT_DOC, metavar="FILE", help=f"the Markdown file (default {DEFAULT_DOC})")
    t.add_argument("--check", action="store_true",
                   help="change nothing; exit 1 when the table differs from the regenerated one")
