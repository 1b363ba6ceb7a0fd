"""Executor: DAG branches and joins, accounting, determinism, resume after a crash."""
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

import pyarrow.parquet as pq
import pytest

from pipeline.executor import RunOptions, run_recipe
from pipeline.recipe import load_recipe
from pipeline.samples import build_sample
from tests._files import distributed_if

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    build_sample("quickstart-sample", str(d), n_docs=600, files=3)
    return d


def recipe(tmp_path, corpus, steps: str, name="t", batch_rows=1024) -> str:
    p = tmp_path / f"{name}.yaml"
    p.write_text(textwrap.dedent(f"""\
        name: {name}
        input: {{format: jsonl, paths: ["{corpus}/*.jsonl.gz"], batch_rows: {batch_rows}}}
        output: {tmp_path}/out-{name}
        steps:
        """) + textwrap.indent(textwrap.dedent(steps), "  "))
    return str(p)


def run(path, output=None, workers=None, overrides=(), resume=True):
    loaded = load_recipe(path, overrides)
    return run_recipe(loaded, RunOptions(output=output or loaded.recipe.output, max_workers=workers,
                                         resume=resume, quiet=True))


def digest(out_dir: Path, step: str) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out_dir / step).glob("*.parquet"))}


def rows(out_dir: Path, step: str):
    return pq.read_table(out_dir / step)


LINEAR = """\
- {id: length, op: length_filter, params: {min_chars: 40}}
- {id: dedup, op: exact_dedup}
- {id: pick, op: sample, params: {fraction: 0.7, seed: 3}}
"""


def test_linear_run_accounting_and_rejected_rows(ray_session, tmp_path, corpus):
    stats = run(recipe(tmp_path, corpus, LINEAR))
    out = tmp_path / "out-t"
    assert stats["invariant_ok"] and json.loads((out / "stats.json").read_text())["invariant_ok"]
    by = {s["id"]: s for s in stats["steps"]}
    assert by["read"]["docs_in"] == 600
    for s in stats["steps"]:  # docs in = docs out + dropped, by reason
        assert s["docs_in"] == s["docs_out"] + sum(s["dropped"].values())
        assert s["bytes_in"] >= s["bytes_out"]
    assert by["length"]["docs_in"] == by["read"]["docs_out"]
    assert by["dedup"]["docs_in"] == by["length"]["docs_out"]
    assert by["length"]["dropped"].get("length_filter:too_few_chars", 0) > 0
    assert by["dedup"]["dropped"].get("exact_dedup:duplicate", 0) > 0
    # what was written matches the ledger, and every dropped row is on disk with its reason
    assert rows(out, "pick").num_rows == by["pick"]["docs_out"]
    assert rows(out, "dedup").num_rows == by["dedup"]["docs_out"]
    for step in ("length", "dedup", "pick"):
        rej = pq.read_table(out / "rejected" / step)
        assert rej.num_rows == by[step]["docs_dropped"]
        assert rej.column("drop_reason").null_count == 0
    dup = pq.read_table(out / "rejected" / "dedup").to_pylist()
    kept = {r["id"]: r["text"] for r in rows(out, "dedup").to_pylist()}
    for r in dup[:20]:  # each removed duplicate points at a kept document with the same text
        assert " ".join(kept[r["dup_of"]].lower().split()) == " ".join(r["text"].lower().split())
    # output ids are unique and dropped ids never reach the output
    out_ids = rows(out, "pick").column("id").to_pylist()
    assert len(out_ids) == len(set(out_ids))
    assert not set(out_ids) & {r["id"] for r in dup}


def test_branches_and_union(ray_session, tmp_path, corpus):
    steps = """\
    - {id: clean, op: length_filter, params: {min_chars: 40}}
    - {id: short, op: length_filter, input: clean, params: {max_chars: 400}}
    - {id: long, op: length_filter, input: clean, params: {min_chars: 401}}
    - {id: both, op: sample, input: [short, long], params: {fraction: 1.0}}
    """
    stats = run(recipe(tmp_path, corpus, steps, name="dag"))
    out = tmp_path / "out-dag"
    by = {s["id"]: s for s in stats["steps"]}
    # clean fans out to two branches, so it is written once and read by both
    assert (out / "clean" / "_COMPLETE.json").exists()
    assert by["short"]["docs_in"] == by["long"]["docs_in"] == by["clean"]["docs_out"]
    # the two branches partition `clean`; the union receives both
    assert by["short"]["docs_out"] + by["long"]["docs_out"] == by["clean"]["docs_out"]
    assert by["both"]["docs_in"] == by["short"]["docs_out"] + by["long"]["docs_out"]
    both = set(rows(out, "both").column("id").to_pylist())
    assert both == set(rows(out, "clean").column("id").to_pylist())
    assert stats["invariant_ok"]


