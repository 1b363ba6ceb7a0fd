"""Starting Ray once per process, quietly, with the settings gristmill relies on."""
from __future__ import annotations

import logging
import os
import sys

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local runs: no token files in ~/.ray
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# Ray keeps ~one idle worker per CPU; shuffle reducers and actors then restart Python worker
# processes at every stage (5-10 s each on 2 cores). Keeping a few more idle workers avoids it.
os.environ.setdefault("RAY_num_workers_soft_limit", str(max(8, 2 * (os.cpu_count() or 2))))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage-stats prompt or thread


# glibc malloc in a worker: allocations under 32 MB from the heap, and up to 512 MB of freed heap
# kept rather than handed back to the system. By default malloc maps every block over 128 KB
# afresh and unmaps it on free, until its dynamic threshold has risen, so a worker's first batch
# pays a page fault per 4 KB of each numpy temporary: language_id's first batch of the web
# benchmark took 0.53 s of CPU, later ones with new text 0.22 s (0.21 s first with this).
_MALLOC_SETTINGS = ((-3, 32 << 20), (-1, 512 << 20), (-2, 64 << 20))  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, M_TOP_PAD


def keep_freed_memory() -> bool:
    """Tune this process's glibc malloc for batch work (see _MALLOC_SETTINGS); False where the
    C library is not glibc (nothing is changed there)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    return all(mallopt(param, value) == 1 for param, value in _MALLOC_SETTINGS)


class TerminalOutput:
    """Sends this process's file descriptors 1 and 2 (everything Ray, its C++ core, its
    subprocesses and Python warnings print) to `log_path`, and keeps the real terminal as
    `out` / `err` for our own lines and the live display. `restore()` undoes it."""

    def __init__(self, log_path: str):
        import sys

        os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        self.log_path = log_path
        self._saved = (os.dup(1), os.dup(2))
        self.out = os.fdopen(os.dup(self._saved[0]), "w", buffering=1)
        self.err = os.fdopen(os.dup(self._saved[1]), "w", buffering=1)
        self._log = open(log_path, "a", buffering=1)
        os.dup2(self._log.fileno(), 1)
        os.dup2(self._log.fileno(), 2)

    def restore(self) -> None:
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        self._log.close()


def bind_loopback() -> None:
    """Make a local Ray listen on and talk to 127.0.0.1 only. Ray otherwise replaces loopback with
    the machine's routable address, even for a single-node run; nothing of a local run needs the
    network. Ray's own switch for this is RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (read at import,
    and passed on to the processes Ray starts), so it is set in the environment and, when ray was
    imported earlier, on its constants module. A cluster (``--address``) is left as it is."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray._private.ray_constants as ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def init_ray(address: str | None = None, num_cpus: int | None = None, quiet: bool = False,
             progress: bool = True):
    """Connect to ``address`` (a cluster: ``auto`` or ``ray://...``) or start a local Ray.

    Idempotent: a second call in the same process reuses the running Ray.
    """
    import ray

    if not ray.is_initialized():
        before = _python_sigterm_handler()
        kwargs = dict(include_dashboard=False, logging_level=logging.WARNING,
                      log_to_driver=not quiet, ignore_reinit_error=True)
        if address:
            check_reachable(address)
            ray.init(address=address, **kwargs)
        elif os.environ.get("RAY_ADDRESS"):
            check_reachable(os.environ["RAY_ADDRESS"], named_by="RAY_ADDRESS=")
            ray.init(**kwargs)  # a cluster named in the environment
        else:
            # "local": a Ray of our own, even when /tmp/ray/ray_current_cluster names another
            # process's cluster (plain ray.init() would join it)
            bind_loopback()
            try:
                ray.init(address="local", num_cpus=num_cpus, **kwargs)
            except Exception as e:  # noqa: BLE001 - Ray gives its raylet 30 s to register, hard-coded
                if "timed out during startup" not in str(e):
                    raise
                ray.shutdown()  # a machine too busy to start it in time: one more try
                ray.init(address="local", num_cpus=num_cpus, **kwargs)
        if before is not None:
            # Ray's C++ failure handler (stack trace, then abort) replaced it: put it back, so
            # that SIGTERM still unwinds the run (pipeline.cli.entry)
            import signal

            signal.signal(signal.SIGTERM, before)
    _DATA_CONTEXT.update(enable_progress_bars=progress and not quiet, print_on_execution_start=False,
                         verbose_stats_logs=False)
    if "ray.data" in sys.modules:
        ray_data()
    return ray


