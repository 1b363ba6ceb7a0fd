"""Heuristic quality filters with datatrove 0.10.1's rules and published default thresholds:
``gopher_quality``, ``gopher_repetition``, ``c4_quality``, ``fineweb_quality``.

Every filter computes its scores for the whole batch at once (polars / numpy over a flat token
column from ``operators._words``, which reproduces datatrove's spaCy word tokenizer) and drops a
row with the first rule it fails, named as datatrove names it, prefixed by the operator
(``gopher_quality:gopher_short_doc``, ``gopher_repetition:top_2_gram``, ``c4_quality:curly_bracket``,
``fineweb_quality:line_punct_ratio``). The word tokenizer follows each row's ``language`` column
when present (as datatrove's filters do with their ``language`` argument), else
``default_language``.

Score columns (float32 unless noted; computed for every row, dropped or not):

* gopher_quality: ``quality_gopher_words`` (int, words with a non-punctuation char),
  ``quality_gopher_avg_word_len``, ``quality_gopher_hash_ratio`` ("#" per word),
  ``quality_gopher_ellipsis_ratio`` ("..."/"…" per word), ``quality_gopher_bullet_lines``,
  ``quality_gopher_ellipsis_lines`` (fractions of lines), ``quality_gopher_alpha_ratio`` (words
  with a letter / words), ``quality_gopher_stop_words`` (int, distinct stop words).
* gopher_repetition: ``quality_rep_dup_para_frac``, ``quality_rep_dup_para_char_frac``,
  ``quality_rep_dup_line_frac``, ``quality_rep_dup_line_char_frac``, ``quality_rep_top_{2,3,4}gram``
  (chars of the most frequent n-gram x count / chars), ``quality_rep_dup_{5..10}gram`` (chars in
  duplicated n-grams / chars).
* c4_quality: ``quality_c4_kept_lines`` (int), ``quality_c4_sentences`` (int; exact below
  ``min_num_sentences``, else a lower bound). Like datatrove, the kept lines replace ``text`` of
  the rows it keeps (``rewrite_text``).
* fineweb_quality: ``quality_fineweb_line_punct_ratio``, ``quality_fineweb_short_line_ratio``,
  ``quality_fineweb_char_dup_ratio``, ``quality_fineweb_list_ratio``.

Known approximations (measured against datatrove in tests/operators/test_quality_rules.py): the
duplicated 5..10-gram scan is datatrove's greedy left-to-right scan evaluated on runs of repeated
n-grams, and scripts without spaces are split into characters instead of dictionary words.
"""
from __future__ import annotations

import threading
from typing import ClassVar

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import Field

from operators.base import Operator, Params, Resources, mark_dropped, register, set_column

# datatrove.utils.text.PUNCTUATION_SET / TERMINAL_PUNCTUATION, copied so the operators do not
# need datatrove at run time (tests check they are equal to datatrove's)
PUNCTUATION = "!/—”:％１〈&(、━\\【#%「」，】；+^]~“《„';’{|∶´[=-`*．（–？！：$～«〉,><》)?）。…@_.\"}►»" + "".join(
    map(chr, (x for a, b in ((0, 9), (11, 13), (13, 32), (127, 160)) for x in range(a, b)))
)
STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
POLICY_SUBSTRINGS = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
_MIX = np.uint64(0x100000001B3)  # n-gram hash combination
_GOLD = np.uint64(0x9E3779B97F4A7C15)
_LINEBREAKS = "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # str.splitlines() splits on these and \n


def _terminal_punctuation() -> list[str]:
    try:
        from datatrove.utils.text import TERMINAL_PUNCTUATION

        return sorted(TERMINAL_PUNCTUATION)
    except Exception:  # pragma: no cover - datatrove is a dependency; keep a usable default
        return sorted(set(".?!。！？؟۔।॥።…"))


def _class(chars) -> str:
    return "".join("\\x{%x}" % ord(c) for c in sorted(set(chars)))


_PUNCT_CLASS = _class(set(PUNCTUATION) | set(_terminal_punctuation()))
_TERM_CLASS = _class(_terminal_punctuation())


class _LangParams(Params):
    default_language: str = Field("en", description="language of rows without a `language` value (word tokenizer)")
    use_language_column: bool = Field(True, description="pick the word tokenizer from the `language` column when present")


# -- shared word statistics ------------------------------------------------------------------
# The four filters run one after another on the same rows (fewer after each drop). Tokenizing is
# most of their cost, so the per-token features of the last batches are kept in this process,
# keyed per row by a hash of (text, language): a later filter that sees a subset of those rows
# (or the same rows in a new Arrow table) gathers their tokens instead of tokenizing again.
_TOKEN_SEED = 0x5EED
_cache_lock = threading.Lock()
_CACHE: list[dict] = []
CACHE_ENTRIES = 3  # batches remembered per process
CACHE_MAX_TOKENS = 6_000_000  # a bigger batch is not remembered


