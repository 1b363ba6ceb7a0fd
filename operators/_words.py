"""Vectorized word splitting that reproduces spaCy's rule-based tokenizer (what datatrove's
``split_into_words`` uses for most languages) over a whole batch at once.

spaCy tokenizes each whitespace-separated chunk by a loop: special cases (tokenizer exceptions),
then prefixes stripped from the left and suffixes from the right one at a time, then a URL /
token_match check, then infix splits. Running it per document costs ~1 MB/s. Here:

* chunks are cut from the whole batch with one regex (polars, Rust);
* chunks made only of letters (or only of digits) are single tokens unless they are a special
  case: that is ~80 % of chunks and they are never looked at again;
* the other chunks are deduplicated and run through the same loop *vectorized*: each step of the
  loop is a handful of regex operations over all pending chunks, using the prefix / suffix /
  infix patterns of the spaCy language itself (its lookbehinds and lookaheads turned into capture
  groups, which the Rust regex engine supports);
* scripts written without spaces (Chinese, Japanese, Thai, Lao, Khmer, Burmese, Tibetan), whose
  datatrove tokenizers are dictionary segmenters, are split into characters (an approximation).

The result is a flat token column plus the document index of each token, ready for polars /
numpy aggregations. A table of datatrove's language -> tokenizer assignment picks the spaCy
language from a document's ``language`` code, as datatrove's ``load_word_tokenizer`` does.
"""
from __future__ import annotations

import csv
import functools
import os
import re
import threading

import numpy as np
import polars as pl

from operators import _word_rules

# Python's str.isspace() chars (what spaCy splits on) that the Rust \s class lacks
_WS = r"[\s\x1c-\x1f]"
_CHUNK = r"[^\s\x1c-\x1f]+"
_SIMPLE = r"^(?:[\p{L}\p{M}]+|\p{Nd}+)$"
# scripts without spaces: datatrove segments them with dictionaries; we split per character
_NOSPACE = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}\p{Tibetan}"
_SEP = "\x00"
MAX_STEPS = 8  # prefix/suffix stripping rounds (spaCy loops until nothing changes)


# -- regex conversion: Python lookarounds -> Rust capture groups ----------------------------
def _split_lookarounds(pattern: str) -> tuple[str | None, str, str | None, bool]:
    """Split ``(?<=LB)CORE(?=LA)`` / ``(?!LA)`` into its parts (fixed-width lookbehind only)."""
    lb = la = None
    neg = False
    p = pattern
    if p.startswith("(?<="):
        end = _group_end(p, 0)
        lb, p = p[4:end], p[end + 1:]
    for opener, negative in (("(?=", False), ("(?!", True)):
        idx = _trailing_group_start(p, opener)
        if idx is not None:
            la, neg, p = p[idx + 3:-1], negative, p[:idx]
            break
    return lb, p, la, neg


