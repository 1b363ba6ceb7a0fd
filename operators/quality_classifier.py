"""Model-based quality score: a fastText classifier (DCLM-style) or a transformers classifier.

backend ``fasttext`` (default): any supervised fastText model by path (e.g. DCLM's
``openhermes_reddit_eli5_vs_rw_v2_bigram_200k_train.bin``, or one trained with
``tools/train_quality_classifier.py``). The score is the probability of ``__label__<label>``
(``label: hq`` by default) from the full distribution (``predict(k=-1)``), 0.0 when the model
never returns that label. Text is put on one line first (``"\\n"`` -> ``newline_replacement``,
a space by default as DCLM does; fastText refuses newlines); the batch is one ``predict`` call.

backend ``transformers``: an ``AutoModelForSequenceClassification`` saved with
``save_pretrained`` (a local folder; nothing is downloaded: ``local_files_only``). Documents are
tokenized in micro-batches sorted by length (padding waste is small; the order of the output is
the input's), truncated to ``max_length`` tokens, and run under ``torch.inference_mode``.
Score: with one output (a regression head, e.g. FineWeb-Edu's 0-5 scale) the raw logit; with
several, the softmax probability of ``label`` (matched against ``config.id2label``; a digit
string is an index; with the default ``LABEL_0, LABEL_1, ...`` names, ``hq`` means index 1).
Device: ``auto`` uses CUDA when this process can see a GPU (a Ray actor sees one only when the
step's resources ask for ``num_gpus``), else CPU.

The score goes to ``column`` (``quality_score`` by default; use ``quality_<name>`` to run several
classifiers side by side). Rows scoring below ``min_score`` get
``drop_reason = "quality_classifier:low_score"`` (``score >= min_score`` is kept, as datatrove's
FastTextClassifierFilter keeps ``>=``); ``label_only`` only scores.
"""
from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from operators.base import Operator, Params, Resources, mark_dropped, register, set_column

LABEL_PREFIX = "__label__"


class QualityClassifierParams(Params):
    backend: Literal["fasttext", "transformers"] = Field(
        "fasttext", description="fasttext: supervised .bin/.ftz; transformers: save_pretrained folder"
    )
    model_path: str | None = Field(
        None, description="the model file (fasttext) or folder (transformers); required to run"
    )
    label: str = Field(
        "hq", min_length=1, description="the class whose probability is the score (fastText label without __label__, "
        "or a transformers id2label name / index)"
    )
    column: str = Field(
        "quality_score", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="output column, e.g. quality_dclm"
    )
    min_score: float = Field(
        0.5, description="keep rows with score >= min_score (a probability in [0, 1], or the regression scale)"
    )
    label_only: bool = Field(False, description="only add the score column, drop nothing")
    newline_replacement: str = Field(" ", description="fastText: what replaces newlines before predict")
    max_chars: int | None = Field(
        None, ge=1, description="score only the first max_chars characters (None: whole text; the "
        "transformers backend truncates to max_length tokens anyway, so a cap like 20000 only saves tokenizing time)"
    )
    max_length: int = Field(512, ge=8, le=32768, description="transformers: tokens per document (truncation)")
    inference_batch_size: int = Field(32, ge=1, le=4096, description="transformers: documents per forward pass")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="transformers: where the model runs")