def clear_caches() -> None:
    """Forget the remembered tokens (benchmarks call this before timing)."""
    from operators._words import clear_chunk_memory

    with _cache_lock:
        _CACHE.clear()
    clear_chunk_memory()


def _languages(batch: pa.Table, p: _LangParams) -> pl.Series:
    if p.use_language_column and "language" in batch.column_names:
        langs = pl.from_arrow(batch.column("language"))
        if isinstance(langs, pl.DataFrame):
            langs = langs.to_series()
        return langs.cast(pl.String).fill_null(p.default_language)
    return pl.Series([p.default_language] * batch.num_rows, dtype=pl.String)


def _text(batch: pa.Table) -> pl.Series:
    s = pl.from_arrow(batch.column("text"))
    if isinstance(s, pl.DataFrame):
        s = s.to_series()
    return s.cast(pl.String).fill_null("")


def _row_keys(texts: pl.Series, langs: pl.Series) -> np.ndarray:
    """64-bit key of (text, language) per row; equal rows share tokens."""
    th = texts.hash(seed=_TOKEN_SEED).to_numpy()
    lh = langs.hash(seed=_TOKEN_SEED + 1).to_numpy()
    with np.errstate(over="ignore"):
        return th ^ (lh * np.uint64(0x9E3779B97F4A7C15) + np.uint64(0x632BE59BD9B4E019))


def _ranges(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + l) for every (s, l) (vectorized)."""
    lens = lens.astype(np.int64)
    total = int(lens.sum())
    if not total:
        return np.zeros(0, np.int64)
    out_start = np.cumsum(lens) - lens
    return np.repeat(starts.astype(np.int64) - out_start, lens) + np.arange(total, dtype=np.int64)


_TOKEN_FIELDS = ("h", "len", "non_symbol", "has_alpha")


def _tokenize_rows(texts: pl.Series, langs: pl.Series) -> dict:
    from operators._words import split_words

    n = len(texts)
    doc, tokens = split_words(texts, langs)
    return {
        "h": tokens.hash(seed=_TOKEN_SEED).to_numpy(),
        "len": tokens.str.len_chars().to_numpy().astype(np.int64),
        "non_symbol": ~tokens.str.contains(f"^[{_PUNCT_CLASS}]+$").to_numpy(),
        "has_alpha": tokens.str.contains(r"\p{L}").to_numpy(),
        "count": np.bincount(doc, minlength=n).astype(np.int64),
    }


def _finish(stats: dict, n: int) -> dict:
    counts = stats["count"]
    stats["n"] = n
    stats["offsets"] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    stats["doc"] = np.repeat(np.arange(n, dtype=np.int64), counts)
    stats["n_words"] = counts
    return stats


def word_stats(batch: pa.Table, p: _LangParams) -> dict:
    """Per-token features of every row: ``h`` (u64 hash of the word), ``len`` (chars),
    ``non_symbol``, ``has_alpha``, ``doc`` (row of each token), ``n_words``, ``offsets``."""
    texts = _text(batch)
    langs = _languages(batch, p)
    n = len(texts)
    keys = _row_keys(texts, langs)
    with _cache_lock:
        entries = list(_CACHE)
    best, best_found, best_src = None, None, None
    for e in reversed(entries):
        sk = e["sorted_keys"]
        if not len(sk):
            continue
        i = np.minimum(np.searchsorted(sk, keys), len(sk) - 1)
        found = sk[i] == keys
        if best is None or found.sum() > best_found.sum():
            best, best_found, best_src = e, found, e["order"][i]
        if found.all():
            break
    if best is not None and best_found.any():
        missing = np.flatnonzero(~best_found)
        fresh = _tokenize_rows(texts.gather(missing), langs.gather(missing)) if len(missing) else None
        counts = np.zeros(n, np.int64)
        starts = np.zeros(n, np.int64)
        hit = np.flatnonzero(best_found)
        src = best_src[hit]
        counts[hit] = best["count"][src]
        starts[hit] = best["offsets"][src]
        arrays = {f: best[f] for f in _TOKEN_FIELDS}
        if fresh is not None:
            base = len(best["h"])
            counts[missing] = fresh["count"]
            starts[missing] = base + np.concatenate([[0], np.cumsum(fresh["count"])[:-1]])
            arrays = {f: np.concatenate([best[f], fresh[f]]) for f in _TOKEN_FIELDS}
        idx = _ranges(starts, counts)
        stats = {f: arrays[f][idx] for f in _TOKEN_FIELDS}
        stats["count"] = counts
    else:
        stats = _tokenize_rows(texts, langs)
    stats = _finish(stats, n)
    if len(stats["h"]) <= CACHE_MAX_TOKENS and (best is None or not best_found.all()):
        order = np.argsort(keys, kind="stable")
        entry = dict(stats, sorted_keys=keys[order], order=order)
        with _cache_lock:
            _CACHE.append(entry)
            del _CACHE[:-CACHE_ENTRIES]
    return stats


def _ratio(a, b) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def _f32(x) -> pa.Array:
    return pa.array(np.asarray(x, dtype=np.float32), pa.float32(), from_pandas=True)


def _i32(x) -> pa.Array:
    return pa.array(np.asarray(x, dtype=np.int32), pa.int32())


def _apply_rules(batch: pa.Table, op: str, rules: list[tuple[str, np.ndarray]]) -> pa.Table:
    """Name each row's first failing rule (rules in datatrove's order)."""
    reason = np.full(batch.num_rows, None, dtype=object)
    for name, mask in rules:
        m = np.asarray(mask, dtype=bool) & (reason == None)  # noqa: E711
        reason[m] = f"{op}:{name}"
    dropped = reason != None  # noqa: E711
    return mark_dropped(batch, pa.array(dropped, pa.bool_()), pa.array(reason.tolist(), pa.string()))


def _normalize_lines(texts: pl.Series) -> pl.Series:
    """Line breaks as str.splitlines() sees them, all turned into "\\n"."""
    return texts.str.replace_all("\r\n", "\n", literal=True).str.replace_all(f"[{_class(_LINEBREAKS)}]", "\n")


def _splitlines_count(norm: pl.Series) -> np.ndarray:
    """len(text.splitlines()) from normalized text."""
    nl = norm.str.count_matches("\n", literal=True).to_numpy().astype(np.int64)
    ends_nl = norm.str.ends_with("\n").to_numpy()
    empty = (norm.str.len_bytes() == 0).to_numpy()
    return np.where(empty, 0, nl + np.where(ends_nl, 0, 1))


def _dup_pieces(pieces: pl.Series, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """datatrove's find_duplicates per row: (#elements seen before, their chars)."""
    n = len(counts)
    doc = np.repeat(np.arange(n), counts)
    if not len(doc):
        return np.zeros(n, np.int64), np.zeros(n, np.int64)
    with np.errstate(over="ignore"):
        key = pieces.hash(seed=_TOKEN_SEED).to_numpy() ^ ((doc.astype(np.uint64) + np.uint64(1)) * _GOLD)
    dup = ~pl.Series(key).is_first_distinct().to_numpy()
    if not dup.any():
        return np.zeros(n, np.int64), np.zeros(n, np.int64)
    lens = pieces.filter(pl.Series(dup)).str.len_chars().to_numpy().astype(np.int64)
    d = doc[dup]
    return np.bincount(d, minlength=n).astype(np.int64), np.bincount(d, weights=lens, minlength=n).astype(np.int64)


