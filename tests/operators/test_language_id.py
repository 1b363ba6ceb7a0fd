"""language_id: parity with the raw lid.176 model and with datatrove's LanguageFilter on real text."""
from __future__ import annotations

import gzip
import json
import pathlib
import sys

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from operators.base import DROP_REASON, load_operators, mark_dropped
from operators.language_id import LanguageId, default_model_path, load_fasttext

DATA = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data not present")


def _jsonl(path: pathlib.Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _web_texts() -> list[str]:
    """Main text of the 990 trafilatura eval pages (both WARCs), extracted with resiliparse."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    out = []
    for path in sorted((DATA / "web").glob("*.warc.gz")):
        with open(path, "rb") as f:
            for rec in ArchiveIterator(f, record_types=WarcRecordType.response, parse_http=True):
                body = rec.reader.read()
                out.append(extract_plain_text(bytes_to_str(body, detect_encoding(body)), main_content=True))
    return out


@pytest.fixture(scope="module")
def corpus() -> dict[str, list]:
    if not DATA.is_dir():
        pytest.skip("../shared/data not present")
    peers = []
    for path in sorted((DATA / "peers").glob("*/*.json*.gz")):
        if not path.name.startswith("attributes__"):
            peers += [r["text"] for r in _jsonl(path) if isinstance(r.get("text"), str)]
    return {
        "oscar": _jsonl(DATA / "oscar" / "oscar_sample.jsonl.gz"),
        "udhr": _jsonl(DATA / "oscar" / "udhr.jsonl.gz"),
        "peers": peers,
        "web": _web_texts(),
    }


@pytest.fixture(scope="module")
def raw_model():
    return load_fasttext(default_model_path())


@pytest.fixture(scope="module")
def labelled(corpus, raw_model):
    """All texts, the raw model's per-document predict on the normalized full text, and our output."""
    texts = (
        [d["text"] for d in corpus["oscar"]] + [d["text"] for d in corpus["udhr"]] + corpus["peers"] + corpus["web"]
    )
    raw = [raw_model.predict(t.replace("\n", " ")) for t in texts]
    table = pa.table({"id": [str(i) for i in range(len(texts))], "text": texts})
    out = LanguageId(label_only=True)(table)
    return texts, raw, out


def _table(texts):
    return pa.table({"id": [str(i) for i in range(len(texts))], "text": texts})


# -- parity on real documents ------------------------------------------------------------------
@needs_data
def test_label_parity_with_raw_model(labelled):
    texts, raw, out = labelled
    assert len(texts) >= 2000
    ours = out.column("language").to_pylist()
    theirs = [lab[0].removeprefix("__label__") for lab, _ in raw]
    agree = sum(a == b for a, b in zip(ours, theirs)) / len(texts)
    assert agree >= 0.995, f"label agreement {agree:.4f}"
    same = np.array([a == b for a, b in zip(ours, theirs)])
    ours_score = np.array(out.column("language_score").to_pylist())[same]
    raw_score = np.array([float(p[0]) for _, p in raw])[same]
    np.testing.assert_allclose(ours_score, raw_score, rtol=1e-6)
    assert out.num_rows == len(texts) and out.column("id").to_pylist() == [str(i) for i in range(len(texts))]


@needs_data
@pytest.mark.parametrize("name,floor", [("oscar", 0.92), ("udhr", 0.79)])
def test_top1_accuracy_at_least_raw(corpus, raw_model, labelled, name, floor):
    """Top-1 against the gold language, on texts whose language is in the model's label set."""
    _, raw, out = labelled
    start = 0 if name == "oscar" else len(corpus["oscar"])
    docs = corpus[name]
    labels = {lab.removeprefix("__label__") for lab in raw_model.get_labels()}
    rows = [i for i, d in enumerate(docs) if d["language"] in labels]
    gold = [docs[i]["language"] for i in rows]
    raw_pred = [raw[start + i][0][0].removeprefix("__label__") for i in rows]
    ours = out.column("language").to_pylist()
    ours = [ours[start + i] for i in rows]
    raw_acc = np.mean([p == g for p, g in zip(raw_pred, gold)])
    our_acc = np.mean([p == g for p, g in zip(ours, gold)])
    assert our_acc >= raw_acc, (our_acc, raw_acc)
    assert our_acc >= floor, our_acc


class _MemoModel:
    """Wraps the fastText model for the datatrove oracle so the 4 configurations below pay for each
    document's prediction once; datatrove's own decision code runs unchanged on top."""

    def __init__(self, model):
        self.model, self.cache = model, {}

    def predict(self, text, k=1, threshold=0.0):
        key = (text, k, threshold)
        if key not in self.cache:
            self.cache[key] = self.model.predict(text, k=k, threshold=threshold)
        return self.cache[key]


@pytest.fixture(scope="module")
def memo_model(raw_model):
    return _MemoModel(raw_model)


@needs_data
@pytest.mark.parametrize(
    "languages,threshold",
    [(None, 0.65), (["en", "de"], 0.65), (["en", "de", "fr", "es", "it"], 0.3), (["ru", "zh", "ja"], 0.05)],
)
def test_keep_decisions_match_datatrove(corpus, memo_model, languages, threshold):
    """datatrove's LanguageFilter (the oracle, run offline on the same lid.176.ftz) on ~900 real docs."""
    pytest.importorskip("fasteners")  # datatrove's LanguageFilter refuses to start without it
    from datatrove.data import Document
    from datatrove.pipeline.filters import LanguageFilter

    texts = [d["text"] for d in corpus["oscar"][::2]] + [d["text"] for d in corpus["udhr"][::4]] + corpus["web"][::3]
    lf = LanguageFilter(languages=languages, language_threshold=threshold)
    lf.model._model = memo_model  # offline: the same lid.176.ftz, no download
    oracle = []
    for i, t in enumerate(texts):
        doc = Document(text=t, id=str(i))
        oracle.append((bool(lf.filter(doc)), doc.metadata["language"]))
    out = LanguageId(languages=languages, min_score=threshold)(_table(texts))
    kept = out.column(DROP_REASON).is_null().to_pylist()
    agree = np.mean([k == o[0] for k, o in zip(kept, oracle)])
    assert agree >= 0.99, agree
    label_agree = np.mean([a == o[1] for a, o in zip(out.column("language").to_pylist(), oracle)])
    assert label_agree >= 0.995
    assert 0 < sum(kept) < len(texts)  # the case actually filters something


# -- behaviour (no shared data needed) ---------------------------------------------------------
SENTENCES = [
    "The committee will publish its final report on the new railway line next week.",
    "Die Stadtverwaltung hat beschlossen, die Bibliothek am Wochenende länger zu öffnen.",
    "Le gouvernement a annoncé une nouvelle réforme des retraites pour l'année prochaine.",
    "El ayuntamiento ha aprobado el presupuesto para la reforma del mercado central.",
    "Правительство объявило о новых мерах поддержки малого бизнеса в регионах.",
]


def test_newlines_normalized_like_fasttext_needs(raw_model):
    text = "First line of an English paragraph about trains.\nSecond line\n\nthird\r\nfourth\tline"
    out = LanguageId(label_only=True)(_table([text]))
    labels, probs = raw_model.predict(text.replace("\n", " "))
    assert out.column("language")[0].as_py() == labels[0].removeprefix("__label__")
    assert out.column("language_score")[0].as_py() == pytest.approx(float(probs[0]), rel=1e-6)


def test_columns_and_reasons():
    texts = SENTENCES + ["", None, "ok"]
    t = pa.table({"id": [str(i) for i in range(len(texts))], "text": texts, "url": ["u"] * len(texts)})
    out = LanguageId(languages=["en", "de"], min_score=0.65)(t)
    assert out.column_names[:3] == ["id", "text", "url"]
    lang = out.column("language").to_pylist()
    assert lang[:5] == ["en", "de", "fr", "es", "ru"]
    reasons = out.column(DROP_REASON).to_pylist()
    assert reasons[:5] == [None, None] + ["language_id:language_not_kept"] * 3
    assert reasons[6] == "language_id:low_score" and lang[6] is None  # null text
    assert out.column("language_score")[6].as_py() is None
    assert reasons[5] is not None  # empty text: fastText's guess is far below 0.65

    every = LanguageId(min_score=0.65)(t).column(DROP_REASON).to_pylist()
    assert every[:5] == [None] * 5 and every[5] == "language_id:low_score"
    labelled_only = LanguageId(label_only=True, languages=["de"])(t)
    assert DROP_REASON not in labelled_only.column_names


def test_existing_drop_reason_wins():
    t = mark_dropped(_table(SENTENCES), pa.array([True, False, False, False, False]), "earlier:rule")
    out = LanguageId(languages=["de"])(t)
    assert out.column(DROP_REASON).to_pylist()[:2] == ["earlier:rule", None]


def test_keep_list_below_half_uses_whole_distribution(raw_model):
    # a text where a listed language is not top-1 but scores above a low threshold
    mixed = SENTENCES[0] + " " + SENTENCES[1] + " " + SENTENCES[1]
    labels, probs = raw_model.predict(mixed, k=-1)
    scores = {lab.removeprefix("__label__"): float(p) for lab, p in zip(labels, probs)}
    top = max(scores, key=scores.get)
    second = sorted(scores, key=scores.get)[-2]
    threshold = scores[second] * 0.9
    assert threshold < 0.5 and scores[second] > threshold
    out = LanguageId(languages=[second], min_score=threshold)(_table([mixed]))
    assert out.column("language")[0].as_py() == top
    assert out.column(DROP_REASON)[0].as_py() is None
    out = LanguageId(languages=[second], min_score=min(0.99, scores[second] * 1.1))(_table([mixed]))
    assert out.column(DROP_REASON)[0].as_py() == "language_id:language_not_kept"


def test_top_k_column(raw_model):
    out = LanguageId(top_k=3, label_only=True)(_table(SENTENCES + [None]))
    topk = out.column("language_topk").to_pylist()
    assert topk[-1] is None
    for row, lang, text in zip(topk[:-1], out.column("language").to_pylist(), SENTENCES):
        assert len(row) == 3 and row[0]["language"] == lang
        scores = [r["score"] for r in row]
        assert scores == sorted(scores, reverse=True)
        labels, probs = raw_model.predict(text, k=3)
        assert [r["language"] for r in row] == [lab.removeprefix("__label__") for lab in labels]
    assert "language_topk" not in LanguageId(label_only=True)(_table(SENTENCES)).column_names


def test_max_chars_truncates_before_predict(raw_model):
    text = SENTENCES[1] + " " + " ".join([SENTENCES[0]] * 20)
    full = LanguageId(label_only=True)(_table([text])).column("language")[0].as_py()
    short = LanguageId(label_only=True, max_chars=len(SENTENCES[1]))(_table([text])).column("language")[0].as_py()
    assert (full, short) == ("en", "de")


def test_model_by_path_with_script_labels(tmp_path):
    """A GlotLID-style model (labels like eng_Latn) given by path; script kept or stripped."""
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
    from tools.train_quality_classifier import fit_fasttext  # a fresh process: see its docstring

    lines = []
    for _ in range(30):
        lines += [f"__label__eng_Latn {SENTENCES[0]}", f"__label__deu_Latn {SENTENCES[1]}"]
        lines += [f"__label__rus_Cyrl {SENTENCES[4]}"]
    train = tmp_path / "train.txt"
    train.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path = tmp_path / "glot_like.bin"
    fit_fasttext(str(train), str(path), epoch=20, lr=0.5, dim=16, minn=2, maxn=3, thread=1, bucket=10000)
    t = _table([SENTENCES[0], SENTENCES[1], SENTENCES[4]])

    kept = LanguageId(model_path=str(path), languages=["eng_Latn"], min_score=0.3)(t)
    assert kept.column("language").to_pylist() == ["eng_Latn", "deu_Latn", "rus_Cyrl"]
    assert kept.column(DROP_REASON).to_pylist() == [None] + ["language_id:language_not_kept"] * 2
    stripped = LanguageId(model_path=str(path), script="strip", languages=["rus"], min_score=0.3)(t)
    assert stripped.column("language").to_pylist() == ["eng", "deu", "rus"]
    assert stripped.column("language_script").to_pylist() == ["Latn", "Latn", "Cyrl"]
    assert stripped.column(DROP_REASON).to_pylist()[2] is None


def test_params_validated_and_registered():
    with pytest.raises(ValidationError):
        LanguageId(min_score=1.5)
    with pytest.raises(ValidationError):
        LanguageId(min_scor=0.5)
    with pytest.raises(ValidationError):
        LanguageId(top_k=0)
    assert LanguageId(languages="__label__en").params.languages == ["en"]
    reg = load_operators()
    assert reg["language_id"] is LanguageId and LanguageId.kind == "filter"
    assert LanguageId.resources.actor and {"language", "language_score"} <= LanguageId.adds


def test_empty_batch():
    out = LanguageId(top_k=2)(pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}))
    assert out.num_rows == 0 and {"language", "language_score", "language_topk"} <= set(out.column_names)