def test_same_output_bytes_with_one_or_two_workers(ray_session, tmp_path, corpus):
    a = recipe(tmp_path, corpus, LINEAR, name="w1", batch_rows=64)
    b = recipe(tmp_path, corpus, LINEAR, name="w2", batch_rows=257)
    run(a, workers=1)
    run(b, workers=2)
    for step in ("dedup", "pick"):
        da, db = digest(tmp_path / "out-w1", step), digest(tmp_path / "out-w2", step)
        assert da and da == db
    ra = pq.read_table(tmp_path / "out-w1" / "rejected").sort_by("id")
    rb = pq.read_table(tmp_path / "out-w2" / "rejected").sort_by("id")
    assert ra.column("id").equals(rb.column("id"))


def test_local_workers_and_ray_write_the_same_bytes(ray_session, tmp_path, corpus):
    """The local pool (worker processes, no Ray: pipeline.pools) and Ray's actors run the same
    SegmentWorker code: the same files, rejected rows and counts, with 1 or 2 workers."""
    outs = {}
    for executor, workers in (("local", 1), ("local", 2), ("ray", 2)):
        name = f"{executor}{workers}"
        loaded = load_recipe(recipe(tmp_path, corpus, LINEAR, name=name, batch_rows=97))
        stats = run_recipe(loaded, RunOptions(output=str(tmp_path / f"out-{name}"), max_workers=workers, quiet=True,
                                              executor=executor))
        assert stats["invariant_ok"]
        outs[name] = ({s["id"]: (s["docs_in"], s["docs_out"], s["dropped"]) for s in stats["steps"]},
                      {step: digest(tmp_path / f"out-{name}", step) for step in ("dedup", "pick")},
                      pq.read_table(tmp_path / f"out-{name}" / "rejected").sort_by("id"))
        assert not (tmp_path / f"out-{name}" / "_spill").exists()  # the local workers' rows are cleaned up
    assert outs["local1"][0]["dedup"][2]
    assert outs["local1"][0] == outs["local2"][0] == outs["ray2"][0]
    assert outs["local1"][1] == outs["local2"][1] == outs["ray2"][1]
    assert outs["local1"][2].equals(outs["local2"][2]) and outs["local1"][2].equals(outs["ray2"][2])


AUTO = """
import sys
import pipeline
stats = pipeline.run(sys.argv[1], output=sys.argv[2], quiet=True, resume=False)
print("ray imported:", "ray" in sys.modules, "ok:", stats["invariant_ok"])
"""