@register
class QualityClassifier(Operator):
    """Score documents with a fastText or transformers quality classifier and keep those above min_score."""

    name = "quality_classifier"
    kind = "filter"
    Params = QualityClassifierParams
    needs = frozenset({"text"})
    adds = frozenset({"quality_score"})  # the default `column`; a configured column name replaces it
    resources = Resources(num_cpus=1, batch_size=256, actor=True)
    requires: ClassVar[tuple[str, ...]] = ("fasttext",)

    # -- setup -------------------------------------------------------------------------------
    def setup(self) -> None:
        p = self.params
        if not p.model_path:
            raise ValueError("quality_classifier needs params.model_path (a fastText model file or a "
                             "transformers save_pretrained folder)")
        if p.backend == "fasttext":
            self._setup_fasttext()
        else:
            self._setup_transformers()

    def _setup_fasttext(self) -> None:
        from fasttext.FastText import _FastText

        self.model = _FastText(model_path=self.params.model_path)
        labels = [lab.removeprefix(LABEL_PREFIX) for lab in self.model.get_labels()]
        target = self.params.label.removeprefix(LABEL_PREFIX)
        if target not in labels:
            raise ValueError(f"label {target!r} is not in the fastText model's labels {labels}")
        self._target = LABEL_PREFIX + target

    def _setup_transformers(self) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        p = self.params
        if p.device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        else:
            device = p.device
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(p.model_path, local_files_only=True)
        self.model = AutoModelForSequenceClassification.from_pretrained(p.model_path, local_files_only=True)
        self.model.to(self.device).eval()
        self._index = self._label_index(self.model.config)

    def _label_index(self, config) -> int | None:
        """None: regression head (score = the logit). Else the class index whose probability is the score."""
        n = int(config.num_labels)
        if n == 1:
            return None
        names = {int(i): str(v) for i, v in (config.id2label or {}).items()}
        want = self.params.label.removeprefix(LABEL_PREFIX)
        for i, v in names.items():
            if v.lower() == want.lower():
                return i
        if want.isdigit() and int(want) < n:
            return int(want)
        if n == 2 and all(v == f"LABEL_{i}" for i, v in names.items()) and want == "hq":
            return 1
        raise ValueError(f"label {want!r} not among the model's labels {names} (give a name or an index)")

    # -- scoring -----------------------------------------------------------------------------
    def _texts(self, text) -> list[str]:
        arr = text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text
        arr = pc.fill_null(arr, "")
        if self.params.max_chars is not None:
            arr = pc.utf8_slice_codeunits(arr, 0, self.params.max_chars)
        if self.params.backend == "fasttext":
            arr = pc.replace_substring(arr, "\n", self.params.newline_replacement)
        return arr.to_pylist()

    def score_texts(self, texts: list[str]) -> np.ndarray:
        """Scores for already-prepared texts (see _texts); float64, one per text."""
        if not texts:
            return np.zeros(0, dtype=np.float64)
        if self.params.backend == "fasttext":
            return self._score_fasttext(texts)
        return self._score_transformers(texts)

    def _score_fasttext(self, texts: list[str]) -> np.ndarray:
        labels, probs = self.model.predict(texts, k=-1, threshold=0.0)
        target = self._target
        out = np.zeros(len(texts), dtype=np.float64)
        for i, (lab, pr) in enumerate(zip(labels, probs)):
            for name, prob in zip(lab, pr):
                if name == target:
                    out[i] = prob
                    break
        return out

    def _score_transformers(self, texts: list[str]) -> np.ndarray:
        import torch

        p = self.params
        order = np.argsort(np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts)), kind="stable")
        out = np.empty(len(texts), dtype=np.float64)
        with torch.inference_mode():
            for s in range(0, len(texts), p.inference_batch_size):
                idx = order[s : s + p.inference_batch_size]
                enc = self.tokenizer(
                    [texts[i] for i in idx],
                    truncation=True,
                    max_length=p.max_length,
                    padding=True,
                    return_tensors="pt",
                )
                enc = {k: v.to(self.device) for k, v in enc.items()}
                logits = self.model(**enc).logits.float()
                if self._index is None:
                    vals = logits[:, 0]
                else:
                    vals = torch.softmax(logits, dim=-1)[:, self._index]
                out[idx] = vals.cpu().numpy()
        return out

    def process(self, batch: pa.Table) -> pa.Table:
        p = self.params
        text = batch.column("text")
        scores = self.score_texts(self._texts(text))
        valid = pc.is_valid(text)
        col = pc.if_else(valid, pa.array(scores, pa.float64()), pa.scalar(None, pa.float64()))
        batch = set_column(batch, p.column, col)
        if p.label_only:
            return batch
        keep = (scores >= p.min_score) & valid.to_numpy(zero_copy_only=False)
        return mark_dropped(batch, pa.array(~keep), "quality_classifier:low_score")
