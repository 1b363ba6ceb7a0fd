"""The worker pools a fused segment runs on: Ray actors, or, for a small local run, plain
worker processes that start no Ray at all.

Both give the executor the same few calls (`call`, `get`, `wait`, `held`, `release`): a worker runs its
calls one after another, in the order they were made, and keeps its state between them (the
configured chain of operators, their models), as a Ray actor does.

Why a pool without Ray: on 2 cores a local `ray.init` costs ~3-4 s (GCS, raylet and five Python
helper processes that import for ~1 s CPU each), its actors ~0.7 s more to start and import,
and its shutdown ~0.5 s: more than the work itself for the thousands of documents people iterate
on in a notebook. `LocalPool` forks its workers from a `multiprocessing` fork server that has
already imported the engine and every built-in operator module (~0.6 s, once per driver process,
started by `gristmill run` before it loads the recipe), so the first unit starts a moment after
the run does. What a worker keeps (the kept rows of its units)
it writes as an Arrow IPC file in the run's spill folder and hands back a `LocalTable` naming it;
whichever worker writes a shard memory-maps those files, so rows never pass through the driver,
as with Ray's object store. The spill folder is removed when the segment is written.
"""
from __future__ import annotations

import concurrent.futures as cf
import importlib.util
import multiprocessing
import os
import shutil
import sys
import types
import uuid
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa  # imported where used: `gristmill run` starts the fork server before it


