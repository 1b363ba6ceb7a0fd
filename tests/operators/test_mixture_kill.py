"""A live `gristmill run` SIGKILLed while its mixture step writes shards resumes to the bytes of a
clean run (the replay of a crash's leftovers is in test_mixture.py; this one kills a real run)."""
from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.executor import RunOptions, run_recipe
from pipeline.recipe import load_recipe
from tests._files import tree_digest as digest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def corpus(path: pathlib.Path, n: int = 1500) -> pathlib.Path:
    rng = np.random.default_rng(3)
    words = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor".split()
    langs = ["en", "fr", "de", "sw"]
    pq.write_table(pa.table({
        "id": [f"doc-{i:05d}" for i in range(n)],
        "text": [f"{i} " + " ".join(rng.choice(words, int(rng.integers(20, 120)))) for i in range(n)],
        "language": [langs[i % 4] for i in range(n)],
    }), path)
    return path


def recipe(tmp: pathlib.Path, data: pathlib.Path, out: pathlib.Path) -> str:
    # small shards: the step writes many of them, so the kill lands while it writes
    path = tmp / f"{out.name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: mix-kill
        input: {{format: parquet, paths: ["{data}"], batch_rows: 256}}
        output: {out}
        seed: 11
        steps:
          - {{id: tok, op: tokenize}}
          - {{id: mix, op: mixture, params: {{group_by: language, temperature: 2.0, max_epochs: 3,
              redistribute: true, shard_tokens: 1500, layout: per_group}}}}
        """))
    return str(path)


def test_sigkilled_run_resumes_to_the_bytes_of_a_clean_run(ray_session, tmp_path):
    data = corpus(tmp_path / "in.parquet")
    out = tmp_path / "killed"
    shards = out / "mix.shards"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", recipe(tmp_path, data, out), "--quiet"],
                            cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if shards.is_dir() and any(p.is_file() for p in shards.rglob("*")):
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended before it was killed: {proc.stderr.read().decode()[-2000:]}"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and every Ray process it started
    proc.wait()
    assert shards.is_dir(), proc.stderr.read().decode()[-2000:]
    # killed mid-step: shards begun, the step neither marked complete nor given its manifest
    assert not (shards / "manifest.json").exists() and not (out / "mix" / "_COMPLETE.json").exists()

    resumed = run_recipe(load_recipe(recipe(tmp_path, data, out)),
                         RunOptions(output=str(out), max_workers=2, quiet=True))
    assert next(s for s in resumed["steps"] if s["id"] == "mix")["status"] == "ran"
    clean_out = tmp_path / "clean"
    clean = run_recipe(load_recipe(recipe(tmp_path, data, clean_out)),
                       RunOptions(output=str(clean_out), max_workers=2, quiet=True))
    assert resumed["invariant_ok"] and clean["invariant_ok"]
    assert digest(shards) == digest(clean_out / "mix.shards")
    assert any(k.endswith(".bin") for k in digest(shards))
    mix = [next(s for s in st["steps"] if s["id"] == "mix") for st in (resumed, clean)]
    assert [(m["docs_in"], m["docs_out"], m["tokens_out"]) for m in mix][0] == \
        [(m["docs_in"], m["docs_out"], m["tokens_out"]) for m in mix][1]
