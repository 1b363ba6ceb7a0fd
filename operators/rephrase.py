"""rephrase: WRAP synthetic rephrasing of web documents with an instruction model."""
from __future__ import annotations

import os
import time
from typing import Literal

import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from operators._rephrase_checkpoint import Checkpoint, chunk_key
from operators._rephrase_text import (TEMPLATES, check_output, chunk_text, rough_token_count,
                                      strip_preamble)
from operators.base import DROP_REASON, Operator, Params, Resources, register

# source columns a synthetic row gets as nulls: token counts of the source's text, and its raw HTML
# (large, and repeated once per style otherwise). Nulled, not dropped: the recipe's column checks
# and unions count on every upstream column still being there.
NULLED = ("n_tokens", "token_ids", "html")


class RephraseParams(Params):
    styles: list[str] = Field(["easy", "medium", "hard", "qa"], min_length=1,
                              description="WRAP styles to generate: easy, medium, hard, qa, or names in `templates`")
    templates: dict[str, str] = Field(default_factory=dict,
                                      description="prompt per style, overriding or adding to the built-in ones; "
                                                  "a string with {text} where the source chunk goes")
    backend: Literal["transformers", "openai", "vllm"] = "transformers"
    model: str | None = Field(None, description="transformers/vllm: model path (transformers default: the bundled "
                                                "SmolLM2-135M-Instruct); openai: the model name the server serves")
    base_url: str | None = Field(None, description="openai: server base URL, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str | None = Field(None, description="openai: NAME of the environment variable holding the API key")
    max_chunk_tokens: int = Field(300, ge=16, description="source tokens per rephrase (WRAP: ~300; longer loses facts)")
    max_new_tokens: int = Field(400, ge=1, le=32768)
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = 0
    batch_size: int = Field(8, ge=1, description="transformers: sequences per model.generate call")
    device: str = Field("cpu", description="transformers: torch device")
    num_threads: int = Field(1, ge=1, le=512, description="transformers: torch threads while generating (one per "
                                                          "worker, as its num_cpus: more threads than free cores "
                                                          "make generation several times slower)")
    concurrency: int = Field(8, ge=1, le=1024, description="openai: requests in flight per worker")
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(3, ge=0, le=20)
    backoff_s: float = Field(1.0, ge=0.0, description="openai: first retry delay, doubled each retry")
    engine_args: dict = Field(default_factory=dict, description="vllm: extra LLM(...) arguments, e.g. "
                                                                "{tensor_parallel_size: 2}")
    checkpoint_dir: str | None = Field(None, description="where finished generations are kept; a run's "
                                                         "<output>/_checkpoints/<step> in recipes")
    min_length_ratio: float = Field(0.25, ge=0.0, le=1.0, description="output words / source words below: too_short")
    max_repetition: float = Field(0.3, ge=0.0, le=1.0, description="share of repeated word 4-grams above: repetition")
    min_topic_overlap: float = Field(0.15, ge=0.0, le=1.0,
                                     description="share of the source's top content words in the output below: off_topic")

    @field_validator("checkpoint_dir")
    @classmethod
    def _absolute(cls, v):
        # resolved where the recipe is validated (the driver): Ray workers run in another cwd
        return None if v is None else os.path.abspath(os.path.expanduser(v))

    @model_validator(mode="after")
    def _check(self):
        for style, t in self.templates.items():
            if "{text}" not in t:
                raise ValueError(f"templates.{style}: a template must contain {{text}} where the source goes")
            try:
                t.format(text="")
            except (KeyError, IndexError, ValueError) as e:
                raise ValueError(f"templates.{style}: only {{text}} may be a placeholder ({e}); "
                                 "write literal braces as {{ and }}") from None
        unknown = [s for s in self.styles if s not in TEMPLATES and s not in self.templates]
        if unknown:
            raise ValueError(f"styles: {unknown} have no template; built-in styles are "
                             f"{sorted(TEMPLATES)}, or add one under templates")
        if len(set(self.styles)) != len(self.styles):
            raise ValueError("styles: each style once")
        if self.backend == "openai" and (not self.base_url or not self.model):
            raise ValueError("backend openai needs base_url (e.g. http://127.0.0.1:8000/v1) and model")
        if self.backend == "vllm" and not self.model:
            raise ValueError("backend vllm needs model (a path or name the workers can load)")
        if self.api_key_env is not None and not self.api_key_env.replace("_", "").isalnum():
            raise ValueError("api_key_env is the NAME of an environment variable (letters, digits, _), "
                             "not the key itself")
        return self


@register
class Rephrase(Operator):
    """WRAP rephrasing: one synthetic row per (document, style), written by an instruction model.

    After "Rephrasing the Web" (Maini et al. 2024): web documents rewritten in four styles (easy:
    toddler vocabulary and simple sentences; medium: a diverse paraphrase in high-quality English
    as on Wikipedia; hard: terse, abstruse language for an erudite scholar; qa: a conversation of
    "Question:"/"Answer:" turns), trained on 1:1 with real text. Our own prompt wording,
    overridable per style (`templates`, a string with {text}).

    Rules:
    - the source is split into chunks of at most `max_chunk_tokens` (300: WRAP's limit, longer
      rephrases lose information) on paragraph, then sentence, then word boundaries; each chunk
      is rephrased alone, the chunks are rejoined with a blank line per document and style;
    - a synthetic row has `id` = `<id>/<style>`, `source_id`, `synthetic_style`,
      `synthetic_model`, `synthetic_tokens` (tokens generated), the generated `text`, and the
      source's other columns (`html`, `n_tokens`, `token_ids` as nulls: they describe the
      source's text); the source rows are not returned (a recipe keeps them on another
      branch and mixes both with a union or `mixture`);
    - preambles ("Here is a paraphrase:", "Sure! ...", "Adequate rephrasing:") are stripped;
    - quarantined with drop_reason `rephrase:<why>` (the first chunk that fails names the row):
      `empty_source` (no text), `request_failed` (still failing after `max_retries` retries with
      exponential backoff), `empty` output, `refusal` ("I'm sorry", "As an AI", ...), `echo` (the
      instruction written back, or >= 90% of the output's 8-grams copied from the source),
      `repetition` (over `max_repetition` of word 4-grams repeat), `too_short` (fewer words than
      `min_length_ratio` x the source chunk's), `off_topic` (under `min_topic_overlap` of the
      source's 30 most frequent content words appear in the output);
    - every finished generation is checkpointed at once under `checkpoint_dir`, keyed by row id,
      style, chunk and a hash of model + template + sampling parameters: a killed run resumes
      where it stopped, a rerun with the same parameters generates nothing;
    - backends: `transformers` (local model, batched generate), `openai` (any OpenAI-compatible
      server; API key read from the environment variable named by `api_key_env`, never written
      anywhere), `vllm` (vLLM engine in a GPU actor: give the step `resources: {num_gpus: 1}`).
    Counters per batch: tokens_generated, generate_s, generations (new), cached (from checkpoint),
    requests, retries, failed.
    """

    name = "rephrase"
    kind = "map"
    Params = RephraseParams
    needs = frozenset({"id", "text"})
    adds = frozenset({"source_id", "synthetic_style", "synthetic_model", "synthetic_tokens"})
    resources = Resources(num_cpus=1, batch_size=16, actor=True)
    requires = ("transformers", "httpx")
    generates = True

    def setup(self) -> None:
        p = self.params
        self.templates = {s: p.templates.get(s, TEMPLATES.get(s)) for s in p.styles}
        api_key = None
        if p.backend == "openai" and p.api_key_env:
            api_key = os.environ.get(p.api_key_env)
            if not api_key:
                raise RuntimeError(f"rephrase: environment variable {p.api_key_env} (params.api_key_env) is not set")
        sampling = dict(max_new_tokens=p.max_new_tokens, temperature=p.temperature, top_p=p.top_p, seed=p.seed)
        from operators import _rephrase_backends as b

        if p.backend == "transformers":
            self.backend = b.TransformersBackend(p.model, batch_size=p.batch_size, device=p.device,
                                                 num_threads=p.num_threads, **sampling)
        elif p.backend == "openai":
            self.backend = b.OpenAIBackend(p.base_url, p.model, api_key, concurrency=p.concurrency,
                                           timeout_s=p.timeout_s, max_retries=p.max_retries,
                                           backoff_s=p.backoff_s, **sampling)
        else:
            self.backend = b.VLLMBackend(p.model, engine_args=p.engine_args, **sampling)
        self.model_name = self.backend.name
        if p.checkpoint_dir is None:
            raise RuntimeError("rephrase: params.checkpoint_dir is required (finished generations are kept there "
                               "so that nothing is generated twice); recipes use <output>/_checkpoints/<step>")
        # what makes a generation what it is: a change of any of these must not reuse old text
        config = {"backend": p.backend, "model": self.model_name, "base_url": p.base_url,
                  "templates": self.templates, "max_chunk_tokens": p.max_chunk_tokens,
                  "max_new_tokens": p.max_new_tokens, "temperature": p.temperature, "top_p": p.top_p,
                  "seed": p.seed}
        self.checkpoint = Checkpoint(p.checkpoint_dir, config)
        self._last: dict[str, float] = {}

    def count_tokens(self, texts: list[str]) -> list[int]:
        counter = getattr(self.backend, "count_tokens", None)
        return counter(texts) if counter else [rough_token_count(t) for t in texts]

    def _count_one(self, text: str) -> int:
        return self.count_tokens([text])[0]

    def process(self, batch: pa.Table) -> pa.Table:
        p = self.params
        ids = batch.column("id").to_pylist()
        texts = batch.column("text").to_pylist()
        chunks = [chunk_text(t or "", p.max_chunk_tokens, self._count_one) for t in texts]

        # every (row, style, chunk): from the checkpoint, or a prompt to generate
        raw: dict[str, str] = {}
        ntok: dict[str, int] = {}
        failed: dict[str, str] = {}
        todo_keys, todo_prompts = [], []
        cached = 0
        for rid, cs in zip(ids, chunks):
            for style in p.styles:
                for c, chunk in enumerate(cs):
                    key = chunk_key(rid, style, c)
                    hit = self.checkpoint.get(key)
                    if hit is not None:
                        raw[key], ntok[key] = hit["text"], int(hit.get("tokens", 0))
                        cached += 1
                    else:
                        todo_keys.append(key)
                        todo_prompts.append(self.templates[style].format(text=chunk))
        req0, retry0 = self.backend.requests, self.backend.retries
        t0 = time.perf_counter()
        new = 0
        generated_tokens = 0
        for i, text, n, err in (self.backend.generate(todo_prompts) if todo_prompts else ()):
            key = todo_keys[i]
            if err is not None:
                failed[key] = err
                continue
            self.checkpoint.put(key, text, n)  # at once: a kill after this line loses nothing
            raw[key], ntok[key] = text, n
            new += 1
            generated_tokens += n
        generate_s = time.perf_counter() - t0

        out_text, reasons, styles, sources, n_tok, take = [], [], [], [], [], []
        for r, (rid, cs) in enumerate(zip(ids, chunks)):
            for style in p.styles:
                take.append(r)
                styles.append(style)
                sources.append(rid)
                instruction = self.templates[style].replace("{text}", "")
                pieces, reason = [], None
                if not cs:
                    reason = "rephrase:empty_source"
                for c, chunk in enumerate(cs):
                    key = chunk_key(rid, style, c)
                    if key in failed:
                        why, _, detail = failed[key].partition(" ")
                        reason = f"rephrase:{why} chunk {c}" + (f": {detail}" if detail else "")
                        break
                    cleaned = strip_preamble(raw[key])
                    why = check_output(cleaned, chunk, instruction, min_length_ratio=p.min_length_ratio,
                                       max_repetition=p.max_repetition, min_topic_overlap=p.min_topic_overlap)
                    if why is not None:
                        reason = f"rephrase:{why} chunk {c}"
                        break
                    pieces.append(cleaned)
                reasons.append(reason)
                if reason is not None:  # quarantined rows keep what was generated, for inspection
                    pieces = [strip_preamble(raw[k]) for k in (chunk_key(rid, style, c) for c in range(len(cs)))
                              if k in raw]
                out_text.append("\n\n".join(pieces))
                n_tok.append(sum(ntok.get(chunk_key(rid, style, c), 0) for c in range(len(cs))))

        base = batch.drop_columns([c for c in (DROP_REASON, "id", "text") if c in batch.column_names])
        out = base.take(pa.array(take, pa.int64()))
        for name in NULLED:
            if name in out.column_names:
                i = out.schema.get_field_index(name)
                out = out.set_column(i, out.schema.field(i), pa.nulls(out.num_rows, out.schema.field(i).type))
        cols = {
            "id": pa.array([f"{s}/{st}" for s, st in zip(sources, styles)], pa.string()),
            "text": pa.array(out_text, pa.string()),
            "source_id": pa.array(sources, pa.string()),
            "synthetic_style": pa.array(styles, pa.string()),
            "synthetic_model": pa.array([self.model_name] * len(take), pa.string()),
            "synthetic_tokens": pa.array(n_tok, pa.int64()),
            DROP_REASON: pa.array(reasons, pa.string()),
        }
        if out.num_columns == 0:  # only id and text came in: a table of no columns has no rows to add to
            out = pa.table(cols)
        else:
            for name, arr in cols.items():
                out = out.append_column(name, arr)
        self._last = {"tokens_generated": generated_tokens, "generate_s": generate_s,
                      "generations": new, "cached": cached, "failed": len(failed),
                      "requests": self.backend.requests - req0, "retries": self.backend.retries - retry0}
        return out

    def counters(self, out: pa.Table) -> dict[str, float]:
        return dict(self._last)
