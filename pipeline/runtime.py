"""Starting Ray once per process, quietly, with the settings gristmill relies on."""
from __future__ import annotations

import logging
import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local runs: no token files in ~/.ray
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# Ray keeps ~one idle worker per CPU; shuffle reducers and actors then restart Python worker
# processes at every stage (5-10 s each on 2 cores). Keeping a few more idle workers avoids it.
os.environ.setdefault("RAY_num_workers_soft_limit", str(max(8, 2 * (os.cpu_count() or 2))))


def init_ray(address: str | None = None, num_cpus: int | None = None, quiet: bool = False,
             progress: bool = True):
    """Connect to ``address`` (a cluster: ``auto`` or ``ray://...``) or start a local Ray.

    Idempotent: a second call in the same process reuses the running Ray.
    """
    import ray
    import ray.data

    if not ray.is_initialized():
        kwargs = dict(include_dashboard=False, logging_level=logging.WARNING,
                      log_to_driver=not quiet, ignore_reinit_error=True)
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus, **kwargs)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress and not quiet
    ctx.print_on_execution_start = False
    ctx.verbose_stats_logs = False
    return ray
