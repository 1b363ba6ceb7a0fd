"""gristmill command line: run, validate, ops."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from pipeline.recipe import RecipeError, load_recipe


def _load(args):
    return load_recipe(args.recipe, overrides=args.set or [])


def cmd_validate(args) -> int:
    loaded = _load(args)
    print(f"{args.recipe}: ok — {len(loaded.recipe.steps)} steps: "
          + " -> ".join(f"{s.id}({s.op})" for s in loaded.recipe.steps))
    return 0


def cmd_run(args) -> int:
    from pipeline.executor import RunOptions, run_recipe

    loaded = _load(args)
    out = args.output or loaded.recipe.output
    t0 = time.perf_counter()
    terminal = None
    if not args.verbose and "://" not in out:  # Ray's own lines and warnings go to a log file
        from pipeline.runtime import TerminalOutput

        terminal = TerminalOutput(os.path.join(out, "gristmill.log"))
    term_out, term_err = (terminal.out, terminal.err) if terminal else (sys.stdout, sys.stderr)
    if terminal and not args.quiet:
        print(f"[gristmill] log: {terminal.log_path} (Ray's messages; --verbose shows them here)",
              file=term_err, flush=True)
    try:
        stats = run_recipe(loaded, RunOptions(output=out, address=args.address, max_workers=args.workers,
                                              resume=not args.no_resume, quiet=args.quiet, term=term_err))
    except Exception as e:  # noqa: BLE001 - the traceback is in the log; the terminal gets the gist
        if terminal is None:
            raise
        import traceback

        traceback.print_exc()  # into the log
        print(f"gristmill: run failed: {type(e).__name__}: {str(e).strip()[-1500:]}\n"
              f"  full traceback: {terminal.log_path}", file=term_err, flush=True)
        return 1
    wall = time.perf_counter() - t0
    outputs = ", ".join(f"{out}/{s}" for s in stats["outputs"])
    by = {s["id"]: s for s in stats["steps"]}
    if not stats.get("ran"):
        print(f"[gristmill] nothing to run: every output is complete from an earlier run with the same recipe "
              f"and inputs ({wall:.1f}s, no document read); outputs {outputs}; stats {out}/stats.json "
              "(--no-resume recomputes)", file=term_out, flush=True)
        return 0
    read = by.get("read")
    if read is not None and read.get("status") == "ran":
        docs = read["docs_in"]
        what = f"{docs:,} docs read ({docs / max(wall, 1e-9):,.0f} docs/s end to end)"
    else:
        what = "input unchanged (steps up to the first written output skipped)"
    print(f"[gristmill] done in {wall:.1f}s: {what}; outputs {outputs}; stats {out}/stats.json",
          file=term_out, flush=True)
    return 0


def cmd_ops(args) -> int:
    from operators.base import load_operators

    registry = load_operators()
    if not args.name:
        for name in sorted(registry):
            cls = registry[name]
            print(f"{name:<20} {cls.kind:<7} {cls.describe()}")
        return 0
    cls = registry.get(args.name)
    if cls is None:
        import difflib

        close = difflib.get_close_matches(args.name, registry, n=1)
        print(f"unknown operator {args.name!r}" + (f"; did you mean {close[0]!r}?" if close else ""), file=sys.stderr)
        return 2
    print(f"{cls.name} ({cls.kind}) — {(cls.__doc__ or '').strip()}")
    print(f"  needs: {', '.join(sorted(cls.needs)) or '-'}   adds: {', '.join(sorted(cls.adds)) or '-'}")
    r = cls.resources
    print(f"  resources: num_cpus={r.num_cpus} num_gpus={r.num_gpus} batch_size={r.batch_size} "
          f"actor={r.actor}" + (f" concurrency={r.concurrency}" if r.concurrency else ""))
    print("  params:")
    for fname, f in cls.Params.model_fields.items():
        default = "required" if f.is_required() else json.dumps(f.default, default=str)
        ann = getattr(f.annotation, "__name__", None) or str(f.annotation).replace("typing.", "")
        print(f"    {fname:<22} {ann:<18} default {default:<10} {f.description or ''}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gristmill", description="LLM pre-training data curation on Ray")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, help_ in (("run", "run a recipe"), ("validate", "check a recipe without running it")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("recipe")
        p.add_argument("--set", action="append", metavar="PATH=VALUE",
                       help="override a recipe value, e.g. steps.lang.params.min_score=0.8 (repeatable)")
        if name == "run":
            p.add_argument("--output", help="output dir (default: the recipe's `output`)")
            p.add_argument("--address", help="Ray cluster to join: auto or ray://host:port (default: local Ray)")
            p.add_argument("--workers", type=int, help="at most this many parallel workers per step")
            p.add_argument("--no-resume", action="store_true", help="recompute steps even if complete")
            p.add_argument("--quiet", action="store_true", help="no progress output")
            p.add_argument("--verbose", action="store_true",
                           help="show Ray's own log lines and warnings here instead of in OUTPUT/gristmill.log")
    p = sub.add_parser("ops", help="list operators, or show one operator's parameters")
    p.add_argument("name", nargs="?")
    args = ap.parse_args(argv)
    try:
        return {"run": cmd_run, "validate": cmd_validate, "ops": cmd_ops}[args.cmd](args)
    except RecipeError as e:
        print(str(e), file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"gristmill: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