def test_a_small_local_run_starts_no_ray_and_a_big_global_step_switches_to_it(tmp_path, corpus):
    """executor auto: a small local run never imports Ray; when a global step's input turns out
    larger than the in-memory limit, the run goes on on Ray (its distributed plan) from there,
    with the same bytes."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("GRISTMILL_EXECUTOR", None)
    p = recipe(tmp_path, corpus, LINEAR, name="auto")
    for name, limit in (("small", "256"), ("switch", "0.01")):
        proc = subprocess.run([sys.executable, "-c", AUTO, p, str(tmp_path / name)], cwd=ROOT, capture_output=True,
                              text=True, timeout=300, env={**env, "GRISTMILL_IN_MEMORY_MB": limit})
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"ray imported: {name == 'switch'} ok: True" in proc.stdout, proc.stdout
    for step in ("dedup", "pick"):
        assert digest(tmp_path / "small", step) == digest(tmp_path / "switch", step)


def test_global_steps_in_memory_or_distributed_write_the_same_bytes(ray_session, tmp_path, corpus):
    """A small input runs a global step in one warm worker (Operator.run_table); a large one
    runs its distributed Ray Data plan. Both write the same files, rejected rows and counts.
    `near` follows a streamed step, `again` follows a written one."""
    steps = LINEAR + "- {id: near, op: minhash_dedup, params: {threshold: 0.7}}\n- {id: again, op: exact_dedup}\n"
    outs = {}
    for name in ("mem", "dist"):
        with distributed_if(name == "dist"):
            stats = run(recipe(tmp_path, corpus, steps, name=name))
        assert stats["invariant_ok"]
        outs[name] = ({s["id"]: (s["docs_in"], s["docs_out"], s["dropped"]) for s in stats["steps"]},
                      {step: digest(tmp_path / f"out-{name}", step) for step in ("dedup", "near", "again")},
                      pq.read_table(tmp_path / f"out-{name}" / "rejected").sort_by("id"))
    assert outs["mem"][0]["dedup"][2] and outs["mem"][0]["near"][2]  # both steps dropped rows
    assert outs["mem"][0] == outs["dist"][0]
    assert outs["mem"][1] == outs["dist"][1]
    assert outs["mem"][2].equals(outs["dist"][2])


def test_rerun_skips_complete_steps_and_recomputes_changed_ones(ray_session, tmp_path, corpus):
    p = recipe(tmp_path, corpus, LINEAR, name="rr")
    first = run(p)
    before = digest(tmp_path / "out-rr", "pick")
    again = run(p)
    assert {s["id"]: s["status"] for s in again["steps"]} == {s["id"]: "skipped" for s in first["steps"]}
    changed = run(p, overrides=["steps.pick.params.fraction=0.5"])
    status = {s["id"]: s["status"] for s in changed["steps"]}
    assert status["dedup"] == "skipped" and status["pick"] == "ran"
    assert digest(tmp_path / "out-rr", "pick") != before
    assert changed["invariant_ok"]


def test_crashed_run_resumes_to_identical_output(ray_session, tmp_path, corpus):
    p = recipe(tmp_path, corpus, LINEAR, name="crash")
    out = tmp_path / "out-crash"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", p, "--quiet"], cwd=ROOT, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not (out / "dedup" / "_COMPLETE.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # crash right after the barrier was written
    proc.wait()
    assert (out / "dedup" / "_COMPLETE.json").exists(), proc.stderr.read().decode()[-2000:]
    resumed = run(p)
    status = {s["id"]: s["status"] for s in resumed["steps"]}
    assert status["dedup"] == "skipped" and status["length"] == "skipped"
    clean = run(p, output=str(tmp_path / "clean"), resume=False)
    assert clean["invariant_ok"] and resumed["invariant_ok"]
    for step in ("dedup", "pick"):
        assert digest(out, step) == digest(tmp_path / "clean", step)
    assert [s["docs_out"] for s in resumed["steps"]] == [s["docs_out"] for s in clean["steps"]]


SLOW_OPS = """
import time

from operators.base import Operator, Params, register


class SlowParams(Params):
    seconds: float = 0.05


@register
class SlowPass(Operator):
    \"\"\"Keeps every row, slowly: a run that is still going when the test signals it.\"\"\"

    name = "slow_pass"
    kind = "map"
    Params = SlowParams

    def process(self, batch):
        time.sleep(self.params.seconds)
        return batch