def local_cpus() -> int:
    """The cores this process may use (its affinity mask, as a container's cpuset limits it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def requested_executor(option: str | None, address: str | None) -> str:
    """The executor asked for (`--executor`, else GRISTMILL_EXECUTOR, else auto): "ray" when a
    cluster is named (`--address`, RAY_ADDRESS), else auto, ray or local. `local` with a
    cluster named, or an unknown name, is an error."""
    want = (option or os.environ.get("GRISTMILL_EXECUTOR") or "auto").lower()
    if want not in ("auto", "ray", "local"):
        raise ValueError(f"executor {want!r} (--executor / GRISTMILL_EXECUTOR): expected auto, ray or local")
    if address or os.environ.get("RAY_ADDRESS"):
        if want == "local":
            raise ValueError("executor local runs without Ray: it cannot join the cluster named by "
                             + ("--address" if address else "RAY_ADDRESS"))
        return "ray"
    return want


class LocalTable:
    """Rows a local worker kept, as an Arrow IPC file in the spill folder (read memory-mapped)."""

    __slots__ = ("path",)

    def __init__(self, path: str):
        self.path = path

    def read(self) -> pa.Table:
        import pyarrow as pa

        with pa.memory_map(self.path) as source:
            return pa.ipc.open_file(source).read_all()


def fetch(refs) -> list[pa.Table]:
    """The tables behind `refs`: LocalTable files, or Ray object refs (ray.get)."""
    refs = list(refs)
    if all(isinstance(r, LocalTable) for r in refs):
        return [r.read() for r in refs]
    import ray

    return ray.get(refs)


# -- the local worker process -------------------------------------------------------------------
_WORKER = None  # this process's SegmentWorker
_SPILL: str | None = None


def _start_worker(spill_dir: str, plugins: list[tuple[str, str]], log_path: str | None) -> None:
    """Initializer of a local worker: its output to the run's log file (the CLI's: the server
    may have started before the terminal was redirected), the recipe's plugins (so that their
    operator classes unpickle here by name), then one SegmentWorker whose kept rows go to spill
    files."""
    global _WORKER, _SPILL
    if log_path:
        log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
    from operators.base import load_plugin
    from pipeline.executor import SegmentWorker

    for spec, base in plugins:
        load_plugin(spec, base)
    import pyarrow as pa

    pa.set_cpu_count(1)  # one CPU per worker (see start_server)
    _SPILL = spill_dir
    _WORKER = SegmentWorker()
    _WORKER.hold = _spill


def _spill(table: pa.Table | None) -> LocalTable | None:
    import pyarrow as pa

    if table is None:
        return None
    os.makedirs(_SPILL, exist_ok=True)
    path = os.path.join(_SPILL, f"{uuid.uuid4().hex}.arrow")
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return LocalTable(path)


def _ready() -> bool:
    return True


def _call(method: str, args: tuple):
    return getattr(_WORKER, method)(*args)


def _split(fut: cf.Future, n: int) -> list[cf.Future]:
    """One future per element of `fut`'s tuple result (Ray's num_returns)."""
    parts = [cf.Future() for _ in range(n)]

    def done(f: cf.Future) -> None:
        e = f.exception()
        for i, p in enumerate(parts):
            if e is not None:
                p.set_exception(e)
            else:
                p.set_result(f.result()[i])

    fut.add_done_callback(done)
    return parts


def _resolved(arg):
    if isinstance(arg, cf.Future):
        return arg.result()
    if isinstance(arg, list) and any(isinstance(a, cf.Future) for a in arg):
        return [a.result() if isinstance(a, cf.Future) else a for a in arg]
    return arg


_SERVER_STARTED = False


def start_server(preload: list[str] | None = None, quiet: bool = False) -> None:
    """Start the fork server the local workers are forked from, once per driver process. It
    returns at once: the server imports `preload` (default: the engine and every built-in
    operator module, with pandas: ~0.6 s on 2 cores) in the background, so `gristmill run` starts
    it before loading the recipe and the two overlap. Forking from this clean, single-threaded
    server rather than from the driver itself: the driver may hold threads (pyarrow's, polars', a
    notebook's) that a fork would copy in a broken state. Modules not preloaded (a plugin's)
    import in each worker.

    ``quiet``: the server and multiprocessing's resource tracker (started with it) get
    /dev/null as stderr: `gristmill run` starts them before its terminal is redirected to the
    run's log, and all they would print there is the tracker's notes on semaphores of workers
    stopped at the end; the workers themselves write to the log (LocalPool's log_path)."""
    global _SERVER_STARTED
    if _SERVER_STARTED:
        return
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(preload or default_preload())
    # one thread per worker: a worker is one CPU of the pool (as a Ray actor with num_cpus=1),
    # and polars' or OpenBLAS's own thread pools in each of them only fight over the same
    # cores (gopher_repetition: ~25% less CPU with polars on one thread; an idle OpenBLAS
    # thread spins). These are read when the libraries are imported, in the server's preload.
    saved = dict(os.environ)
    for var in _THREAD_VARS:
        os.environ.setdefault(var, "1")
    err = os.dup(2) if quiet else None
    if quiet:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
    try:
        from multiprocessing import forkserver

        forkserver.ensure_running()
    finally:
        os.environ.clear()
        os.environ.update(saved)
        if err is not None:
            os.dup2(err, 2)
            os.close(err)
    _SERVER_STARTED = True


def default_preload() -> list[str]:
    import pkgutil

    import operators

    mods = ["pipeline.executor"] + [f"operators.{m.name}" for m in pkgutil.iter_modules(operators.__path__)
                                    if not m.name.startswith("_") and m.name != "base"]
    # pandas: imported later in every worker anyway (~0.15 s each), by pyarrow on the first
    # array it builds from Python objects; pipeline._fork_server last (its exit handler first)
    pandas = ["pandas"] if importlib.util.find_spec("pandas") is not None else []
    return mods + pandas + ["pipeline._fork_server"]


_THREAD_VARS = ("POLARS_MAX_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class LocalPool:
    """`size` worker processes, each a ProcessPoolExecutor of one: its calls run in order."""

    def __init__(self, size: int, spill_dir: str, plugins: list[tuple[str, str]], log_path: str | None = None):
        start_server()
        ctx = multiprocessing.get_context("forkserver")
        self.spill_dir = spill_dir
        self.clear_spill()  # what a killed run left there
        self._execs = [cf.ProcessPoolExecutor(1, mp_context=ctx, initializer=_start_worker,
                                              initargs=(spill_dir, plugins, log_path)) for _ in range(size)]
        # Start every worker now (each starts on its first call). multiprocessing would run the
        # driver's main script again in each worker (it prepares a spawned child so): a user's
        # script calling pipeline.run without an `if __name__ == "__main__":` guard would run
        # itself in every worker. The workers need nothing from it, so they are started with a
        # bare __main__ in its place.
        main = sys.modules["__main__"]
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            for ex in self._execs:
                ex.submit(_ready)
        finally:
            sys.modules["__main__"] = main

    def __len__(self) -> int:
        return len(self._execs)

    def first(self, n: int) -> "LocalPool":
        view = object.__new__(LocalPool)
        view.spill_dir, view._execs = self.spill_dir, self._execs[:n]
        return view

    def call(self, w: int, method: str, *args, returns: int = 1):
        # a future among the arguments (or in a list argument) is another call's result:
        # resolved here (on Ray, the object store hands it over)
        args = tuple(_resolved(a) for a in args)
        try:
            fut = self._execs[w].submit(_call, method, args)
        except BrokenProcessPool as e:
            raise RuntimeError(f"local worker {w} died (killed, or out of memory?)") from e
        return fut if returns == 1 else _split(fut, returns)

    @staticmethod
    def get(handles):
        try:
            if isinstance(handles, list):
                return [h.result() for h in handles]
            return handles.result()
        except BrokenProcessPool as e:
            raise RuntimeError("a local worker died (killed, or out of memory?); the steps written so far are "
                               "kept and a rerun resumes from them") from e

    @staticmethod
    def wait(handles: list, timeout: float) -> list:
        done, _ = cf.wait(handles, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return list(done)

    def held(self, handle):
        """What the driver keeps of a finished call's rows: the LocalTable (a file name)."""
        return self.get(handle)

    def clear_spill(self) -> None:
        shutil.rmtree(self.spill_dir, ignore_errors=True)

    def release(self) -> None:
        """Stop the workers at once (a unit in progress is abandoned, as ray.kill does)."""
        procs = []
        for ex in self._execs:
            procs += list((getattr(ex, "_processes", None) or {}).values())
            ex.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        self._execs = []
        self.clear_spill()


def shutdown_local() -> None:
    """multiprocessing's exit-time clean-up, for a process that ends with os._exit (the CLI):
    its finalizers remove the fork server's socket folder (/tmp/pymp-*), which would otherwise
    be left behind by every run; the fork server itself exits when this process does."""
    from multiprocessing import util

    util._run_finalizers()


class RayPool:
    """SegmentWorker actors (Ray's object store holds what they keep)."""

    def __init__(self, actors: list):
        self.actors = actors

    def __len__(self) -> int:
        return len(self.actors)

    def first(self, n: int) -> "RayPool":
        return RayPool(self.actors[:n])

    def call(self, w: int, method: str, *args, returns: int = 1):
        m = getattr(self.actors[w], method)
        return m.remote(*args) if returns == 1 else m.options(num_returns=returns).remote(*args)

    @staticmethod
    def get(handles):
        import ray

        return ray.get(handles)

    @staticmethod
    def wait(handles: list, timeout: float) -> list:
        import ray

        done, _ = ray.wait(handles, num_returns=1, timeout=timeout)
        return done

    @staticmethod
    def held(handle):
        """What the driver keeps of a finished call's rows: the object ref (the rows stay put)."""
        return handle

    def clear_spill(self) -> None:
        pass

    def release(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []
