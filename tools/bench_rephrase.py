"""Benchmark: tokens/s of the `rephrase` step against the bare backend on the same prompts, in the
same run (figures are ratios against the peer: the cores are shared).

- transformers: the step (chunking, checkpoint writes, guards, Arrow rows included) vs a bare
  `model.generate` loop over the same rendered prompts, same batch size, same greedy decoding;
- openai: the step against a `transformers serve` process on 127.0.0.1 vs direct
  `/chat/completions` requests from a thread pool of the same concurrency.

Each pair is timed alternately `--repeats` times (a fresh checkpoint each time, so the step
generates everything); the overhead is 1 - step tokens/s / bare tokens/s on the summed times.

    .venv/bin/python tools/bench_rephrase.py --docs 8 --max-new-tokens 48 --batch-size 8
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pyarrow as pa  # noqa: E402

from operators._rephrase_backends import BUNDLED_NAME, bundled_model  # noqa: E402
from operators._rephrase_text import TEMPLATES  # noqa: E402
from operators.rephrase import Rephrase  # noqa: E402

TOPICS = ["library", "flood", "bakery", "election", "bridge", "museum", "harvest", "railway", "school",
          "hospital", "festival", "factory"]


def documents(n: int) -> pa.Table:
    """Short English news-like documents (one chunk each), different lengths."""
    texts = []
    for i in range(n):
        t = TOPICS[i % len(TOPICS)]
        extra = " ".join(["Officials said more details about the " + t + " would follow next week."] * (1 + i % 3))
        texts.append(f"The town announced on Monday that the new {t} project will start in the spring. "
                     f"The {t} will cost {3 + i} million dollars, paid by the regional government. "
                     f"Residents welcomed the plan at a public meeting about the {t}. {extra}")
    return pa.table({"id": [f"doc-{i}" for i in range(n)], "text": texts})


def prompts_of(docs: pa.Table, style: str) -> list[str]:
    return [TEMPLATES[style].format(text=t) for t in docs.column("text").to_pylist()]


def bare_generate(model, tok, prompts: list[str], batch_size: int, max_new_tokens: int) -> int:
    """The bare backend: chat template, left padding, batches by length, greedy generate."""
    import torch

    rendered = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                        add_generation_prompt=True) for p in prompts]
    lengths = [len(x) for x in tok(rendered, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(rendered)), key=lambda i: lengths[i])
    tokens = 0
    for s in range(0, len(order), batch_size):
        enc = tok([rendered[i] for i in order[s:s + batch_size]], return_tensors="pt", padding=True,
                  add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, top_k=None,
                                 pad_token_id=tok.pad_token_id)
        for ids in out[:, enc["input_ids"].shape[1]:].tolist():
            tokens += ids.index(tok.eos_token_id) + 1 if tok.eos_token_id in ids else len(ids)
    return tokens


def direct_requests(base_url: str, model: str, prompts: list[str], concurrency: int, max_new_tokens: int) -> int:
    import httpx

    with httpx.Client(timeout=600, limits=httpx.Limits(max_connections=concurrency)) as client:
        def one(p):
            r = client.post(base_url + "/chat/completions", json={
                "model": model, "messages": [{"role": "user", "content": p}], "max_tokens": max_new_tokens,
                "temperature": 0.0, "top_p": 1.0, "seed": 0})
            r.raise_for_status()
            return int(r.json()["usage"]["completion_tokens"])

        with ThreadPoolExecutor(concurrency) as pool:
            return sum(pool.map(one, prompts))


def run_step(params: dict, docs: pa.Table, op: Rephrase | None = None) -> tuple[int, float, Rephrase]:
    """One timed process() with an empty checkpoint (the model stays loaded across repeats)."""
    ck = tempfile.mkdtemp(prefix="bench_rephrase_ck_")
    try:
        if op is None:
            op = Rephrase({**params, "checkpoint_dir": ck})
            op.ensure_setup()
        else:
            from operators._rephrase_checkpoint import Checkpoint
            op.checkpoint = Checkpoint(ck, {"bench": time.time()})
        t0 = time.perf_counter()
        out = op.process(docs)
        wall = time.perf_counter() - t0
        c = op.counters(out)
        assert c["generations"] == docs.num_rows * len(params["styles"]), c
        return int(c["tokens_generated"]), wall, op
    finally:
        shutil.rmtree(ck, ignore_errors=True)


def bench_transformers(args, docs) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = bundled_model()
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompts = prompts_of(docs, args.style)
    torch.set_num_threads(args.threads)  # the step sets the same number while it generates
    params = {"styles": [args.style], "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
              "max_chunk_tokens": 300, "num_threads": args.threads}
    op = None
    bare_tok = bare_s = step_tok = step_s = 0.0
    bare_generate(model, tok, prompts[:1], 1, 4)  # warm-up
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        bare_tok += bare_generate(model, tok, prompts, args.batch_size, args.max_new_tokens)
        bare_s += time.perf_counter() - t0
        n, s, op = run_step(params, docs, op)
        step_tok += n
        step_s += s
    return summary("transformers", bare_tok, bare_s, step_tok, step_s, batch_size=args.batch_size,
                   threads=args.threads)


def bench_openai(args, docs) -> dict:
    from tests.operators.test_rephrase import Server  # the tests' launcher: transformers serve on 127.0.0.1

    log = tempfile.mktemp(prefix="bench_rephrase_server_", suffix=".log")
    srv = Server(bundled_model(), log).start()
    try:
        prompts = prompts_of(docs, args.style)
        params = {"styles": [args.style], "max_new_tokens": args.max_new_tokens, "backend": "openai",
                  "base_url": srv.base_url, "model": srv.model, "concurrency": args.concurrency,
                  "timeout_s": 600}
        direct_requests(srv.base_url, srv.model, prompts[:1], 1, 4)  # warm-up
        op = None
        bare_tok = bare_s = step_tok = step_s = 0.0
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            bare_tok += direct_requests(srv.base_url, srv.model, prompts, args.concurrency, args.max_new_tokens)
            bare_s += time.perf_counter() - t0
            n, s, op = run_step(params, docs, op)
            step_tok += n
            step_s += s
    finally:
        srv.kill()
    return summary("openai (transformers serve)", bare_tok, bare_s, step_tok, step_s, concurrency=args.concurrency)


def summary(name, bare_tok, bare_s, step_tok, step_s, **extra) -> dict:
    bare_rate, step_rate = bare_tok / bare_s, step_tok / step_s
    return {"backend": name, "bare_tokens": int(bare_tok), "bare_s": round(bare_s, 2),
            "bare_tokens_per_s": round(bare_rate, 2), "step_tokens": int(step_tok), "step_s": round(step_s, 2),
            "step_tokens_per_s": round(step_rate, 2), "overhead": round(1 - step_rate / bare_rate, 4), **extra}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=8)
    ap.add_argument("--style", default="medium", choices=sorted(TEMPLATES))
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (both sides; the server: OMP_NUM_THREADS=1)")
    ap.add_argument("--backends", default="transformers,openai")
    args = ap.parse_args()
    docs = documents(args.docs)
    results = []
    for b in args.backends.split(","):
        r = bench_transformers(args, docs) if b == "transformers" else bench_openai(args, docs)
        results.append(r)
        print(json.dumps(r), flush=True)
    print(f"\nmodel {BUNDLED_NAME}, {args.docs} docs x style {args.style}, max_new_tokens {args.max_new_tokens}, "
          f"{args.repeats} alternating repeats")
    for r in results:
        print(f"{r['backend']:<28} bare {r['bare_tokens_per_s']:7.2f} tok/s   step {r['step_tokens_per_s']:7.2f} tok/s"
              f"   overhead {100 * r['overhead']:+.1f}%   "
              + ", ".join(f"{k} {r[k]}" for k in ("batch_size", "concurrency") if k in r))


if __name__ == "__main__":
    main()
