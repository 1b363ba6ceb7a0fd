"""The word splitter's per-machine rules cache (operators/_word_rules.py): built on first use in a
fresh cache folder, read back (not rebuilt) by the next use with the same tokens, a corrupt file
rebuilt, and PyTokenizer (spaCy's tokenizer algorithm over the cached rules) equal to spaCy."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import polars as pl
import pytest

from operators import _word_rules
from operators import _words as w

ROOT = pathlib.Path(__file__).resolve().parents[2]

# one sentence per language, with the affixes, special cases and URLs the rules are about
SAMPLE = {
    "en": "Don't stop (it's 3:00) e.g. U.S. http://x.org/a?b=1 -- well-known :) o'clock \"quoted\" ...",
    "de": "Geht’s z.B. so? Das ist’s (usw.) am 3.10. um 10:30 Uhr: «gut» — ja/nein.",
    "es": "¿Qué tal? ¡Bien! (EE.UU.) Sr. López llegó a las 3:00 p.m., ¿verdad?",
    "ru": "Т.е. «да» — это т.д. (и т.п.) в 10:30, ул. Ленина, д. 5.",
    "ar": "قال: «مرحبا» (تقريبًا) في الساعة 3:00، أليس كذلك؟",
}


def _tokens(texts: list[str], langs: list[str]) -> list[list[str]]:
    doc, toks = w.split_words(pl.Series(texts), pl.Series(langs))
    out = [[] for _ in texts]
    for d, t in zip(doc.tolist(), toks.to_list()):
        out[d].append(t)
    return out


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRISTMILL_WORDS_CACHE", str(tmp_path / "words"))
    w.forget_rules()
    w.clear_chunk_memory()
    yield tmp_path / "words"
    w.forget_rules()  # later tests use the default cache again
    w.clear_chunk_memory()


def _sample():
    texts = [t * k for t in SAMPLE.values() for k in (1, 3)]
    langs = [lang for lang in SAMPLE for _ in (1, 3)]
    return texts, langs


def test_first_use_builds_second_reads_same_tokens(fresh_cache):
    texts, langs = _sample()
    built0 = _word_rules.STATS["built"]
    first = _tokens(texts, langs)
    files = sorted(p.name for p in fresh_cache.iterdir())
    codes = {w.rules_for(lang)[0] for lang in SAMPLE}  # ar: spaCy's "xx" rules, as in datatrove
    assert {f"rules-{code}" for code in codes} <= {n.split("-spacy")[0] for n in files}
    assert _word_rules.STATS["built"] - built0 >= len(codes)
    assert not [n for n in files if n.endswith(".tmp")]  # written by rename, nothing left over

    w.forget_rules()
    w.clear_chunk_memory()
    built1, read1 = _word_rules.STATS["built"], _word_rules.STATS["read"]
    second = _tokens(texts, langs)
    assert _word_rules.STATS["built"] == built1  # nothing rebuilt: every language read back
    assert _word_rules.STATS["read"] - read1 >= len(codes)
    assert second == first
    # and they are spaCy's tokens
    import spacy

    for text, lang, got in zip(texts, langs, first):
        nlp = spacy.blank(w.rules_for(lang)[0])
        assert got == [t.text for t in nlp(text) if not t.is_space], lang


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "wrong_field"])
def test_corrupt_cache_file_is_rebuilt(fresh_cache, damage):
    texts, langs = [SAMPLE["en"]], ["en"]
    want = _tokens(texts, langs)
    (path,) = fresh_cache.glob("rules-en-*.json")
    raw = path.read_bytes()
    if damage == "flip":  # one changed byte in the body: the checksum catches it
        i = raw.index(b"n't")
        path.write_bytes(raw[:i] + b"N" + raw[i + 1:])
    elif damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00\xff not json")
    else:  # intact checksum, but a field of the wrong type
        import hashlib
        import json

        data = json.loads(raw.partition(b"\n")[2])
        data["suffix_groups"] = 5
        body = json.dumps(data).encode()
        path.write_bytes(json.dumps({"format": _word_rules.FORMAT, "sha256": hashlib.sha256(body).hexdigest()}).encode()
                         + b"\n" + body)
    w.forget_rules()
    w.clear_chunk_memory()
    rejected, built = _word_rules.STATS["rejected"], _word_rules.STATS["built"]
    assert _tokens(texts, langs) == want
    assert _word_rules.STATS["rejected"] == rejected + 1 and _word_rules.STATS["built"] == built + 1
    # rewritten whole: the next process reads it
    assert _word_rules._read(path, lambda d: w._valid_rules(d, "en")) is not None


def test_unwritable_cache_folder_still_tokenizes(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("GRISTMILL_WORDS_CACHE", str(blocker / "words"))
    w.forget_rules()
    try:
        texts, langs = [SAMPLE["de"]], ["de"]
        assert _tokens(texts, langs)[0][:3] == ["Geht", "’s", "z.B."]
    finally:
        w.forget_rules()


TRICKY = ("Hello, world! -5 1-2 well-known e.g. U.S. don't it's (the) \"quote\" 10km $5 3:00 a:b and/or "
          "http://x.com/a?b=1 end.Next ... wait... University): b'' ____________________ geht’s z.B. usw. "
          "C++ :) (:)) 'tis o'clock 1,000.50 ¿Qué? «Bonjour» l'homme ...,; peut-être aujourd'hui "
          "Saint-Étienne grand'mère c'est-à-dire États-Unis")


@pytest.mark.parametrize("lang", ["en", "fr", "nl"])
def test_py_tokenizer_equals_spacy(lang):
    """Every special case of the language, alone and wrapped in affixes, and the tricky chunks."""
    import spacy

    tok = spacy.blank(lang).tokenizer
    rules = w.get_rules(lang)
    chunks = TRICKY.split()
    for key in tok.rules:
        if key and not any(c.isspace() for c in key):
            chunks += [key, f"({key})", f"{key}.", f"\"{key}\",", f"{key}:{key}"]
    with tok.vocab.memory_zone():
        want = [[t.text for t in tok(c)] for c in chunks]
    got = [rules.tokenize(c) for c in chunks]
    diff = [(c, a, b) for c, a, b in zip(chunks, want, got) if a != b]
    assert not diff, diff[:5]


def test_worker_with_warm_cache_never_imports_spacy(tmp_path):
    """What a worker pays: with the cache warm, the filters run without importing spaCy (whose
    import pulls in torch)."""
    env = {**os.environ, "GRISTMILL_WORDS_CACHE": str(tmp_path / "words")}
    code = ("import sys; import pyarrow as pa\n"
            "from operators.quality_rules import C4Quality, GopherRepetition\n"
            "t = pa.table({'id': ['a', 'b', 'c'], 'text': [%r, %r, %r], 'language': ['en', 'de', 'ru']})\n"
            "C4Quality()(t); GopherRepetition()(t)\n"
            "print('spacy' in sys.modules, 'torch' in sys.modules)\n") % (
                SAMPLE["en"] * 5, SAMPLE["de"] * 5, SAMPLE["ru"] * 5)
    first = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert first.stdout.split()[0] == "True"  # cold: spaCy built the rules
    second = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert second.stdout.split() == ["False", "False"], second.stdout + second.stderr
