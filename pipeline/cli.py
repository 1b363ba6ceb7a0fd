"""gristmill command line: run, validate, ops."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from pipeline.lock import OutputError

# pipeline.recipe (pyarrow, polars, pydantic and every operator module: ~0.4 s) is imported only
# where it is used, so that `gristmill run` starts its local workers' fork server first


class Stopped(BaseException):
    """SIGTERM (a scheduler ending the job, `kill`): raised in the main thread so that the run
    unwinds as on Ctrl-C (pool released, lock removed, Ray shut down) instead of dying with
    Ray's helper processes left behind."""


def _stop(signum, frame):
    raise Stopped()


def _interruption(e: BaseException) -> BaseException | None:
    """Ctrl-C or SIGTERM behind `e`: raised inside Ray's compiled code (ray.wait), the signal's
    exception comes back wrapped, as the cause or context of a SystemError."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, (KeyboardInterrupt, Stopped)):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _load(args):
    from pipeline.recipe import load_recipe

    return load_recipe(args.recipe, overrides=args.set or [])


def cmd_validate(args) -> int:
    loaded = _load(args)
    print(f"{args.recipe}: ok — {len(loaded.recipe.steps)} steps: "
          + " -> ".join(f"{s.id}({s.op})" for s in loaded.recipe.steps))
    return 0


def cmd_run(args) -> int:
    from pipeline.lock import output_lock

    from pipeline.pools import requested_executor, start_server

    try:
        local = requested_executor(args.executor, args.address) != "ray"  # may be (the executor decides)
    except ValueError:
        local = False  # the run itself reports it
    if local:
        start_server(quiet=not args.verbose)  # its imports overlap with loading the recipe (pipeline.pools)
    loaded = _load(args)
    out = args.output or loaded.recipe.output
    with output_lock(out):  # one run per output dir, taken before anything is written there
        return _run_locked(args, loaded, out)


def _run_locked(args, loaded, out) -> int:
    from pipeline.executor import RunOptions, run_recipe
    from pipeline.whatif import save_run_recipe

    save_run_recipe(loaded, out)  # the thresholds as run (overrides applied): read by report / what-if
    t0 = time.perf_counter()
    terminal = None
    if not args.verbose and "://" not in out:  # Ray's own lines and warnings go to a log file
        from pipeline.runtime import TerminalOutput

        terminal = TerminalOutput(os.path.join(out, "gristmill.log"))
    term_out, term_err = (terminal.out, terminal.err) if terminal else (sys.stdout, sys.stderr)
    if terminal and not args.quiet:
        print(f"[gristmill] log: {terminal.log_path} (Ray's and the workers' own messages; --verbose shows them here)",
              file=term_err, flush=True)
    try:
        stats = run_recipe(loaded, RunOptions(output=out, address=args.address, max_workers=args.workers,
                                              resume=not args.no_resume, quiet=args.quiet, term=term_err,
                                              executor=args.executor,
                                              log_path=terminal.log_path if terminal else None))
    except BaseException as e:  # noqa: BLE001 - the traceback is in the log; the terminal gets the gist
        stop = _interruption(e)
        if stop is not None:
            how = "interrupted" if isinstance(stop, KeyboardInterrupt) else "stopped by SIGTERM"
            print(f"gristmill: run {how}; the steps written so far are kept: the same command resumes from them",
                  file=term_err, flush=True)
            return 130 if isinstance(stop, KeyboardInterrupt) else 143
        if terminal is None or not isinstance(e, Exception):
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
    from operators.base import PluginError, load_operators, load_plugin
    from pipeline.operator_docs import describe_operator, list_operators

    registry = dict(load_operators())
    origin: dict[str, str] = {}  # operator name -> the plugin that registered it
    plugins = [(p, None) for p in args.plugins or []]
    if args.recipe:
        from pipeline.recipe import load_recipe

        loaded = load_recipe(args.recipe)  # validates the recipe, imports its plugins
        plugins += [(p, os.path.dirname(os.path.abspath(args.recipe))) for p in loaded.recipe.plugins]
    for spec, base in plugins:
        try:
            module = load_plugin(spec, base)
        except PluginError as e:
            print(f"gristmill ops: {e}", file=sys.stderr)
            return 2
        for name, cls in load_operators().items():
            if cls.__module__ == module.__name__ or cls.__module__.startswith(module.__name__ + "."):
                registry[name], origin[name] = cls, spec
    if plugins and not origin:
        print(f"gristmill ops: {', '.join(p for p, _ in plugins)} registered no operator "
              "(decorate each operator class with @register)", file=sys.stderr)
        return 2
    if not args.name:
        print(list_operators({n: registry[n] for n in origin} if plugins and not args.all else registry, origin))
        return 0
    cls = registry.get(args.name)
    if cls is None:
        import difflib

        close = difflib.get_close_matches(args.name, registry, n=1)
        print(f"unknown operator {args.name!r}" + (f"; did you mean {close[0]!r}?" if close else
                                                  "; `gristmill ops` lists them (plugins: --plugins MODULE_OR_PATH)"),
              file=sys.stderr)
        return 2
    print(describe_operator(cls))
    return 0


def cmd_new_operator(args) -> int:
    from pipeline.new_operator import write_skeleton

    try:
        paths = write_skeleton(args.name, args.dir, args.kind, args.force)
    except (ValueError, FileExistsError) as e:
        print(f"gristmill new-operator: {e}", file=sys.stderr)
        return 2
    module, test = paths
    print(f"wrote {module} and {test}\n"
          f"  test it:   pytest {test}\n"
          f"  use it:    list it under a recipe's `plugins:` by its path relative to the recipe (for a recipe in "
          f"{os.path.dirname(os.path.abspath(module))}: `plugins: [{args.name}.py]` or the module name "
          f"`plugins: [{args.name}]`)\n"
          f"  see it:    gristmill ops {args.name} --plugins {module}")
    return 0


def cmd_report(args) -> int:
    from pipeline.report import write_report

    t0 = time.perf_counter()
    path = write_report(args.out, args.output)
    print(f"[gristmill] report {path} ({os.path.getsize(path) / 2**20:.1f} MB, {time.perf_counter() - t0:.1f}s)")
    if args.open:
        import webbrowser

        webbrowser.open("file://" + os.path.abspath(path))
    return 0


def cmd_what_if(args) -> int:
    from pipeline.whatif import format_what_if, what_if

    if not args.set:
        print("gristmill what-if: give at least one --set steps.<id>.params.<name>=<value>", file=sys.stderr)
        return 2
    result = what_if(args.out, args.set)
    print(format_what_if(result))
    return 0


def cmd_shards(args) -> int:
    from pipeline.megatron import format_shards

    print(format_shards(args.dir, peek=args.peek, shard=args.shard))
    return 0


def add_report_commands(sub) -> None:
    p = sub.add_parser("report", help="one self-contained HTML file with the run's plots (works offline)")
    p.add_argument("out", help="the output dir of a finished run")
    p.add_argument("--output", help="HTML file to write (default: OUT/report.html)")
    p.add_argument("--open", action="store_true", help="open it in the default browser")
    p = sub.add_parser("what-if", help="what a run would keep with other thresholds, from its recorded scores (no rerun)")
    p.add_argument("out", help="the output dir of a finished run")
    p.add_argument("--set", action="append", metavar="steps.ID.params.NAME=VALUE",
                   help="a changed threshold (repeatable)")


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
            p.add_argument("--executor", choices=("auto", "ray", "local"),
                           help="auto (default; GRISTMILL_EXECUTOR): a small local run uses worker processes "
                                "and starts no Ray, anything else runs on Ray; ray or local force one")
            p.add_argument("--no-resume", action="store_true", help="recompute steps even if complete")
            p.add_argument("--quiet", action="store_true", help="no progress output")
            p.add_argument("--verbose", action="store_true",
                           help="show Ray's own log lines and warnings here instead of in OUTPUT/gristmill.log")
    p = sub.add_parser("ops", help="list operators, or show one operator's parameters")
    p.add_argument("name", nargs="?")
    p.add_argument("--plugins", action="append", metavar="MODULE_OR_PATH",
                   help="also import this plugin (a module name or a .py path) and list its operators (repeatable)")
    p.add_argument("--recipe", help="also import the plugins this recipe lists (paths relative to it)")
    p.add_argument("--all", action="store_true", help="with --plugins/--recipe: list built-in operators too")
    p = sub.add_parser("new-operator", help="write an operator skeleton and its test (a plugin module)")
    p.add_argument("name", help="operator name, also the module name (lowercase, digits, _)")
    p.add_argument("--kind", choices=("filter", "map", "global"), default="filter")
    p.add_argument("--dir", default=".", help="folder to write NAME.py and test_NAME.py into (default: here)")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    add_report_commands(sub)
    p = sub.add_parser("shards", help="a mixture's manifest as tables, and a few documents decoded from a shard")
    p.add_argument("dir", help="a <step>.shards directory, or a run's output dir holding one")
    p.add_argument("--peek", type=int, default=2, help="documents to decode (default 2; 0: none)")
    p.add_argument("--shard", help="shard prefix to peek into, relative to DIR (default: the first)")
    args = ap.parse_args(argv)
    try:
        return {"run": cmd_run, "validate": cmd_validate, "ops": cmd_ops,
                "new-operator": cmd_new_operator, "report": cmd_report, "what-if": cmd_what_if,
                "shards": cmd_shards}[args.cmd](args)
    except FileNotFoundError as e:
        print(f"gristmill: {e}", file=sys.stderr)
        return 2
    except OutputError as e:  # output dir locked by another run, or not writable
        print(f"gristmill: {e}", file=sys.stderr)
        return 3
    except Exception as e:  # RecipeError, without importing pipeline.recipe up front
        recipe = sys.modules.get("pipeline.recipe")
        if recipe is None or not isinstance(e, recipe.RecipeError):
            raise
        print(str(e), file=sys.stderr)
        return 2


def entry() -> None:
    """The `gristmill` command: main(), then a quick exit. Ray is shut down here (its processes
    stopped together: pipeline.runtime.shutdown_ray), then the process ends without the
    interpreter's module teardown, which on its own takes over a second after a run."""
    import signal

    signal.signal(signal.SIGTERM, _stop)
    try:
        rc = main()
    except Stopped:  # before or after a run: nothing to report
        rc = 143
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if "ray" in sys.modules:  # not imported by validate, ops, ...
        from pipeline.runtime import shutdown_ray

        shutdown_ray()
    if "pipeline.pools" in sys.modules:  # a local pool ran: what os._exit would leave behind
        from pipeline.pools import shutdown_local

        shutdown_local()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


if __name__ == "__main__":
    entry()
