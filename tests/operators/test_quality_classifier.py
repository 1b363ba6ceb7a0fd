"""quality_classifier: a fastText model trained here on real web text, and a tiny transformers
classifier created here from a config (no downloads)."""
from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from operators.base import DROP_REASON, load_operators
from operators.quality_classifier import QualityClassifier

ROOT = pathlib.Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data not present")
sys.path.insert(0, str(ROOT))
from tools.train_quality_classifier import binary_metrics, main as train_main, roc_auc  # noqa: E402


def _table(texts):
    return pa.table({"id": [str(i) for i in range(len(texts))], "text": texts})


@pytest.fixture(scope="module")
def labelled_web() -> pa.Table:
    """Real labelled text: per page of web/pages.warc.gz, the main-content lines (`hq`) vs the
    boilerplate lines resiliparse leaves out of the main content (`lq`: menus, footers, ...)."""
    if not DATA.is_dir():
        pytest.skip("../shared/data not present")
    from fastwarc.warc import ArchiveIterator, WarcRecordType
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    texts, labels = [], []
    with open(DATA / "web" / "pages.warc.gz", "rb") as f:
        for rec in ArchiveIterator(f, record_types=WarcRecordType.response, parse_http=True):
            body = rec.reader.read()
            html = bytes_to_str(body, detect_encoding(body))
            main = [ln.strip() for ln in extract_plain_text(html, main_content=True).splitlines()]
            main = [ln for ln in main if len(ln) >= 30]
            seen = set(main)
            full = [ln.strip() for ln in extract_plain_text(html, main_content=False).splitlines()]
            boiler = [ln for ln in full if len(ln) >= 3 and ln not in seen]
            if main:
                texts.append("\n".join(main[:8]))
                labels.append("hq")
            if len(boiler) >= 3:
                texts.append("\n".join(boiler[:25]))
                labels.append("lq")
    return pa.table({"text": texts, "label": labels})


# -- fastText backend + training tool ----------------------------------------------------------
@needs_data
def test_train_tool_then_fasttext_backend(tmp_path, labelled_web, capsys):
    n = labelled_web.num_rows
    assert n > 1000 and 0.3 < np.mean(np.array(labelled_web.column("label").to_pylist()) == "hq") < 0.7
    # the tool reads Parquet and JSONL(.gz) together
    pq.write_table(labelled_web.slice(0, n // 2), tmp_path / "a.parquet")
    with open(tmp_path / "b.jsonl", "w", encoding="utf-8") as f:
        for row in labelled_web.slice(n // 2).to_pylist():
            f.write(json.dumps(row) + "\n")
    model = tmp_path / "q.bin"
    rc = train_main([str(tmp_path / "a.parquet"), str(tmp_path / "b.jsonl"), "--output", str(model),
                     "--valid-fraction", "0.2", "--epoch", "10", "--dim", "16", "--bucket", "20000",
                     "--metrics", str(tmp_path / "m.json")])
    assert rc == 0 and model.is_file()
    printed = capsys.readouterr().out
    assert "precision" in printed and "AUC" in printed
    res = json.loads((tmp_path / "m.json").read_text())
    v = res["valid"]
    assert res["train_rows"] + res["valid_rows"] == n and v["n"] == res["valid_rows"]
    assert v["auc"] > 0.9 and v["precision"] > 0.8 and v["recall"] > 0.8, v

    # the operator's score is the model's own probability of __label__hq
    from fasttext.FastText import _FastText

    raw = _FastText(model_path=str(model))
    texts = labelled_web.column("text").to_pylist()[:300] + [None, ""]
    out = QualityClassifier(model_path=str(model), column="quality_web", min_score=0.5)(_table(texts))
    got = out.column("quality_web").to_pylist()
    for text, score in zip(texts[:300], got):
        labs, probs = raw.predict(text.replace("\n", " "), k=-1)
        ref = dict(zip(labs, probs)).get("__label__hq", 0.0)
        assert score == pytest.approx(float(ref), rel=1e-6, abs=1e-7)
    assert got[300] is None and got[301] is not None
    reasons = out.column(DROP_REASON).to_pylist()
    for score, reason in zip(got, reasons):
        assert (reason is None) == (score is not None and score >= 0.5)
        assert reason in (None, "quality_classifier:low_score")
    gold = np.array(labelled_web.column("label").to_pylist()[:300]) == "hq"
    assert roc_auc(np.array(got[:300]), gold) > 0.9  # mostly training rows: a sanity check of direction

    lq = QualityClassifier(model_path=str(model), label="__label__lq", label_only=True)(_table(texts[:50]))
    np.testing.assert_allclose(lq.column("quality_score").to_numpy(), 1 - np.array(got[:50]), atol=5e-5)  # fastText adds 1e-5 per class
    assert DROP_REASON not in lq.column_names
    with pytest.raises(ValueError, match="not in the fastText model's labels"):
        QualityClassifier(model_path=str(model), label="nope")(_table(["x"]))


def test_metrics_helpers():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(200), 1)  # many ties
    pos = rng.random(200) < 0.4
    brute = np.mean([(p > q) + 0.5 * (p == q) for p in scores[pos] for q in scores[~pos]])
    assert roc_auc(scores, pos) == pytest.approx(brute)
    m = binary_metrics(np.array([0.9, 0.8, 0.3, 0.6, 0.1]), np.array([True, False, True, False, False]))
    assert (m["precision"], m["recall"], m["accuracy"]) == pytest.approx((1 / 3, 1 / 2, 2 / 5))


def test_model_path_required_and_params():
    with pytest.raises(ValueError, match="model_path"):
        QualityClassifier()(_table(["text"]))
    with pytest.raises(ValidationError):
        QualityClassifier(column="bad name")
    with pytest.raises(ValidationError):
        QualityClassifier(backend="sklearn")
    with pytest.raises(ValidationError):
        QualityClassifier(model="x")
    assert load_operators()["quality_classifier"] is QualityClassifier
    assert QualityClassifier.kind == "filter" and QualityClassifier.resources.actor


# -- transformers backend ------------------------------------------------------------------------
CORPUS = [
    "the council approved the new budget for the city library and the park",
    "click here to subscribe to our newsletter and follow us on social media",
    "researchers measured the temperature of the lake every morning for a year",
    "home about contact privacy policy terms of service cookie settings login",
    "the train leaves the station at nine and arrives in the capital at noon",
    "buy now best price free shipping limited offer click add to cart",
]


def _make_classifier(path: pathlib.Path, num_labels: int, id2label=None, seed: int = 0) -> pathlib.Path:
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        model_max_length=64,
    )
    kw = {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}} if id2label else {}
    config = BertConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, num_labels=num_labels, pad_token_id=0, **kw,
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config).eval()
    fast.save_pretrained(path)
    model.save_pretrained(path)
    return path