"""


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_sigterm_stops_the_run_cleanly_and_a_rerun_resumes(ray_session, tmp_path, corpus, executor):
    """`kill` (SIGTERM) of `gristmill run`: exit 143 with one line saying so (no traceback),
    none of the processes it started left behind (local workers and their fork server, or Ray's
    processes), and the same command resumes to the bytes of a clean run."""
    import psutil

    (tmp_path / "slow_ops.py").write_text(SLOW_OPS)
    p = recipe(tmp_path, corpus, LINEAR.replace("- {id: dedup", "- {id: slow, op: slow_pass}\n- {id: dedup"),
               name="term", batch_rows=20)
    Path(p).write_text("plugins: [slow_ops.py]\n" + Path(p).read_text())
    out = tmp_path / "out-term"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRISTMILL_EXECUTOR": executor}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", p], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not (out / "_ledger" / "slow").is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    started = psutil.Process(proc.pid).children(recursive=True)
    assert started, "the run started no worker processes"
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    assert not (out / "dedup" / "_COMPLETE.json").exists()  # it was stopped mid-run
    _, alive = psutil.wait_procs(started, timeout=30)
    assert not [a for a in alive if a.status() != psutil.STATUS_ZOMBIE], alive
    resumed = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", p, "--quiet"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    run(p, output=str(tmp_path / "clean-term"), resume=False)
    for step in ("dedup", "pick"):
        assert digest(out, step) == digest(tmp_path / "clean-term", step)


def test_the_readers_busy_time_is_its_reading(tmp_path, corpus, monkeypatch):
    """On the pool path the reader is a step whose work is reading: each of its ledger records
    holds the time its batch took to read (here a reader slowed by 0.05 s a batch), not only
    the routing of what it quarantined."""
    import pipeline.executor as ex
    from pipeline.dag import SOURCE
    from pipeline.io import input_units
    from pipeline.stats import collect
    from pipeline.storage import Store
    from pipeline.unique_ids import NONE

    slow = 0.05
    real = ex.read_unit

    def slow_read(*a, **k):
        for batch in real(*a, **k):
            time.sleep(slow)
            yield batch

    monkeypatch.setattr(ex, "read_unit", slow_read)
    loaded = load_recipe(recipe(tmp_path, corpus, """\
        - {id: length, op: length_filter, params: {min_chars: 40}}
        """, name="readbusy", batch_rows=50))
    spec = loaded.recipe.input
    store = Store(str(tmp_path / "out"))
    w = ex.SegmentWorker()
    w.configure([(SOURCE, None, None, True, 1 << 62),
                 ("length", loaded.operators["length"], loaded.params["length"], True, 1024)],
                store.uri, {"kind": "input", "spec": spec, "duplicates": NONE})
    files = sorted(str(f) for f in corpus.glob("*.jsonl.gz"))
    for unit in input_units(spec, files):
        w.run_unit((unit, 0, 1))
    read, length = collect(store, SOURCE), collect(store, "length")
    assert read["docs_in"] == 600 and read["batches"] == 12
    assert read["busy_s"] >= slow * read["batches"]
    assert length["docs_in"] == 600


SHUTDOWN = """
import os
import psutil
from pipeline.runtime import init_ray, shutdown_ray
ray = init_ray(quiet=True)

@ray.remote
class Pid:
    def pid(self):
        return os.getpid()

