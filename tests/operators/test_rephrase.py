"""rephrase (WRAP): the text rules on constructed outputs, real generation with the bundled
SmolLM2-135M-Instruct (transformers backend), and the openai backend against a real
`transformers serve` process on 127.0.0.1 serving the same model, killed mid-run and resumed."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from operators import _rephrase_text as rt
from operators._rephrase_checkpoint import Checkpoint, config_hash
from operators.base import DROP_REASON
from operators.rephrase import Rephrase, RephraseParams

DOCS = [
    ("news-1", "The city council of Springfield voted on Tuesday to build a new public library near the "
               "river. The library will cost twelve million dollars and should open in 2027. Council "
               "members said the old library building was too small for the growing number of readers."),
    ("news-2", "Heavy rain flooded several roads in the northern valley this weekend. Farmers reported "
               "damage to corn and wheat fields. The weather service expects more storms on Monday and "
               "advised drivers to avoid low bridges near the river."),
    ("news-3", "A local bakery won the national bread competition with a sourdough loaf made from "
               "rye flour. The baker, who opened the shop ten years ago, said the secret is a slow "
               "fermentation of two days."),
]


def table(docs=DOCS) -> pa.Table:
    return pa.table({"id": [d[0] for d in docs], "text": [d[1] for d in docs],
                     "url": [f"https://example.com/{d[0]}" for d in docs]})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def checkpoint_lines(root) -> list[dict]:
    out = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.endswith(".jsonl"):
                with open(os.path.join(dirpath, f), encoding="utf-8") as fh:
                    out += [json.loads(line) for line in fh if line.endswith("\n")]
    return out


# -- text rules ------------------------------------------------------------------------------
def test_chunks_respect_limit_on_paragraph_then_sentence_boundaries():
    p1 = "Short first paragraph here."  # 5 rough tokens
    p2 = "The second paragraph is longer. It has two sentences in it."  # 13
    long_sentence = " ".join(f"word{i}" for i in range(50))
    chunks = rt.chunk_text(f"{p1}\n\n{p2}\n\n{long_sentence}", 20)
    assert chunks[0] == f"{p1}\n\n{p2}"  # paragraphs packed together while they fit
    assert all(rt.rough_token_count(c) <= 20 for c in chunks)
    assert " ".join(chunks).split() == f"{p1} {p2} {long_sentence}".split()  # nothing lost or reordered
    # a paragraph over the limit splits on sentences, not mid-sentence
    para = "One two three four five. Six seven eight nine ten. Eleven twelve thirteen."
    assert rt.chunk_text(para, 12) == ["One two three four five.", "Six seven eight nine ten. Eleven twelve thirteen."]
    assert rt.chunk_text("   \n\n ", 300) == []


@pytest.mark.parametrize("raw, clean", [
    ("Here is a paraphrase:\nThe council voted.", "The council voted."),
    ("Sure!\nHere's the text rewritten for a child:\n\nThe council voted.", "The council voted."),
    ("Adequate rephrasing:\nThe council voted.", "The council voted."),
    ("In this sentence from Wikipedia, I've provided a simpler version.\nThe council voted.", "The council voted."),
    ("**Rewritten text:**\nThe council voted.", "The council voted."),
    ("The council voted.\nHere is more.", "The council voted.\nHere is more."),  # only leading meta-text
    ("Question: What did the council do?\nAnswer: It voted.", "Question: What did the council do?\nAnswer: It voted."),
    ("Here is a paraphrase:", "Here is a paraphrase:"),  # nothing after it: left for the guards
])
def test_preamble_stripped(raw, clean):
    assert rt.strip_preamble(raw) == clean


SOURCE = DOCS[0][1]
INSTRUCTION = rt.TEMPLATES["medium"].replace("{text}", "")
GOOD = ("On Tuesday, Springfield's city council approved a new public library by the river. It will "
        "cost twelve million dollars and is due to open in 2027, because council members found the "
        "old library too small for its many readers.")


@pytest.mark.parametrize("output, reason", [
    (GOOD, None),
    ("", "empty"),
    (" ... \n", "empty"),
    ("I'm sorry, but I can't help with rewriting this text.", "refusal"),
    ("As an AI language model, I cannot rephrase news.", "refusal"),
    (INSTRUCTION + " The council voted for a library.", "echo"),
    (SOURCE, "echo"),  # the source copied back is no rephrase
    ("The council voted for the library. " * 12, "repetition"),
    ("The council voted.", "too_short"),
    ("Dear Sarah, I hope this message finds you well. I wanted to share some thoughts about our "
     "upcoming holiday plans and the tickets we bought for the concert next month with friends.", "off_topic"),
])
def test_guards_on_constructed_outputs(output, reason):
    assert rt.check_output(rt.strip_preamble(output), SOURCE, INSTRUCTION, min_length_ratio=0.25,
                           max_repetition=0.3, min_topic_overlap=0.15) == reason


def test_params_are_validated_before_any_work():
    with pytest.raises(ValidationError, match=r"\{text\}"):
        RephraseParams(templates={"easy": "Simplify this."})
    with pytest.raises(ValidationError, match="no template"):
        RephraseParams(styles=["pirate"])
    RephraseParams(styles=["pirate"], templates={"pirate": "Rewrite as a pirate:\n{text}"})
    with pytest.raises(ValidationError, match="base_url"):
        RephraseParams(backend="openai", model="m")
    with pytest.raises(ValidationError, match="NAME of an environment variable"):
        RephraseParams(backend="openai", model="m", base_url="http://x/v1", api_key_env="sk-abc-123")
    with pytest.raises(ValidationError, match="only \\{text\\}"):
        RephraseParams(templates={"easy": "Simplify {text} for {audience}"})


def test_checkpoint_key_covers_model_template_and_sampling(tmp_path):
    base = {"model": "m", "templates": {"easy": "a {text}"}, "temperature": 0.0, "max_new_tokens": 10}
    assert config_hash(base) != config_hash({**base, "temperature": 0.7})
    assert config_hash(base) != config_hash({**base, "templates": {"easy": "b {text}"}})
    assert config_hash(base) != config_hash({**base, "model": "other"})
    ck = Checkpoint(str(tmp_path), base)
    ck.put("d1\teasy\t0", "text one", 3)
    ck.close()
    with open(ck.path, "ab") as f:  # a kill in the middle of a write leaves a torn last line
        f.write(b'{"key": "d2\\teasy\\t0", "te')
    again = Checkpoint(str(tmp_path), base)
    assert len(again) == 1 and again.get("d1\teasy\t0")["text"] == "text one"
    assert len(Checkpoint(str(tmp_path), {**base, "temperature": 0.7})) == 0


# -- transformers backend: the bundled model, real generation --------------------------------
@pytest.fixture(scope="module")
def smol_path():
    from operators._rephrase_backends import bundled_model

    return bundled_model()  # converted from the GGUF once (~45 s), then cached


@pytest.fixture(scope="module")
def local_run(smol_path, tmp_path_factory):
    ckdir = tmp_path_factory.mktemp("ck")
    params = dict(styles=["easy", "qa"], max_new_tokens=24, batch_size=4, checkpoint_dir=str(ckdir))
    op = Rephrase(params)
    docs = DOCS[:2] + [("blank", "   ")]
    out = op(table(docs))
    return op, params, docs, out, op.counters(out), ckdir


def test_transformers_generates_one_row_per_document_and_style(local_run):
    op, _, docs, out, counters, _ = local_run
    assert out.num_rows == len(docs) * 2
    rows = out.to_pylist()
    assert [(r["source_id"], r["synthetic_style"]) for r in rows] == [(d[0], s) for d in docs for s in ("easy", "qa")]
    assert [r["id"] for r in rows] == [f"{d[0]}/{s}" for d in docs for s in ("easy", "qa")]
    assert {r["synthetic_model"] for r in rows} == {"SmolLM2-135M-Instruct-Q4_1"}
    assert all(r["url"] == f"https://example.com/{r['source_id']}" for r in rows)  # source columns carried
    blank = [r for r in rows if r["source_id"] == "blank"]
    assert all(r[DROP_REASON] == "rephrase:empty_source" for r in blank)
    real = [r for r in rows if r["source_id"] != "blank"]
    # real text from the real model: every generation has words, kept or quarantined with a reason
    assert all(len(r["text"].split()) >= 5 and r["synthetic_tokens"] > 0 for r in real), real
    assert all(r[DROP_REASON] is None or r[DROP_REASON].startswith("rephrase:") for r in real)
    assert counters["generations"] == 4 and counters["cached"] == 0
    assert counters["tokens_generated"] == sum(r["synthetic_tokens"] for r in real)
    assert counters["generate_s"] > 0


def test_transformers_rerun_generates_nothing(local_run):
    op, params, docs, out, _, ckdir = local_run
    assert len(checkpoint_lines(ckdir)) == 4
    again = Rephrase(params)  # a new process's operator: reads the checkpoint from disk
    again.ensure_setup()
    out2 = again.process(table(docs))
    c = again.counters(out2)
    assert c["generations"] == 0 and c["cached"] == 4 and c["tokens_generated"] == 0
    assert out2.column("text").equals(out.column("text"))
    assert out2.column(DROP_REASON).equals(out.column(DROP_REASON))
    assert len(checkpoint_lines(ckdir)) == 4


def test_no_server_every_row_quarantined_after_retries(tmp_path):
    """Nothing listens on the port: each request is retried max_retries times, then its row is
    quarantined with the error; a batch of only id and text still gets every output column."""
    params = {"backend": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1", "model": "m",
              "styles": ["easy", "qa"], "max_retries": 2, "backoff_s": 0.01, "checkpoint_dir": str(tmp_path)}
    op = Rephrase(params)
    out = op(pa.table({"id": ["a", "b"], "text": ["Some text about the river.", "Other text on bread."]}))
    assert out.column("id").to_pylist() == ["a/easy", "a/qa", "b/easy", "b/qa"]
    assert all(r.startswith("rephrase:request_failed chunk 0: ConnectError") for r in out.column(DROP_REASON).to_pylist())
    c = op.counters(out)
    assert (c["failed"], c["requests"], c["retries"], c["generations"]) == (4, 12, 8, 0)
    assert checkpoint_lines(tmp_path) == []  # failures are not checkpointed: a rerun tries again


# -- openai backend: a real transformers serve ------------------------------------------------
class Server:
    """`transformers serve` on 127.0.0.1, in its own process group so it can be killed whole."""

    def __init__(self, model_path: str, log_path):
        self.model, self.port, self.log_path, self.proc = model_path, free_port(), log_path, None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 180) -> "Server":
        exe = os.path.join(os.path.dirname(sys.executable), "transformers")
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([exe, "serve", self.model, "--host", "127.0.0.1", "--port", str(self.port),
                                      "--device", "cpu", "--log-level", "warning"],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                                          # one torch thread: on 2 shared cores a second one makes
                                          # generation ~3x slower (threads wait for each other)
                                          "OMP_NUM_THREADS": "1"})
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited: {open(self.log_path).read()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("transformers serve did not become healthy")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="module")
def server(smol_path, tmp_path_factory):
    s = Server(smol_path, tmp_path_factory.mktemp("srv") / "server.log").start()
    yield s
    s.kill()


def openai_params(server, ckdir, **kw) -> dict:
    return {"backend": "openai", "base_url": server.base_url, "model": server.model, "styles": ["medium", "qa"],
            "max_new_tokens": 12, "checkpoint_dir": str(ckdir), "timeout_s": 600, **kw}


def test_openai_backend_real_server_and_the_key_stays_secret(server, tmp_path, monkeypatch, capfd):
    secret = "sk-gristmill-test-5ecret-value"
    monkeypatch.setenv("GRISTMILL_TEST_KEY", secret)
    op = Rephrase(openai_params(server, tmp_path / "ck", api_key_env="GRISTMILL_TEST_KEY", concurrency=2))
    out = op(table(DOCS[:1]))
    rows = out.to_pylist()
    assert [r["id"] for r in rows] == ["news-1/medium", "news-1/qa"]
    assert all(len(r["text"].split()) >= 5 for r in rows), rows  # real generations from the server
    assert all(r["synthetic_model"] == server.model for r in rows)
    c = op.counters(out)
    assert c["generations"] == 2 and c["requests"] == 2 and c["tokens_generated"] > 0
    pq.write_table(out, tmp_path / "out.parquet")
    written = [(tmp_path / "out.parquet").read_bytes()]
    for dirpath, _, files in os.walk(tmp_path / "ck"):
        written += [open(os.path.join(dirpath, f), "rb").read() for f in files]
    captured = capfd.readouterr()
    assert all(secret.encode() not in b for b in written)
    assert secret not in captured.out + captured.err
    monkeypatch.delenv("GRISTMILL_TEST_KEY")
    with pytest.raises(RuntimeError, match="GRISTMILL_TEST_KEY"):
        Rephrase(openai_params(server, tmp_path / "ck", api_key_env="GRISTMILL_TEST_KEY")).ensure_setup()


def test_server_killed_mid_run_then_resume_without_regenerating(server, tmp_path):
    srv = server  # the module's server: killed here, then started again (later tests use it)
    docs = table(DOCS[:2])
    ckdir = tmp_path / "ck"
    params = openai_params(srv, ckdir, concurrency=1, max_retries=2, backoff_s=0.2)
    op = Rephrase(params)
    op.ensure_setup()
    result = {}
    worker = threading.Thread(target=lambda: result.update(out=op.process(docs)))
    try:
        worker.start()
        deadline = time.time() + 120
        while len(checkpoint_lines(ckdir)) < 2 and time.time() < deadline and worker.is_alive():
            time.sleep(0.1)
        srv.kill()  # mid-run: 4 generations asked for, about 2 done
        worker.join(120)
    finally:
        srv.kill()
    out = result["out"]
    first = op.counters(out)
    done = checkpoint_lines(ckdir)
    assert 2 <= len(done) < 4, "the server died too late to test anything"
    rows = out.to_pylist()
    assert [(r["source_id"], r["synthetic_style"]) for r in rows] == [(d[0], s) for d in DOCS[:2] for s in ("medium", "qa")]
    failed = [r for r in rows if (r[DROP_REASON] or "").startswith("rephrase:request_failed")]
    # nothing lost or double-counted: each generation is in the checkpoint once or quarantined once
    assert len(failed) + len(done) == 4 and first["failed"] == len(failed) and first["generations"] == len(done)
    assert len({d["key"] for d in done}) == len(done)
    assert first["retries"] >= 2 * len(failed)  # every failed request was retried max_retries times
    assert all("chunk 0" in r[DROP_REASON] for r in failed)

    srv.start()  # the server is back (and stays up for the next tests): a rerun asks only for what is missing
    again = Rephrase(params)
    out2 = again(docs)
    second = again.counters(out2)
    assert second["cached"] == len(done) and second["generations"] == len(failed) == second["requests"]
    assert not any((r or "").startswith("rephrase:request_failed") for r in out2.column(DROP_REASON).to_pylist())
    assert len(checkpoint_lines(ckdir)) == 4 and len({d["key"] for d in checkpoint_lines(ckdir)}) == 4


def test_on_ray_through_the_engine(server, ray_session, tmp_path):
    """The step in a recipe on Ray: ledger counts generated rows, counters reach stats.json, and a
    second run (step outputs removed) takes everything from the checkpoint."""
    from pipeline.executor import RunOptions, run_recipe
    from pipeline.recipe import load_recipe

    pq.write_table(table(DOCS[:2]), tmp_path / "in.parquet")
    out_dir = tmp_path / "out"
    params = openai_params(server, out_dir / "_checkpoints" / "synth", concurrency=2)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent(f"""\
        name: wrap-test
        input: {{format: parquet, paths: ["{tmp_path}/in.parquet"]}}
        output: {out_dir}
        steps:
          - {{id: synth, op: rephrase, params: {json.dumps(params)}}}
        """))
    stats = run_recipe(load_recipe(str(recipe)), RunOptions(output=str(out_dir), quiet=True))
    step = next(s for s in stats["steps"] if s["id"] == "synth")
    assert stats["invariant_ok"]
    assert step["docs_in"] == 2 and step["generated"] == 2 and step["docs_out"] + step["docs_dropped"] == 4
    assert step["counters"]["generations"] == 4 and step["counters"]["tokens_generated"] > 0
    kept = pq.read_table(out_dir / "synth")
    assert kept.num_rows == step["docs_out"] and set(kept.column("synthetic_style").to_pylist()) <= {"medium", "qa"}

    stats2 = run_recipe(load_recipe(str(recipe)), RunOptions(output=str(out_dir), quiet=True, resume=False))
    step2 = next(s for s in stats2["steps"] if s["id"] == "synth")
    assert step2["counters"]["generations"] == 0 and step2["counters"]["cached"] == 4
    assert pq.read_table(out_dir / "synth").sort_by("id").equals(kept.sort_by("id"))


# -- vllm: only where a GPU is -----------------------------------------------------------------
def test_vllm_backend_on_a_gpu(smol_path, tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no GPU here: the vllm backend runs only where CUDA is available")
    pytest.importorskip("vllm")
    op = Rephrase(backend="vllm", model=smol_path, styles=["medium"], max_new_tokens=32,
                  checkpoint_dir=str(tmp_path), engine_args={"gpu_memory_utilization": 0.3})
    out = op(table())
    assert out.num_rows == 3 and all(len(t.split()) >= 5 for t in out.column("text").to_pylist())
    assert op.counters(out)["generations"] == 3


def test_wrap_recipe_validates():
    from pipeline.recipe import load_recipe

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    loaded = load_recipe(os.path.join(root, "recipes", "wrap.yaml"), check_inputs=False)
    synth = loaded.params["synth"]
    assert synth.styles == ["easy", "medium", "hard", "qa"] and synth.max_chunk_tokens == 300
    assert os.path.isabs(synth.checkpoint_dir) and synth.checkpoint_dir.endswith("out/wrap/_checkpoints/synth")
    assert loaded.inputs_of("tok") == ["dedup", "synth_share"]