_DATA_CONTEXT: dict = {}  # the Ray Data settings init_ray chose, applied by ray_data()


def ray_data():
    """``ray.data``, with the DataContext settings of the last init_ray. Imported on first use:
    the import takes ~1.2 s of the driver's start-up on 2 cores, and a run whose segments all
    run on the worker pool (map/filter chains, small global steps) never uses Ray Data."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    for key, value in _DATA_CONTEXT.items():
        setattr(ctx, key, value)
    return ray.data


def check_reachable(address: str, named_by: str = "--address ", timeout_s: float = 10.0) -> None:
    """Fail at once, naming the address, when no Ray cluster answers there: ``ray.init`` retries
    an unreachable GCS forever, and its messages go to the log file, so the run would just hang.
    The address is resolved as Ray resolves it (``auto``: the latest ``ray start``; 127.0.0.1:
    the machine's own address). Ray Client addresses (``ray://``) are left to Ray."""
    import socket

    if address.startswith("ray://"):
        return
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:  # private: a Ray without it connects as it always did
        return
    try:
        target = canonicalize_bootstrap_address(address)
    except Exception as e:  # noqa: BLE001 - e.g. `auto` with no cluster started on this machine
        raise ConnectionError(f"{named_by}{address}: {e}") from None
    if target is None:
        return
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as e:
        seen = "" if target == address else f" (Ray's address for it: {target})"
        raise ConnectionError(f"{named_by}{address}: no Ray cluster answers{seen}: {e}. Start one with "
                              "`ray start --head`, or leave --address out to run on a local Ray.") from None


def shutdown_ray(grace_s: float = 0.3) -> None:
    """``ray.shutdown()`` for the end of a command, with a local Ray's processes stopped sooner.

    Ray stops the processes ``ray.init`` started one after another, giving each up to a second
    to exit on SIGTERM; its autoscaler monitor takes ~0.8 s to (and once the GCS is gone never
    does), so every run ended with 1.2-1.5 s of waiting on 2 cores. Here the driver disconnects
    first (``ray.shutdown`` with that process list set aside), then the raylet is stopped (it
    stops its workers, and exits within ~0.1 s while the GCS is up), then the rest get SIGTERM
    together and whatever is still alive after ``grace_s`` gets the SIGKILL Ray would send after
    its second; a worker still there (its raylet needed SIGKILL) gets one too. A joined
    cluster is only disconnected, as ``ray.shutdown`` does.
    """
    import ray
    from ray._private import ray_constants

    if not ray.is_initialized():
        return
    # private, and checked: Ray's handle on the processes this driver started
    node = getattr(ray._private.worker, "_global_node", None)
    started = getattr(node, "all_processes", None)
    if not isinstance(started, dict) or not started:
        ray.shutdown()
        return
    import psutil

    raylet = [i.process for i in started.get(ray_constants.PROCESS_TYPE_RAYLET, [])]
    rest = [i.process for k, infos in started.items() if k != ray_constants.PROCESS_TYPE_RAYLET for i in infos]
    workers = []  # the raylet's worker processes, in case it cannot stop them itself
    for p in raylet:
        try:
            workers += psutil.Process(p.pid).children(recursive=True)
        except psutil.Error:
            pass
    node.all_processes = {}
    try:
        ray.shutdown()
    finally:
        # ~0.1 s on a quiet machine; a loaded one may need seconds to stop the workers
        _stop_processes(raylet, grace_s=10.0)
        _stop_processes(rest, grace_s=grace_s)
        for w in workers:  # left only when the raylet was killed: they would linger
            try:
                w.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(workers, timeout=5)


def _stop_processes(procs: list, grace_s: float) -> None:
    """SIGTERM to every process at once, SIGKILL to those alive after ``grace_s``; all reaped."""
    import subprocess
    import time

    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            try:  # bounded, as Ray's own: SIGKILL cannot reap a process stuck in the kernel
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def _python_sigterm_handler():
    """The Python SIGTERM handler this process set, if any (and if this is the main thread)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    h = signal.getsignal(signal.SIGTERM)
    return h if callable(h) else None