workers = ray.get([a.pid.remote() for a in [Pid.remote() for _ in range(2)]])
started = psutil.Process().children(recursive=True)
assert set(workers) <= {p.pid for p in started}, (workers, started)
shutdown_ray()
assert not ray.is_initialized()
# a worker the raylet was still starting may notice its raylet gone a moment later
_, alive = psutil.wait_procs(started, timeout=10)
left = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
print("left", [(p.pid, p.name()) for p in left])
"""


def test_shutdown_ray_leaves_none_of_the_local_processes():
    """pipeline.runtime.shutdown_ray (the CLI's exit) stops every process a local ray.init
    started, the actors' workers too: none is left behind."""
    proc = subprocess.run([sys.executable, "-c", SHUTDOWN], cwd=ROOT, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "left []" in proc.stdout, proc.stdout + proc.stderr[-2000:]


def test_python_entry_point_one_file_split_over_workers_reuses_ray(ray_session, tmp_path, corpus):
    """pipeline.run takes a dict; one input file still feeds two workers (each takes every other
    batch) with the same bytes as one worker; a second run in the process reuses Ray; a rerun
    with every output complete reads nothing."""
    import pipeline

    one_file = sorted(corpus.glob("*.jsonl.gz"))[0]
    spec = {"name": "nb", "input": {"format": "jsonl", "paths": [str(one_file)], "batch_rows": 50},
            "output": str(tmp_path / "nb-w2"),
            "steps": [{"id": "length", "op": "length_filter", "params": {"min_chars": 40}},
                      {"id": "pick", "op": "sample", "params": {"fraction": 0.8, "seed": 1}}]}
    node = ray_session.get_runtime_context().get_node_id()
    two = pipeline.run(spec, workers=2, quiet=True, executor="ray")
    one = pipeline.run(spec, output=str(tmp_path / "nb-w1"), workers=1, quiet=True, executor="ray")
    assert ray_session.get_runtime_context().get_node_id() == node  # the same Ray, not a new one
    assert two["executor"] == one["executor"] == "ray"
    assert digest(tmp_path / "nb-w2", "pick") == digest(tmp_path / "nb-w1", "pick")
    assert two.step("read")["docs_in"] == 200 and two["invariant_ok"]
    assert two.table("pick").num_rows == two.step("pick")["docs_out"] > 0
    rej = two.rejected("length")
    assert rej.num_rows == two.step("length")["docs_dropped"] > 0 and rej.column("drop_reason").null_count == 0
    with pytest.raises(ValueError, match="not written"):
        two.table("length")
    for s in one["steps"]:  # wall and busy time for every step; steps of a segment overlap
        assert 0 <= s["busy_s"] and 0 < s["wall_s"] <= s["segment_wall_s"] + 1e-3
    again = pipeline.run(spec, workers=2, quiet=True)
    assert again["ran"] == [] and {s["status"] for s in again["steps"]} == {"skipped"}
    assert again["executor"] is None  # nothing ran
    local = pipeline.run(spec, output=str(tmp_path / "nb-local"), workers=2, quiet=True)  # auto: no Ray needed
    assert local["executor"] == "local" and digest(tmp_path / "nb-local", "pick") == digest(tmp_path / "nb-w1", "pick")
    # the CLI says so, reads nothing and starts no Ray; the first line names the log file
    import yaml

    path = tmp_path / "nb.yaml"
    path.write_text(yaml.safe_dump(spec))
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(path)], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith(f"[gristmill] log: {tmp_path / 'nb-w2' / 'gristmill.log'}")
    assert "nothing to run" in proc.stdout and "docs read" not in proc.stdout
    assert "ray" not in (tmp_path / "nb-w2" / "gristmill.log").read_text().lower()  # Ray never started


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_the_terminal_shows_only_our_lines(tmp_path, corpus, executor):
    """`gristmill run` prints only its own lines, on either executor: Ray's, the workers' and
    multiprocessing's messages go to the run's log file, which the first line names."""
    p = recipe(tmp_path, corpus, LINEAR, name="term")
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", p, "--executor", executor], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (proc.stdout + proc.stderr).splitlines()
    assert lines and all(line.startswith("[gristmill]") for line in lines), lines
    assert proc.stderr.startswith(f"[gristmill] log: {tmp_path / 'out-term' / 'gristmill.log'}")
    assert any("done in" in line for line in lines)


def test_the_fork_server_ends_without_interpreter_teardown():
    """The local pool's fork server imports pipeline._fork_server last: at exit it leaves at once
    (os._exit), before the handlers and module teardown of what it preloaded, which would keep
    the driver's stdout open ~0.2 s after the run (a shell pipe or capture_output waits for it)."""
    from pipeline.pools import default_preload

    assert default_preload()[-1] == "pipeline._fork_server"
    code = ("import atexit; atexit.register(print, 'teardown ran', flush=True); import pipeline._fork_server; "
            "print('main done', flush=True)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["main", "done"]


_FAULTS = """
import resource, sys
import numpy as np
if sys.argv[1] == "worker":
    from pipeline.executor import SegmentWorker
    SegmentWorker()
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.ones(512 * 1024)  # 4 MB, touched
    del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(faults(), faults())
"""


def test_a_worker_reuses_freed_memory_instead_of_faulting_it_in_again():
    """A worker process tunes glibc malloc (pipeline.runtime.keep_freed_memory): a freed 4 MB
    block is reused by the next one, with no new page faults; by default glibc unmaps it and the
    next block faults in again (why a worker's first batches were slower than its later ones)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc malloc tuning: Linux only")

    def second_block_faults(kind: str) -> int:
        proc = subprocess.run([sys.executable, "-c", _FAULTS, kind], cwd=ROOT, capture_output=True, text=True,
                              timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.returncode == 0, proc.stderr
        return int(proc.stdout.split()[1])

    default = second_block_faults("plain")
    if default < 200:
        pytest.skip(f"this C library does not unmap freed blocks ({default} faults): nothing to tune")
    assert second_block_faults("worker") < 50


def test_checking_a_recipe_does_not_import_pandas():
    """`gristmill run` imports every operator module to check the recipe; none may build a pyarrow
    table at import, which makes pyarrow import pandas (~0.25 s on the driver's critical path)."""
    code = ("import sys; from operators.base import load_operators; from pipeline.recipe import load_recipe; "
            "load_operators(); print('pandas' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False"]