def _group_end(p: str, start: int) -> int:
    depth, i, in_class = 0, start, False
    while i < len(p):
        c = p[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
        elif c == "[":
            in_class = True
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError(f"unbalanced pattern {p!r}")


def _trailing_group_start(p: str, opener: str) -> int | None:
    """Index of a top-level group starting with ``opener`` that ends the pattern."""
    i = 0
    while i < len(p):
        c = p[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            j = i + 1
            while j < len(p) and p[j] != "]":
                j += 2 if p[j] == "\\" else 1
            i = j + 1
            continue
        if c == "(":
            end = _group_end(p, i)
            if p.startswith(opener, i) and end == len(p) - 1:
                return i
            i = end + 1
            continue
        i += 1
    return None


@functools.lru_cache(maxsize=None)
def _rust_ok(p: str) -> bool:
    if p is None:
        return True
    if re.search(r"\(\?<?[=!]", p):
        return False
    try:
        pl.Series([""]).str.contains(p)
        return True
    except Exception:
        return False


class SpacyRules:
    """The tokenizer rules of one spaCy language, compiled for vectorized use.

    Everything here is read from the per-machine cache of ``operators._word_rules`` (built from
    ``spacy.blank(code)`` the first time a machine meets the language): no spaCy import and no
    regex compilation in the worker that uses them."""

    def __init__(self, code: str):
        data = rules_data(code)
        self.code = code
        self.special = {k: " ".join(v) for k, v in data["special"].items()}
        self.special_keys = pl.Series("k", list(self.special), pl.String)
        self.special_df = pl.DataFrame({"chunk": list(self.special), "tokens": list(self.special.values())},
                                       schema={"chunk": pl.String, "tokens": pl.String})
        # special keys that look "simple" must take the slow path
        self.simple_specials = data["simple_specials"]
        self.prefix_groups = [(pat, la, neg) for pat, la, neg in data["prefix_groups"]]
        self.suffix_groups = data["suffix_groups"]
        self.infix_re, self.infix_repl = data["infix_re"], data["infix_repl"]
        self.url_re = data["url_re"]
        self.post_re = data["post_re"]
        self.token_match_re = data["token_match_re"]
        spec = data["tokenizer"]
        self._py = _word_rules.PyTokenizer(spec, data["special"]) if spec is not None else None
        self._spacy_tok = None

    @property
    def token_match(self):
        """spaCy's token_match (a compiled Python regex's ``match``) or None."""
        if self._py is not None:
            return self._py.token_match
        return self._spacy().token_match

    def tokenize(self, chunk: str) -> list[str]:
        """``nlp.tokenizer(chunk)``'s token texts (whitespace tokens included)."""
        if self._py is not None:
            return self._py(chunk)
        tok = self._spacy()
        vocab = tok.vocab
        with vocab.memory_zone() if hasattr(vocab, "memory_zone") else _nullcontext():
            return [w.text for w in tok(chunk)]

    def _spacy(self):
        """spaCy's own tokenizer, only for a language whose rules PyTokenizer cannot run."""
        if self._spacy_tok is None:
            import spacy

            self._spacy_tok = spacy.blank(self.code).tokenizer
        return self._spacy_tok


def rules_data(code: str) -> dict:
    """Everything SpacyRules needs for ``code``, from the disk cache (built on a miss)."""
    return _word_rules.cached(f"rules-{code}", lambda: _build_rules(code), lambda d: _valid_rules(d, code))


def _build_rules(code: str) -> dict:
    import spacy

    nlp = spacy.blank(code)
    tok, d = nlp.tokenizer, nlp.Defaults
    special = {k: _orths(v) for k, v in (tok.rules or {}).items()}
    token_match_re = None
    tm = d.token_match
    if tm is not None and hasattr(tm, "__self__") and hasattr(tm.__self__, "pattern"):
        pat = tm.__self__.pattern
        if _rust_ok(pat):
            token_match_re = f"^(?:{pat})" if not pat.startswith("^") else pat
    # spaCy's compile_*_regex skip blank entries
    infix_re, infix_repl = _infix_regex([e for e in (d.infixes or []) if e.strip()])
    return {
        "code": code,
        "special": special,
        "simple_specials": [k for k in special if re.fullmatch(r"(?:[^\W\d_]|\d)+", k)],
        "prefix_groups": [list(g) for g in _prefix_groups([e for e in (d.prefixes or []) if e.strip()])],
        "suffix_groups": _suffix_groups([e for e in (d.suffixes or []) if e.strip()]),
        "infix_re": infix_re,
        "infix_repl": infix_repl,
        "url_re": _url_regex(d.url_match),
        "post_re": _special_sequences(tok),
        "token_match_re": token_match_re,
        "tokenizer": _word_rules.tokenizer_spec(tok, special),
    }


def _valid_rules(d: dict, code: str) -> bool:
    def opt_str(x):
        return x is None or isinstance(x, str)

    return (
        d.get("code") == code
        and isinstance(d.get("special"), dict)
        and all(isinstance(k, str) and isinstance(v, list) and all(isinstance(t, str) for t in v)
                for k, v in d["special"].items())
        and isinstance(d.get("simple_specials"), list) and all(isinstance(k, str) for k in d["simple_specials"])
        and isinstance(d.get("prefix_groups"), list)
        and all(isinstance(g, list) and len(g) == 3 and isinstance(g[0], str) and opt_str(g[1])
                and isinstance(g[2], bool) for g in d["prefix_groups"])
        and isinstance(d.get("suffix_groups"), list) and all(isinstance(g, str) for g in d["suffix_groups"])
        and all(opt_str(d.get(k, 0)) for k in ("infix_re", "infix_repl", "url_re", "post_re", "token_match_re"))
        and "tokenizer" in d and _word_rules.valid_spec(d["tokenizer"])
    )


def _special_sequences(t) -> str | None:
    """Special cases that contain affixes (":)", "''", "’s"): spaCy re-merges the pieces its affix
    rules produce with a matcher after tokenizing. Chunks whose tokens contain such a sequence
    are rare; we hand them to spaCy itself."""
    from spacy.tokenizer import Tokenizer

    bare = Tokenizer(t.vocab, rules={}, prefix_search=t.prefix_search, suffix_search=t.suffix_search,
                     infix_finditer=t.infix_finditer, token_match=t.token_match, url_match=t.url_match)
    seqs = set()
    for key in (t.rules or {}):
        pieces = [w.text for w in bare(key) if not w.is_space]
        if len(pieces) > 1:
            seqs.add(_SEP.join(re.escape(p) for p in pieces))
    if not seqs:
        return None
    return "(?:^|" + _SEP + ")(?:" + "|".join(sorted(seqs, key=len, reverse=True)) + ")(?:" + _SEP + "|$)"


def _orths(tokens) -> list[str]:
    from spacy.symbols import ORTH

    out = []
    for t in tokens:
        out.append(t.get(ORTH, t.get("ORTH", "")))
    return out


def _prefix_groups(entries: list[str]) -> list[tuple[str, str | None, bool]]:
    """Consecutive plain entries become one alternation (same leftmost-first order)."""
    groups: list[tuple[str, str | None, bool]] = []
    plain: list[str] = []

    def flush():
        if plain:
            groups.append(("^(?:" + "|".join(plain) + ")", None, False))
            plain.clear()

    for e in entries:
        lb, core, la, neg = _split_lookarounds(e)
        if lb is None and la is None and _rust_ok(core):
            plain.append(core)
        elif lb is None and _rust_ok(core) and _rust_ok(la):
            flush()
            groups.append(("^(?:" + core + ")", la, neg))
        # entries that cannot be converted are skipped (rare, language-specific)
    flush()
    return groups


def _suffix_groups(entries: list[str]) -> list[str]:
    """Regexes whose capture group 1 is the suffix; the longest (earliest) match wins."""
    plain: list[str] = []
    out: list[str] = []
    for e in entries:
        lb, core, la, neg = _split_lookarounds(e)
        if la is not None or not _rust_ok(core):
            continue
        if lb is None:
            plain.append(core)
        elif _rust_ok(lb):
            out.append(f"(?:{lb})({core})$")
    if plain:
        out.insert(0, "(" + "|".join(f"(?:{c})" for c in plain) + ")$")
    return out


def _infix_regex(entries: list[str]) -> tuple[str | None, str | None]:
    parts, lbs, cores, las = [], [], [], []
    for i, e in enumerate(entries):
        lb, core, la, neg = _split_lookarounds(e)
        if neg:
            la = None  # a negative lookahead cannot be emulated: dropped (rare)
        if not (_rust_ok(core) and _rust_ok(lb) and _rust_ok(la)):
            continue
        seg = ""
        if lb is not None:
            seg += f"(?P<lb{i}>{lb})"
            lbs.append(f"${{lb{i}}}")
        seg += f"(?P<c{i}>{core})"
        cores.append(f"${{c{i}}}")
        if la is not None:
            seg += f"(?P<la{i}>{la})"
            las.append(f"${{la{i}}}")
        parts.append(seg)
    if not parts:
        return None, None
    return "|".join(parts), "".join(lbs) + _SEP + "".join(cores) + _SEP + "".join(las)


def _url_regex(url_match) -> str | None:
    if url_match is None or not hasattr(url_match, "__self__"):
        return None
    pat = url_match.__self__.pattern
    pat = pat.replace("(?u)", "")
    # drop the private-IP exclusion lookaheads (Rust has no lookaround)
    pat = re.sub(r"\(\?!(?:[^()]|\((?:[^()]|\([^()]*\))*\))*\)", "", pat)
    return pat if _rust_ok(pat) else None


# -- language -> tokenizer assignment (datatrove's table) -----------------------------------
@functools.lru_cache(maxsize=1)
def _assignments() -> dict[str, tuple[str, str]]:
    """language code (ISO 639-1 / 639-3, optionally _Script) -> (tokenizer class, spaCy code)."""
    out: dict[str, tuple[str, str]] = {}
    try:
        from datatrove.utils._import_utils import ASSETS_PATH
    except Exception:  # datatrove absent: spaCy's own codes only
        return out
    with open(os.path.join(ASSETS_PATH, "tokenizer_assignment.csv")) as f:
        for row in csv.DictReader(f):
            cls, code = row["type"], row["tok_code"]
            if not cls:
                continue
            c3s, c1s = f"{row['code_3']}_{row['script']}", f"{row['code_1']}_{row['script']}"
            if c3s not in out:
                out[c3s] = (cls, code)
                if row["default_script"]:
                    out[row["code_3"]] = (cls, code)
            if row["code_1"] and row["default_code_1"] and c1s not in out:
                out[c1s] = (cls, code)
                if row["default_script"]:
                    out[row["code_1"]] = (cls, code)
    return out


_CHAR_CLASSES = ("ThaiTokenizer", "LaoTokenizer", "KhmerTokenizer", "BurmeseTokenizer", "TibetanTokenizer")
_NEEDS_EXTRA = ("zh", "ja", "vi", "ko", "th")  # spaCy languages that need jieba / sudachi / pyvi / ...


@functools.lru_cache(maxsize=None)
def rules_for(language: str | None) -> tuple[str, bool]:
    """(spaCy language code, split no-space scripts into characters) for a language code, from
    datatrove's assignment table: its spaCy tokenizers are reproduced exactly; its dictionary
    segmenters (jieba, sudachi, Thai, Khmer, ...) by characters; Stanza / IndicNLP languages and
    unknown codes by spaCy's multi-language ("xx") rules."""
    lang = (language or "en").replace("-", "_")
    base = lang.split("_")[0]
    cls, code = _assignments().get(lang) or _assignments().get(base) or ("", "")
    if not cls:  # not in datatrove's table
        cls, code = "SpaCyTokenizer", base
    chars = cls in _CHAR_CLASSES or (cls == "SpaCyTokenizer" and code in ("zh", "ja"))
    if cls != "SpaCyTokenizer" or code in _NEEDS_EXTRA or not _spacy_has(code):
        code = "xx"
    return code, chars


@functools.lru_cache(maxsize=None)
def _spacy_has(code: str) -> bool:
    """spaCy has rules for ``code`` (remembered on disk: asking spaCy means importing it)."""
    def ask() -> dict:
        try:
            import spacy

            spacy.util.get_lang_class(code)
            return {"available": True}
        except Exception:
            return {"available": False}

    return _word_rules.cached(f"lang-{code}", ask, lambda d: isinstance(d.get("available"), bool))["available"]


@functools.lru_cache(maxsize=1)
def sentencizer_punct_chars() -> list[str]:
    """spaCy's ``Sentencizer.default_punct_chars`` (from the cache: no spaCy import)."""
    def build() -> dict:
        from spacy.pipeline import Sentencizer

        return {"sentencizer_punct": list(Sentencizer.default_punct_chars)}

    return _word_rules.cached("common", build, lambda d: isinstance(d.get("sentencizer_punct"), list)
                              and all(isinstance(c, str) for c in d["sentencizer_punct"]))["sentencizer_punct"]


_rules_lock = threading.Lock()
_RULES: dict[str, SpacyRules] = {}


def get_rules(code: str) -> SpacyRules:
    with _rules_lock:
        if code not in _RULES:
            _RULES[code] = SpacyRules(code)
        return _RULES[code]


def forget_rules() -> None:
    """Drop this process's rules (tests: the next use reads them from the disk cache again)."""
    with _rules_lock:
        _RULES.clear()
    _spacy_has.cache_clear()
    sentencizer_punct_chars.cache_clear()


def warm(codes: list[str]) -> None:
    """Build the disk cache for these languages (``python -m operators._words warm en fr ...``)."""
    for lang in codes:
        code, _ = rules_for(lang)
        get_rules(code)
    sentencizer_punct_chars()


# -- the vectorized tokenizer -----------------------------------------------------------------
PY_TOKEN_MATCH = 20000


def _token_match(r: SpacyRules, chunks: pl.Series) -> np.ndarray:
    """spaCy's token_match per chunk. Some are huge (French: 1.4 MB of exceptions); polars keeps
    few compiled regexes, so with several languages per batch it would compile it again every
    batch (~0.2 s): below PY_TOKEN_MATCH chunks spaCy's own compiled pattern is cheaper."""
    tm = r.token_match
    if len(chunks) < PY_TOKEN_MATCH and tm is not None:
        return np.fromiter((tm(c) is not None for c in chunks.to_list()), bool, len(chunks))
    return chunks.str.contains(r.token_match_re).fill_null(False).to_numpy()


def _tokenize_complex(chunks: pl.Series, r: SpacyRules) -> pl.Series:
    """spaCy's affix loop over unique non-trivial chunks; returns tokens joined by _SEP."""
    s = chunks.clone()
    n = len(s)
    pre = pl.Series([""] * n)
    suf = pl.Series([""] * n)
    done = np.zeros(n, dtype=bool)
    plain = np.zeros(n, dtype=bool)  # finished with a remainder that is one plain word
    keys = r.special_keys.implode()
    for _ in range(MAX_STEPS):
        active = np.flatnonzero(~done)
        if len(active) < 64:
            break  # a few stragglers (long punctuation runs): spaCy finishes them below
        cur = s.gather(active)
        is_special = cur.is_in(keys).to_numpy()
        if r.token_match_re:
            is_special |= _token_match(r, cur)
        cur_len = cur.str.len_chars().to_numpy()
        # prefix length (first group that matches at position 0)
        plen = np.zeros(len(cur), dtype=np.int64)
        for pat, la, neg in r.prefix_groups:
            m = cur.str.extract("(" + pat + ")", 1).str.len_chars().fill_null(0).to_numpy()
            if la is not None:
                follow = cur.str.contains("(?:" + pat + ")(?:" + la + ")").fill_null(False).to_numpy()
                m = np.where(follow != neg, m, 0)
            plen = np.where(plen > 0, plen, m)
        rest = cur.str.slice(pl.Series(plen)) if plen.any() else cur
        slen = np.zeros(len(cur), dtype=np.int64)
        for pat in r.suffix_groups:
            m = rest.str.extract(pat, 1).str.len_chars().fill_null(0).to_numpy()
            slen = np.maximum(slen, m)
        # the branches of spaCy's loop
        minus_pre = cur.str.slice(pl.Series(plen))
        minus_suf = cur.str.slice(0, pl.Series(np.maximum(cur_len - slen, 0)))
        pre_special = (plen > 0) & (minus_pre.str.len_chars().to_numpy() > 0) & minus_pre.is_in(keys).to_numpy()
        suf_special = (~pre_special) & (slen > 0) & (cur_len - slen > 0) & minus_suf.is_in(keys).to_numpy()
        both = (~pre_special) & (~suf_special) & (plen > 0) & (slen > 0) & (plen + slen <= cur_len)
        only_pre = (~pre_special) & (~suf_special) & (~both) & (plen > 0)
        only_suf = (~pre_special) & (~suf_special) & (~both) & (~only_pre) & (slen > 0)
        take_pre = np.where(is_special, False, pre_special | both | only_pre)
        take_suf = np.where(is_special, False, suf_special | both | only_suf)
        p_len = np.where(take_pre, plen, 0)
        s_len = np.where(take_suf, slen, 0)
        new_len = cur_len - p_len - s_len
        prefix_tok = cur.str.slice(0, pl.Series(p_len))
        suffix_tok = cur.str.slice(pl.Series(cur_len - s_len))
        new_cur = cur.str.slice(pl.Series(p_len), pl.Series(np.maximum(new_len, 0)))
        old_pre, old_suf = pre.gather(active), suf.gather(active)
        add_pre = pl.Series(np.where(take_pre, 1, 0).astype(bool))
        add_suf = pl.Series(np.where(take_suf, 1, 0).astype(bool))
        pre_new = pl.select(pl.when(add_pre).then(old_pre + prefix_tok + _SEP).otherwise(old_pre)).to_series()
        suf_new = pl.select(pl.when(add_suf).then(pl.lit(_SEP) + suffix_tok + old_suf).otherwise(old_suf)).to_series()
        pre = pre.scatter(active, pre_new)
        suf = suf.scatter(active, suf_new)
        s = s.scatter(active, new_cur)
        stop = is_special | pre_special | suf_special | ((p_len + s_len) == 0) | (new_len <= 0)
        # a remainder of letters only (or digits only) that is not a special case has no affix
        # left: the same assumption that lets such chunks skip this function altogether
        simple = ~is_special & new_cur.str.contains(_SIMPLE).to_numpy() & ~new_cur.is_in(keys).to_numpy()
        plain[active[simple]] = True
        done[active[stop | simple]] = True
    # what is left in the middle: special case, URL / token_match, or infix split
    rest_idx = np.flatnonzero(~plain)
    mid = s.gather(rest_idx)
    m = len(mid)
    frame = pl.DataFrame({"chunk": mid, "i": np.arange(m)})
    joined = frame.join(r.special_df, on="chunk", how="left").sort("i")
    spec_tokens = joined["tokens"]
    is_url = pl.Series([False] * m)
    if r.url_re:
        is_url = mid.str.contains(r.url_re).fill_null(False)
    if r.token_match_re:
        is_url = is_url | pl.Series(_token_match(r, mid))
    if r.infix_re:
        split = mid.str.replace_all(r.infix_re, r.infix_repl).str.replace_all(r.infix_re, r.infix_repl)
        # spaCy skips an infix that starts the string: glue a leading split back
        split = split.str.replace("^" + _SEP + "([^" + _SEP + "]*)" + _SEP, "${1}" + _SEP)
        split = split.str.replace_all(_SEP + "+", _SEP).str.strip_chars(_SEP)
    else:
        split = mid
    middle = pl.select(
        pl.when(spec_tokens.is_not_null()).then(spec_tokens.str.replace_all(" ", _SEP))
        .when(is_url).then(mid)
        .otherwise(split)
    ).to_series()
    out = pl.select(pre + s.scatter(rest_idx, middle) + suf).to_series()
    out = out.str.replace_all(_SEP + "+", _SEP).str.strip_chars(_SEP)
    # rare leftovers are handed to spaCy itself: chunks still being stripped after MAX_STEPS
    # rounds (long runs of punctuation) and those holding a special case made of affixes
    slow = ~done
    if r.post_re:
        slow |= out.str.contains(r.post_re).fill_null(False).to_numpy()
    idx = np.flatnonzero(slow)
    if len(idx):
        out = out.scatter(idx, pl.Series(_spacy_tokens(r, chunks.gather(idx).to_list()), dtype=pl.String))
    return out


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


# -- chunks tokenized recently (per tokenizer), reused by later batches and filters ------------
CHUNK_MEMORY = 400_000  # distinct non-trivial chunks remembered per tokenizer
CHUNK_MEMORY_TOTAL = 1_000_000  # over all tokenizers (~40 MB); past it the other tokenizers forget
_chunk_lock = threading.Lock()
_CHUNKS: dict[tuple[str, bool], pl.DataFrame] = {}


def clear_chunk_memory() -> None:
    with _chunk_lock:
        _CHUNKS.clear()


def _remembered(key: tuple[str, bool], uniq: pl.Series) -> pl.DataFrame:
    """Remembered tokens of those of ``uniq`` seen before (columns chunk, tokens)."""
    with _chunk_lock:
        mem = _CHUNKS.get(key)
    if mem is None:
        return pl.DataFrame(schema={"chunk": pl.String, "tokens": pl.String})
    return mem.join(pl.DataFrame({"chunk": uniq}), on="chunk", how="semi")


def _remember(key: tuple[str, bool], new: pl.DataFrame) -> None:
    with _chunk_lock:
        mem = _CHUNKS.get(key)
        mem = new if mem is None else pl.concat([mem, new])
        if len(mem) > CHUNK_MEMORY:
            mem = mem.tail(CHUNK_MEMORY // 2)  # the newest half
        _CHUNKS[key] = mem
        if sum(len(m) for m in _CHUNKS.values()) > CHUNK_MEMORY_TOTAL:
            for other in [k for k in _CHUNKS if k != key]:
                del _CHUNKS[other]


SMALL = 400  # below this many distinct non-trivial chunks, spaCy itself is cheaper per group (measured)


def _spacy_tokens(r: "SpacyRules", chunks: list[str]) -> list[str]:
    """spaCy's tokenization of each chunk (PyTokenizer: the same algorithm, no spaCy)."""
    return [_SEP.join(t for t in r.tokenize(c) if not t.isspace()) for c in chunks]


def split_words(texts: pl.Series, languages: pl.Series | None = None) -> tuple[np.ndarray, pl.Series]:
    """Tokenize every text like datatrove's ``split_into_words(text, language)``.

    Returns ``(doc_index, tokens)``: a flat String series of tokens (whitespace-only tokens
    removed, as datatrove's strip_strings does) and the row each token came from (int64,
    non-decreasing). ``languages`` (same length, may hold nulls) selects the tokenizer per row;
    None means English for all rows.
    """
    n = len(texts)
    texts = texts.fill_null("")
    if languages is None:
        langs = pl.Series(["en"] * n, dtype=pl.String)
    else:
        langs = languages.cast(pl.String).fill_null("en")
    # one tokenizer per distinct (spaCy code, char-split) among the languages present
    uniq_langs = langs.unique(maintain_order=True).to_list()
    keys = [rules_for(lang) for lang in uniq_langs]
    key_ids = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    lang_to_key = pl.DataFrame({"l": uniq_langs, "k": [key_ids[k] for k in keys]},
                               schema={"l": pl.String, "k": pl.Int32})
    row_key = pl.DataFrame({"l": langs}).join(lang_to_key, on="l", how="left", maintain_order="left")["k"].to_numpy()

    chunk_lists = texts.str.extract_all(_CHUNK)
    counts = chunk_lists.list.len().fill_null(0).to_numpy()
    chunks = chunk_lists.explode().drop_nulls().cast(pl.String)
    doc = np.repeat(np.arange(n, dtype=np.int64), counts)
    if not len(chunks):
        return doc, chunks
    chunk_key = row_key[doc]
    simple = chunks.str.contains(_SIMPLE).to_numpy()
    # letter-only special cases (en "cannot") of any language present take the full path
    specials = sorted({k for (code, _), _kid in key_ids.items() for k in get_rules(code).simple_specials})
    if specials:
        simple &= ~chunks.is_in(pl.Series(specials, dtype=pl.String).implode()).to_numpy()
    char_kids = [kid for (code, chars), kid in key_ids.items() if chars]
    if char_kids:
        simple &= ~(np.isin(chunk_key, char_kids) & chunks.str.contains(f"[{_NOSPACE}]").to_numpy())
    complex_idx = np.flatnonzero(~simple)
    if not len(complex_idx):
        return doc, chunks
    cx = pl.DataFrame({"k": chunk_key[complex_idx].astype(np.int32), "chunk": chunks.gather(complex_idx)})
    # every tokenizer's distinct chunks in one pass, and the mapping's frames built without the
    # expression engine: a filter + unique and a with_columns per tokenizer cost ~0.8 ms, and a
    # batch of the multilingual scale corpus meets ~36 of them
    groups = {key[0]: g["chunk"] for key, g in cx.unique().partition_by("k", as_dict=True).items()}
    maps = []
    for (code, chars), kid in key_ids.items():
        uniq = groups.get(kid)
        if uniq is None:
            continue
        known = _remembered((code, chars), uniq)
        todo = uniq.filter(~uniq.is_in(known["chunk"].implode())) if len(known) else uniq
        if len(todo):
            r = get_rules(code)
            if len(todo) < SMALL:
                toks = pl.Series(_spacy_tokens(r, todo.to_list()), dtype=pl.String)
            else:
                toks = _tokenize_complex(todo, r)
            if chars:
                # one token per character of a no-space script, the rest stays whole
                toks = toks.str.replace_all(f"([{_NOSPACE}])", _SEP + "${1}" + _SEP)
                toks = toks.str.replace_all(_SEP + "+", _SEP).str.strip_chars(_SEP)
            new = pl.DataFrame({"chunk": todo, "tokens": toks})
            _remember((code, chars), new)
            known = pl.concat([known, new]) if len(known) else new
        maps.append(pl.DataFrame({"k": np.full(len(known), kid, np.int32), "chunk": known["chunk"],
                                  "tokens": known["tokens"]}))
    mapping = pl.concat(maps)
    mapped = cx.join(mapping, on=["k", "chunk"], how="left", maintain_order="left")["tokens"]
    replaced = chunks.clone().scatter(complex_idx, mapped)
    lists = replaced.str.split(_SEP)
    doc = np.repeat(doc, lists.list.len().to_numpy())
    tokens = lists.explode()
    keep = (tokens.str.len_bytes() > 0).to_numpy()
    if not keep.all():
        doc, tokens = doc[keep], tokens.filter(pl.Series(keep))
    return doc, tokens


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] != ["warm"]:
        sys.exit("usage: python -m operators._words warm LANG [LANG ...]")
    warm(sys.argv[2:] or ["en"])
    print(f"word rules cached under {_word_rules.cache_dir()}")
