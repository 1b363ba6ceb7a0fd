"""Lost capacity mid-run on a real two-node Ray cluster on this machine (ray.cluster_utils.Cluster,
in a process of its own, apart from the test session's Ray): a Ray worker process SIGKILLed
mid-step, then a whole worker node removed mid-run. Each run ends with outputs byte-identical to a
clean run and the same per-step counts (nothing counted twice), or with a clear error after which
a rerun resumes and ends identical. Runs go through the CLI (`gristmill run --address`)."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline.samples import build_sample

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

CLUSTER = textwrap.dedent("""\
    import json, sys
    import pipeline.runtime  # noqa: F401  (Ray environment defaults)
    from ray.cluster_utils import Cluster
    args = dict(num_cpus=1, include_dashboard=False)
    cluster = Cluster(initialize_head=True, head_node_args=args)
    worker = cluster.add_node(**args)
    print(json.dumps({"address": cluster.address}), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "kill_worker_node":
            cluster.remove_node(worker, allow_graceful=False)  # SIGKILL of the node's raylet and workers
            print("killed", flush=True)
        elif cmd == "stop":
            break
    cluster.shutdown()
    print("stopped", flush=True)
    """)

# A pass-through step that takes a moment per batch and says which process runs it, so that the
# test can kill that process (or its node) while the step is in flight.
FAULT_OPS = textwrap.dedent("""\
    import os, time
    from operators.base import Operator, Params, register

    class SlowPassParams(Params):
        pid_dir: str

    @register
    class SlowPass(Operator):
        \"\"\"Pass-through that takes 0.2 s per batch and records its worker's pid (fault tests).\"\"\"
        name = "slow_pass"
        kind = "map"
        Params = SlowPassParams

        def process(self, batch):
            d = self.params.pid_dir
            os.makedirs(d, exist_ok=True)
            open(os.path.join(d, str(os.getpid())), "w").close()
            time.sleep(0.2)
            return batch
    """)


def _env(extra=None) -> dict:
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: both nodes and the driver use 127.0.0.1, never the
    # machine's routable address (a failure test talks to loopback only)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_health_check_period_ms": "1000",
           "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3",
           "RAY_health_check_initial_delay_ms": "1000"}
    env.update(extra or {})
    return env


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    work = tmp_path_factory.mktemp("cluster")
    proc = subprocess.Popen([sys.executable, "-c", CLUSTER], cwd=ROOT, env=_env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=open(work / "cluster.log", "w"), text=True,
                            start_new_session=True)
    line = proc.stdout.readline()
    if not line:
        proc.wait(30)
        pytest.fail("cluster did not start: " + (work / "cluster.log").read_text()[-3000:])
    address = json.loads(line)["address"]

    def command(cmd: str) -> str:
        proc.stdin.write(cmd + "\n")
        proc.stdin.flush()
        return proc.stdout.readline().strip()

    yield {"address": address, "command": command, "work": work}
    try:
        command("stop")
        proc.wait(60)
    except Exception:  # noqa: BLE001  (whatever happened, do not leave the cluster behind)
        pass
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def recipe(cluster):
    work = cluster["work"]
    build_sample("quickstart-sample", str(work / "corpus"), n_docs=600, files=3)
    (work / "faultops.py").write_text(FAULT_OPS)
    p = work / "faults.yaml"
    p.write_text(textwrap.dedent(f"""\
        name: faults
        input: {{format: jsonl, paths: ["{work}/corpus/*.jsonl.gz"], batch_rows: 40}}
        output: {work}/out
        plugins: [faultops.py]
        steps:
          - {{id: length, op: length_filter, params: {{min_chars: 40}}}}
          - {{id: slow, op: slow_pass, params: {{pid_dir: "{work}/pids"}}}}
          - {{id: dedup, op: exact_dedup}}
          - {{id: pick, op: sample, params: {{fraction: 0.7, seed: 3}}}}
        """))
    return p


def _run(cluster, recipe: Path, out: Path, pids: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(recipe), "--address",
                             cluster["address"], "--output", str(out), "--quiet",
                             "--set", f"steps.slow.params.pid_dir={pids}"], cwd=ROOT,
                            env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _finish(proc: subprocess.Popen, timeout=900) -> tuple[int, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"run hung after the fault:\n{err[-3000:]}")
    return proc.returncode, out + err


def _digest(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for step in ("dedup", "pick") for p in sorted((out / step).glob("*.parquet"))}


def _counts(out: Path) -> dict:
    stats = json.loads((out / "stats.json").read_text())
    assert stats["invariant_ok"], stats["problems"]
    return {s["id"]: (s["docs_in"], s["docs_out"], s.get("docs_dropped"), s.get("dropped")) for s in stats["steps"]}


@pytest.fixture(scope="module")
def clean(cluster, recipe):
    out = cluster["work"] / "clean"
    rc, log = _finish(_run(cluster, recipe, out, cluster["work"] / "pids-clean"))
    assert rc == 0, log[-3000:]
    return _digest(out), _counts(out)


def _wait_for_pids(pids: Path, proc, timeout=180) -> list[int]:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        found = [int(p.name) for p in pids.glob("*")] if pids.is_dir() else []
        if found:
            return found
        time.sleep(0.05)
    rc, log = _finish(proc, 10)
    pytest.fail(f"the slow step never started (rc {rc}):\n{log[-3000:]}")


def _check_end(cluster, recipe, out: Path, pids: Path, proc, clean, what: str) -> None:
    rc, log = _finish(proc)
    if rc != 0:  # allowed: a clear error, then a rerun resumes
        assert "gristmill: run failed: " in log and "Traceback" not in log, log[-3000:]  # the gist, not a trace
        rc, log = _finish(_run(cluster, recipe, out, pids))  # same recipe: resumes what was complete
        assert rc == 0, f"rerun after {what} failed:\n{log[-3000:]}"
    digest, counts = clean
    assert _digest(out) == digest, what
    assert _counts(out) == counts, what  # nothing counted twice, nothing lost


def test_worker_process_killed_mid_step(cluster, recipe, clean):
    out, pids = cluster["work"] / "out-kill", cluster["work"] / "pids-kill"
    proc = _run(cluster, recipe, out, pids)
    victim = _wait_for_pids(pids, proc)[0]
    os.kill(victim, signal.SIGKILL)
    _check_end(cluster, recipe, out, pids, proc, clean, "worker process killed")


def test_worker_node_lost_mid_run(cluster, recipe, clean):
    out, pids = cluster["work"] / "out-node", cluster["work"] / "pids-node"
    proc = _run(cluster, recipe, out, pids)
    _wait_for_pids(pids, proc)
    assert cluster["command"]("kill_worker_node") == "killed"
    _check_end(cluster, recipe, out, pids, proc, clean, "worker node lost")