# -- gopher_quality --------------------------------------------------------------------------
class GopherQualityParams(_LangParams):
    min_doc_words: int | None = Field(50, ge=0, description="drop below this many non-symbol words (None: off)")
    max_doc_words: int | None = Field(100000, ge=0, description="drop above this many non-symbol words (None: off)")
    min_avg_word_length: float | None = Field(3, ge=0, description="drop when mean word length is below (None: off)")
    max_avg_word_length: float | None = Field(10, ge=0, description="drop when mean word length is above (None: off)")
    max_symbol_word_ratio: float | None = Field(0.1, ge=0, description="max '#' and max '...' per word (None: off)")
    max_bullet_lines_ratio: float | None = Field(0.9, ge=0, le=1, description="max fraction of lines starting with a bullet")
    max_ellipsis_lines_ratio: float | None = Field(0.3, ge=0, le=1, description="max fraction of lines ending with an ellipsis")
    max_non_alpha_words_ratio: float | None = Field(
        0.8, ge=0, le=1, description="drop when fewer than this fraction of words contain a letter (datatrove's name)"
    )
    min_stop_words: int | None = Field(2, ge=0, description="min distinct stop words present (None: off)")
    stop_words: list[str] | None = Field(None, description="stop words (default: the, be, to, of, and, that, have, with)")