def _reference_scores(path, texts, index, max_length=64):
    """One document at a time, no padding: what batching, sorting and padding must not change."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    out = []
    with torch.no_grad():
        for t in texts:
            logits = model(**tok(t, truncation=True, max_length=max_length, return_tensors="pt")).logits[0]
            out.append(float(logits[0]) if index is None else float(torch.softmax(logits, -1)[index]))
    return np.array(out)


def _docs():
    rng = np.random.default_rng(1)
    words = " ".join(CORPUS).split() + ["unseenword"]
    docs = [" ".join(rng.choice(words, size=int(rng.integers(1, 120)))) for _ in range(37)]
    return docs + ["Line one of a page\nline two about the budget"]


def test_transformers_classifier_by_path(tmp_path):
    pytest.importorskip("torch")
    path = _make_classifier(tmp_path / "clf", 2, id2label={0: "lq", 1: "hq"})
    docs = _docs()
    ref = _reference_scores(path, docs, index=1)
    op = QualityClassifier(backend="transformers", model_path=str(path), max_length=64, inference_batch_size=5,
                           device="cpu", min_score=float(np.median(ref)))
    out = op(_table(docs + [None]))
    got = out.column("quality_score").to_pylist()
    np.testing.assert_allclose(got[:-1], ref, atol=1e-5)  # sorted micro-batches with padding == one by one
    assert got[-1] is None
    kept = out.column(DROP_REASON).is_null().to_pylist()
    assert kept[:-1] == list(ref >= np.median(ref)) and kept[-1] is False
    # the other class by name, and by index
    lq = QualityClassifier(backend="transformers", model_path=str(path), label="lq", max_length=64, label_only=True)
    np.testing.assert_allclose(lq(_table(docs)).column("quality_score").to_numpy(), 1 - ref, atol=1e-5)
    by_index = QualityClassifier(backend="transformers", model_path=str(path), label="0", max_length=64,
                                 label_only=True)
    np.testing.assert_allclose(by_index(_table(docs)).column("quality_score").to_numpy(), 1 - ref, atol=1e-5)
    with pytest.raises(ValueError, match="not among the model's labels"):
        QualityClassifier(backend="transformers", model_path=str(path), label="edu")(_table(["x"]))


def test_transformers_regression_head_and_default_labels(tmp_path):
    pytest.importorskip("torch")
    reg = _make_classifier(tmp_path / "reg", 1, seed=1)
    docs = _docs()[:12]
    ref = _reference_scores(reg, docs, index=None)
    out = QualityClassifier(backend="transformers", model_path=str(reg), column="quality_edu", max_length=64,
                            label_only=True)(_table(docs))
    np.testing.assert_allclose(out.column("quality_edu").to_numpy(), ref, atol=1e-5)  # the raw logit

    plain = _make_classifier(tmp_path / "plain", 2, seed=2)  # id2label = LABEL_0, LABEL_1: hq -> index 1
    ref1 = _reference_scores(plain, docs, index=1)
    got = QualityClassifier(backend="transformers", model_path=str(plain), max_length=64, label_only=True)(_table(docs))
    np.testing.assert_allclose(got.column("quality_score").to_numpy(), ref1, atol=1e-5)