@register
class GopherQuality(Operator):
    """Gopher quality rules (Rae et al. 2021) as datatrove's GopherQualityFilter."""

    name = "gopher_quality"
    kind = "filter"
    Params = GopherQualityParams
    needs = frozenset({"text"})
    adds: ClassVar = frozenset({
        "quality_gopher_words", "quality_gopher_avg_word_len", "quality_gopher_hash_ratio",
        "quality_gopher_ellipsis_ratio", "quality_gopher_bullet_lines", "quality_gopher_ellipsis_lines",
        "quality_gopher_alpha_ratio", "quality_gopher_stop_words",
    })
    resources = Resources(num_cpus=1, batch_size=1024)
    requires = ("spacy", "polars")

    def process(self, batch: pa.Table) -> pa.Table:
        p = self.params
        st = word_stats(batch, p)
        n, doc = st["n"], st["doc"]
        texts = _text(batch)
        n_words = st["n_words"]
        ns = st["non_symbol"]
        n_ns = np.bincount(doc, weights=ns, minlength=n).astype(np.int64)
        ns_chars = np.bincount(doc, weights=np.where(ns, st["len"], 0), minlength=n)
        avg = _ratio(ns_chars, n_ns)
        hashes = texts.str.count_matches("#", literal=True).to_numpy()
        ellipsis = (texts.str.count_matches("...", literal=True) + texts.str.count_matches("…", literal=True)).to_numpy()
        hash_ratio = _ratio(hashes, n_words)
        ell_ratio = _ratio(ellipsis, n_words)
        norm = _normalize_lines(texts)
        n_lines = _splitlines_count(norm)
        ws = r"[^\S\n]"
        bullets = norm.str.count_matches(rf"(?m)^{ws}*[•\-]").to_numpy()
        ell_lines = norm.str.count_matches(rf"(?m)(?:\.\.\.|…){ws}*$").to_numpy()
        # "(?m)$" also matches at the very end: a trailing "\n" would count an extra empty line
        bullet_ratio = _ratio(bullets, n_lines)
        ell_line_ratio = _ratio(ell_lines, n_lines)
        alpha = np.bincount(doc, weights=st["has_alpha"], minlength=n)
        alpha_ratio = _ratio(alpha, n_words)
        stop = pl.Series(list(STOP_WORDS if p.stop_words is None else p.stop_words), dtype=pl.String)
        stop_h = stop.hash(seed=_TOKEN_SEED).to_numpy()
        is_stop = np.isin(st["h"], stop_h)
        if is_stop.any():
            with np.errstate(over="ignore"):
                sk = st["h"][is_stop] ^ (doc[is_stop].astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
            first = pl.Series(sk).is_first_distinct().to_numpy()
            stop_count = np.bincount(doc[is_stop][first], minlength=n)
        else:
            stop_count = np.zeros(n, np.int64)

        def on(v):
            return v is not None and v != 0

        with np.errstate(invalid="ignore"):
            rules = [
                ("gopher_short_doc", on(p.min_doc_words) and n_ns < p.min_doc_words),
                ("gopher_long_doc", on(p.max_doc_words) and n_ns > p.max_doc_words),
                ("gopher_below_avg_threshold", on(p.min_avg_word_length) and avg < p.min_avg_word_length),
                ("gopher_above_avg_threshold", on(p.max_avg_word_length) and avg > p.max_avg_word_length),
                ("gopher_too_many_hashes", on(p.max_symbol_word_ratio) and hash_ratio > p.max_symbol_word_ratio),
                ("gopher_too_many_ellipsis", on(p.max_symbol_word_ratio) and ell_ratio > p.max_symbol_word_ratio),
                ("gopher_too_many_bullets", on(p.max_bullet_lines_ratio) and bullet_ratio > p.max_bullet_lines_ratio),
                ("gopher_too_many_end_ellipsis",
                 on(p.max_ellipsis_lines_ratio) and ell_line_ratio > p.max_ellipsis_lines_ratio),
                ("gopher_below_alpha_threshold",
                 on(p.max_non_alpha_words_ratio) and alpha_ratio < p.max_non_alpha_words_ratio),
                ("gopher_enough_stop_words", on(p.min_stop_words) and stop_count < p.min_stop_words),
            ]
        rules = [(name, np.broadcast_to(np.asarray(m, dtype=bool), (n,))) for name, m in rules]
        for col, val in (
            ("quality_gopher_words", _i32(n_ns)), ("quality_gopher_avg_word_len", _f32(avg)),
            ("quality_gopher_hash_ratio", _f32(hash_ratio)), ("quality_gopher_ellipsis_ratio", _f32(ell_ratio)),
            ("quality_gopher_bullet_lines", _f32(bullet_ratio)), ("quality_gopher_ellipsis_lines", _f32(ell_line_ratio)),
            ("quality_gopher_alpha_ratio", _f32(alpha_ratio)), ("quality_gopher_stop_words", _i32(stop_count)),
        ):
            batch = set_column(batch, col, val)
        return _apply_rules(batch, self.name, rules)


# -- gopher_repetition -----------------------------------------------------------------------
class GopherRepetitionParams(_LangParams):
    dup_line_frac: float | None = Field(0.3, ge=0, le=1, description="max fraction of duplicated lines")
    dup_para_frac: float | None = Field(0.3, ge=0, le=1, description="max fraction of duplicated paragraphs")
    dup_line_char_frac: float | None = Field(0.2, ge=0, le=1, description="max fraction of chars in duplicated lines")
    dup_para_char_frac: float | None = Field(0.2, ge=0, le=1, description="max fraction of chars in duplicated paragraphs")
    top_n_grams: list[tuple[int, float]] = Field(
        [(2, 0.2), (3, 0.18), (4, 0.16)], description="(n, max char fraction of the most frequent n-gram)"
    )
    dup_n_grams: list[tuple[int, float]] = Field(
        [(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)],
        description="(n, max char fraction covered by duplicated n-grams)",
    )


def _ngram_scores(h: np.ndarray, lens: np.ndarray, doc: np.ndarray, counts: np.ndarray,
                  top_ks: set[int], dup_ks: set[int]) -> tuple[dict, dict]:
    """datatrove's top n-gram chars (``len(" ".join(top)) * count``) and duplicated n-gram chars
    (``find_all_duplicate``) per row, for every n in ``top_ks`` / ``dup_ks``.

    n-grams are 64-bit rolling hashes of the word hashes, salted with the row. Level by level
    (n = 1, 2, ...) only the positions whose (n-1)-gram occurs twice or more in its row stay
    candidates: an n-gram can only repeat where its first n-1 words do, so after the first few
    levels the arrays are small. Counting is polars hashing (is_duplicated / is_first_distinct /
    unique_counts), no sort.

    The greedy left-to-right scan of ``find_all_duplicate`` (it jumps n words after a hit) is
    evaluated on runs of consecutive repeated positions: inside a run every n-th one counts.
    """
    n = len(counts)
    top = {k: np.zeros(n, np.float64) for k in top_ks}
    dup = {k: np.zeros(n, np.float64) for k in dup_ks}
    if not len(h) or not (top_ks or dup_ks):
        return top, dup
    kmax = max(top_ks | dup_ks)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    doc_end = np.repeat(starts + counts, counts)
    csum = np.concatenate([[0], np.cumsum(lens)])
    with np.errstate(over="ignore"):
        g = h ^ ((doc.astype(np.uint64) + np.uint64(1)) * _GOLD)
    pos = np.arange(len(h), dtype=np.int64)
    key = g
    kmin = min(top_ks | dup_ks)
    for k in range(1, kmax + 1):
        ok = pos + k <= doc_end[pos]
        if not ok.all():
            pos, key = pos[ok], key[ok]
        if k > 1:
            with np.errstate(over="ignore"):
                key = key * _MIX ^ h[pos + (k - 1)]
        if not len(pos):
            break
        if k < kmin:
            continue  # levels below the first one asked for would prune little for a full pass
        s = pl.Series(key)
        dm = s.is_duplicated().to_numpy()
        dpos, dkey = pos[dm], key[dm]
        if k in top_ks:
            # rows with at least k words: without repeats the first n-gram is the top one
            has = counts >= k
            maxc = has.astype(np.int64)
            best = starts.copy()
            if len(dpos):
                ds = pl.Series(dkey)
                first = ds.is_first_distinct().to_numpy()
                cnt = ds.unique_counts().to_numpy().astype(np.int64)  # in order of first appearance
                upos = dpos[first]
                udoc = doc[upos]  # non-decreasing
                seg = np.flatnonzero(np.concatenate([[True], udoc[1:] != udoc[:-1]]))
                segmax = np.maximum.reduceat(cnt, seg)
                seglen = np.diff(np.concatenate([seg, [len(cnt)]]))
                tie = np.flatnonzero(cnt == np.repeat(segmax, seglen))  # Counter.most_common: first seen wins
                tdoc = udoc[tie]
                chosen = tie[np.concatenate([[True], tdoc[1:] != tdoc[:-1]])]
                sdoc = udoc[seg]
                maxc[sdoc] = segmax
                best[sdoc] = upos[chosen]
            bp = best[has]
            glen = csum[bp + k] - csum[bp] + (k - 1)  # " ".join of k words
            top[k][has] = maxc[has] * glen
        if k in dup_ks and len(dpos):
            seen = dpos[~pl.Series(dkey).is_first_distinct().to_numpy()]
            if len(seen):
                start = np.concatenate([[True], seen[1:] != seen[:-1] + 1])
                run_start = seen[start][np.cumsum(start) - 1]
                counted = seen[(seen - run_start) % k == 0]
                dup[k] = np.bincount(doc[counted], weights=csum[counted + k] - csum[counted], minlength=n)
        pos, key = dpos, dkey
    return top, dup


@register
class GopherRepetition(Operator):
    """Gopher repetition rules (duplicate lines/paragraphs/n-grams) as datatrove's GopherRepetitionFilter."""

    name = "gopher_repetition"
    kind = "filter"
    Params = GopherRepetitionParams
    needs = frozenset({"text"})
    adds: ClassVar = frozenset(
        ["quality_rep_dup_para_frac", "quality_rep_dup_para_char_frac", "quality_rep_dup_line_frac",
         "quality_rep_dup_line_char_frac"]
        + [f"quality_rep_top_{n}gram" for n in (2, 3, 4)] + [f"quality_rep_dup_{n}gram" for n in range(5, 11)]
    )
    resources = Resources(num_cpus=1, batch_size=1024)
    requires = ("spacy", "polars")

    def process(self, batch: pa.Table) -> pa.Table:
        p = self.params
        texts = _text(batch)
        n = batch.num_rows
        n_chars = texts.str.len_chars().to_numpy().astype(np.int64)
        # paragraphs: re.split(r"\n{2,}", text.strip()); lines: re.split("\n+", text)
        paras = texts.str.strip_chars().str.replace_all(r"\n{2,}", "\x00").str.split("\x00")
        p_dup, p_chars = _dup_pieces(paras.explode(), paras.list.len().to_numpy())
        lines = texts.str.replace_all(r"\n+", "\x00").str.split("\x00")
        l_dup, l_chars = _dup_pieces(lines.explode(), lines.list.len().to_numpy())
        scores = {
            "quality_rep_dup_para_frac": _ratio(p_dup, paras.list.len().to_numpy()),
            "quality_rep_dup_para_char_frac": _ratio(p_chars, n_chars),
            "quality_rep_dup_line_frac": _ratio(l_dup, lines.list.len().to_numpy()),
            "quality_rep_dup_line_char_frac": _ratio(l_chars, n_chars),
        }
        st = word_stats(batch, p)
        rules = [("empty", n_chars == 0)]
        with np.errstate(invalid="ignore"):
            rules += [
                ("dup_para_frac", bool(p.dup_para_frac) and scores["quality_rep_dup_para_frac"] > (p.dup_para_frac or 0)),
                ("dup_para_char_frac",
                 bool(p.dup_para_char_frac) and scores["quality_rep_dup_para_char_frac"] > (p.dup_para_char_frac or 0)),
                ("dup_line_frac", bool(p.dup_line_frac) and scores["quality_rep_dup_line_frac"] > (p.dup_line_frac or 0)),
                ("dup_line_char_frac",
                 bool(p.dup_line_char_frac) and scores["quality_rep_dup_line_char_frac"] > (p.dup_line_char_frac or 0)),
            ]
        top, dup = _ngram_scores(st["h"], st["len"], st["doc"], st["n_words"],
                                 {k for k, _ in p.top_n_grams}, {k for k, _ in p.dup_n_grams})
        for k, frac in p.top_n_grams:
            score = _ratio(top[k], n_chars)
            scores[f"quality_rep_top_{k}gram"] = score
            with np.errstate(invalid="ignore"):
                rules.append((f"top_{k}_gram", score > frac))
        for k, frac in p.dup_n_grams:
            score = _ratio(dup[k], n_chars)
            scores[f"quality_rep_dup_{k}gram"] = score
            with np.errstate(invalid="ignore"):
                rules.append((f"duplicated_{k}_n_grams", score > frac))
        for col, score in scores.items():  # in a fixed order (a frozenset's order changes per process)
            batch = set_column(batch, col, _f32(score))
        rules = [(name, np.broadcast_to(np.asarray(m, dtype=bool), (n,))) for name, m in rules]
        return _apply_rules(batch, self.name, rules)


# -- c4_quality -----------------------------------------------------------------------------
class C4QualityParams(_LangParams):
    split_paragraph: bool = Field(True, description="rules apply per line (C4); False is not supported here")
    remove_citations: bool = Field(True, description="remove wikipedia-style [1] / [edit] / [citation needed]")
    filter_no_terminal_punct: bool = Field(True, description="drop lines not ending in . ? ! \" ' (or ending in ...)")
    min_num_sentences: int = Field(5, ge=-1, description="drop documents with fewer sentences in kept lines (-1: off)")
    min_words_per_line: int = Field(3, ge=-1, description="drop lines with fewer whitespace-separated words")
    max_word_length: int = Field(1000, ge=-1, description="drop lines holding a longer word (-1: off)")
    filter_lorem_ipsum: bool = Field(True, description="drop documents containing 'lorem ipsum'")
    filter_javascript: bool = Field(True, description="drop lines mentioning 'javascript'")
    filter_curly_bracket: bool = Field(True, description="drop documents containing '{'")
    filter_policy: bool = Field(True, description="drop lines with cookie / terms-of-use phrases")
    rewrite_text: bool = Field(True, description="replace text of kept rows with the kept lines (as datatrove does)")


_CITATION = r"\[\d*\]|\[edit\]|\[citation needed\]"


@register
class C4Quality(Operator):
    """C4 line and document rules (Raffel et al. 2020) as datatrove's C4QualityFilter."""

    name = "c4_quality"
    kind = "filter"
    Params = C4QualityParams
    needs = frozenset({"text"})
    adds = frozenset({"quality_c4_kept_lines", "quality_c4_sentences"})
    resources = Resources(num_cpus=1, batch_size=1024)
    requires = ("spacy", "polars")

    def process(self, batch: pa.Table) -> pa.Table:
        p = self.params
        if not p.split_paragraph:
            raise ValueError("c4_quality: split_paragraph=False (sentence mode) is not implemented")
        texts = _text(batch)
        n = batch.num_rows
        lines = _normalize_lines(texts)
        # str.splitlines(): no trailing empty line after a final break
        lines = pl.select(pl.when(lines.str.ends_with("\n")).then(lines.str.slice(0, lines.str.len_chars() - 1))
                          .otherwise(lines)).to_series()
        split = lines.str.split("\n")
        counts = np.where(texts.str.len_bytes().to_numpy() == 0, 0, split.list.len().to_numpy())
        flat = split.explode()
        flat = flat.filter(pl.Series(np.repeat(texts.str.len_bytes().to_numpy() > 0, split.list.len().to_numpy())))
        doc = np.repeat(np.arange(n), counts)
        line = flat.str.strip_chars()
        n_words = line.str.count_matches(r"[^\s\x1c-\x1f]+").to_numpy()
        ok = np.ones(len(line), dtype=bool)
        if p.max_word_length != -1:
            ok &= ~line.str.contains(r"[^\s\x1c-\x1f]{%d,}" % (p.max_word_length + 1)).to_numpy()
        if p.remove_citations:
            line = line.str.replace_all(_CITATION, "")
        if p.filter_no_terminal_punct:
            ends = line.str.contains(r"[.?!\"']$").to_numpy() & ~line.str.ends_with("...").to_numpy()
            ok &= ends
        ok &= n_words >= p.min_words_per_line
        low = line.str.to_lowercase()
        lorem = ok & (low.str.contains("lorem ipsum", literal=True).to_numpy() if p.filter_lorem_ipsum else False)
        js = low.str.contains("javascript", literal=True).to_numpy() if p.filter_javascript else np.zeros(len(line), bool)
        curly = ok & ~lorem & ~js & (line.str.contains("{", literal=True).to_numpy() if p.filter_curly_bracket else False)
        policy = (low.str.contains("|".join(POLICY_SUBSTRINGS)).to_numpy() if p.filter_policy
                  else np.zeros(len(line), bool))
        kept = ok & ~lorem & ~js & ~curly & ~policy
        # first line (in order) that ends the document decides lorem vs curly
        doc_reason = np.full(n, None, dtype=object)
        stop = np.flatnonzero(lorem | curly)
        if len(stop):
            first_doc, first_idx = np.unique(doc[stop], return_index=True)
            sel = stop[first_idx]
            doc_reason[first_doc] = np.where(lorem[sel], "lorem_ipsum", "curly_bracket")
        # lines kept before the stopping line only matter for the text of kept docs (not dropped)
        kept_lines = np.bincount(doc, weights=kept, minlength=n).astype(np.int64)
        sentences = kept_lines.copy()
        need = np.flatnonzero((kept_lines < p.min_num_sentences) & (kept_lines > 0))
        if p.min_num_sentences != -1 and len(need):
            sel = np.flatnonzero(kept & np.isin(doc, need))
            sentences[need] = 0
            langs = _languages(batch, p)
            cnt = _count_sentences(line.gather(sel), langs.gather(doc[sel]))
            sentences += np.bincount(doc[sel], weights=cnt, minlength=n).astype(np.int64)
        few = (sentences < p.min_num_sentences) if p.min_num_sentences != -1 else np.zeros(n, bool)
        reason = np.where(doc_reason != None, doc_reason, np.where(few, "too_few_sentences", None))  # noqa: E711
        batch = set_column(batch, "quality_c4_kept_lines", _i32(kept_lines))
        batch = set_column(batch, "quality_c4_sentences", _i32(sentences))
        if p.rewrite_text:
            keep_doc = reason == None  # noqa: E711
            kd = pl.DataFrame({"doc": doc, "line": line}).filter(pl.Series(kept & keep_doc[doc]))
            joined = kd.group_by("doc", maintain_order=True).agg(pl.col("line").str.join("\n"))
            new_text = np.array(batch.column("text").to_pylist(), dtype=object)
            new_text[keep_doc] = ""
            if len(joined):
                new_text[joined["doc"].to_numpy()] = joined["line"].str.strip_chars().to_list()
            text_type = batch.schema.field("text").type
            batch = set_column(batch, "text", pa.array(new_text.tolist(), text_type))
        return _apply_rules(batch, self.name, [(r, reason == r) for r in ("lorem_ipsum", "curly_bracket", "too_few_sentences")])


def _count_sentences(lines: pl.Series, langs: pl.Series) -> np.ndarray:
    """len(split_into_sentences(line, language)) for each line: spaCy's sentencizer over the same
    tokens, or datatrove's regex for languages on its whitespace fallback tokenizer."""
    from operators._words import sentencizer_punct_chars, split_words

    out = np.zeros(len(lines), np.int64)
    if not len(lines):
        return out
    fallback = np.array([_whitespace_tokenizer(lang) for lang in langs.to_list()], dtype=bool)
    if fallback.any():
        import regex

        from datatrove.utils.text import TERMINAL_PUNCTUATION
        import re

        rx = regex.compile(rf"(?:(?:\p{{Lu}}\.)|.)+?[{re.escape(''.join(TERMINAL_PUNCTUATION))}\n]+[\"'”]?", regex.UNICODE)
        for i in np.flatnonzero(fallback):
            out[i] = sum(1 for s in rx.findall(lines[int(i)]) if s.strip())
    idx = np.flatnonzero(~fallback)
    if len(idx):
        doc, tok = split_words(lines.gather(idx), langs.gather(idx))
        pc = pl.Series(sentencizer_punct_chars(), dtype=pl.String)
        in_pc = tok.is_in(pc.implode()).to_numpy()
        is_punct = tok.str.contains(r"^\p{P}+$").to_numpy()
        word = ~in_pc & ~is_punct
        cum_pc = np.cumsum(in_pc)
        # a word token starts a sentence when a punct char came after the previous word of its line
        wpos = np.flatnonzero(word)
        if len(wpos):
            prev_same = np.concatenate([[False], doc[wpos][1:] == doc[wpos][:-1]])
            prev_cum = np.concatenate([[0], cum_pc[wpos][:-1]])
            line_start = np.searchsorted(doc, doc[wpos], side="left")
            base = np.where(prev_same, prev_cum, np.where(line_start > 0, cum_pc[line_start - 1], 0))
            starts = (cum_pc[wpos] - in_pc[wpos]) > base
            # the first token of a line opens a sentence anyway
            first_tok = wpos == line_start
            starts &= ~first_tok
            extra = np.bincount(doc[wpos], weights=starts, minlength=len(idx))
        else:
            extra = np.zeros(len(idx))
        has_tok = np.bincount(doc, minlength=len(idx)) > 0
        out[idx] = np.where(has_tok, 1 + extra, 0).astype(np.int64)
    return out


def _whitespace_tokenizer(lang: str) -> bool:
    from operators._words import _assignments

    a = _assignments()
    base = (lang or "en").split("_")[0]
    cls = (a.get(lang) or a.get(base) or ("", ""))[0]
    return cls == "WhitespaceTokenizer"


# -- fineweb_quality ------------------------------------------------------------------------
class FineWebQualityParams(_LangParams):
    line_punct_thr: float = Field(0.12, ge=0, le=1, description="min fraction of lines ending in terminal punctuation")
    line_punct_exclude_zero: bool = Field(False, description="do not drop documents where that fraction is exactly 0")
    short_line_thr: float = Field(0.67, ge=0, le=1, description="max fraction of short lines")
    short_line_length: int = Field(30, ge=0, description="a line of at most this many chars is short")
    char_duplicates_ratio: float = Field(0.01, ge=0, le=1, description="max fraction of chars in duplicated lines")
    new_line_ratio: float = Field(0.3, ge=0, description="max newlines per word")


@register
class FineWebQuality(Operator):
    """FineWeb's extra line rules as datatrove's FineWebQualityFilter."""

    name = "fineweb_quality"
    kind = "filter"
    Params = FineWebQualityParams
    needs = frozenset({"text"})
    adds = frozenset({"quality_fineweb_line_punct_ratio", "quality_fineweb_short_line_ratio",
                      "quality_fineweb_char_dup_ratio", "quality_fineweb_list_ratio"})
    resources = Resources(num_cpus=1, batch_size=1024)
    requires = ("spacy", "polars")

    def process(self, batch: pa.Table) -> pa.Table:
        p = self.params
        texts = _text(batch)
        n = batch.num_rows
        split = texts.str.split("\n")
        flat = split.explode()
        doc = np.repeat(np.arange(n), split.list.len().to_numpy())
        nonblank = (flat.str.strip_chars().str.len_bytes() > 0).to_numpy()
        flat, doc = flat.filter(pl.Series(nonblank)), doc[nonblank]
        n_lines = np.bincount(doc, minlength=n)
        punct = flat.str.contains(f"[{_TERM_CLASS}]$").to_numpy()
        short = (flat.str.len_chars() <= p.short_line_length).to_numpy()
        punct_ratio = _ratio(np.bincount(doc, weights=punct, minlength=n), n_lines)
        short_ratio = _ratio(np.bincount(doc, weights=short, minlength=n), n_lines)
        _, dup_chars = _dup_pieces(flat, n_lines)
        char_dup = _ratio(dup_chars, texts.str.replace_all("\n", "", literal=True).str.len_chars().to_numpy())
        st = word_stats(batch, p)
        newlines = texts.str.count_matches("\n", literal=True).to_numpy()
        list_ratio = _ratio(newlines, st["n_words"])
        empty = n_lines == 0
        with np.errstate(invalid="ignore"):
            rules = [
                ("empty", empty),
                ("line_punct_ratio", ~empty & (punct_ratio < p.line_punct_thr)
                 & ~((punct_ratio == 0) & p.line_punct_exclude_zero)),
                ("short_line_ratio", ~empty & (short_ratio > p.short_line_thr)),
                ("char_dup_ratio", ~empty & (char_dup > p.char_duplicates_ratio)),
                ("list_ratio", ~empty & (list_ratio > p.new_line_ratio)),
            ]
        for col, val in (("quality_fineweb_line_punct_ratio", punct_ratio), ("quality_fineweb_short_line_ratio", short_ratio),
                         ("quality_fineweb_char_dup_ratio", char_dup), ("quality_fineweb_list_ratio", list_ratio)):
            batch = set_column(batch, col, _f32(val))
        return _apply_rules(batch, self.name, rules)
