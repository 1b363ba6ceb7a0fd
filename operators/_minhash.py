"""Vectorized MinHash building blocks for ``minhash_dedup`` (numpy / pyarrow / polars, no Ray).

Everything here works on whole batches: a batch of N documents becomes flat arrays of shingle
hashes tagged with the document's index in the batch, and every step after that is a numpy
array operation (no per-document Python loop).

Shingles: the normalized text (lowercase, punctuation and symbols turned into spaces) is split
on whitespace into words and every run of ``n`` consecutive words is one shingle; documents in
languages written without spaces (from the ``language`` column) use runs of ``char_n``
characters (whitespace removed) instead. A document shorter than ``n`` tokens is one shingle.
A shingle is hashed to 64 bits (polars' string hash of each token, then an order-sensitive mix
of the n token hashes); its top 32 bits are the shingle's id in the sets compared by the exact
Jaccard check and the value used by the signature.

Signature: one-permutation MinHash (Li et al. 2012) with optimal densification (Shrivastava
2017): the 32-bit shingle hash picks one of K bins (its top bits) and each bin keeps its
smallest hash, so a signature costs one pass over the shingles instead of K; empty bins borrow
the value of a bin chosen by a hash sequence shared by all documents, which keeps
P[sig_a[j] == sig_b[j]] = Jaccard(a, b). Band keys hash r consecutive bins (and the band index)
to 64 bits.
"""
from __future__ import annotations

import math

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

U64 = np.uint64
EMPTY = U64(1 << 32)  # larger than any 32-bit hash: marks an empty bin
_P = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93,
               0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53, 0x94D049BB133111EB, 0xBF58476D1CE4E5B9,
               0x2545F4914F6CDD1D, 0x9FB21C651E98DF25, 0xA0761D6478BD642F, 0xE7037ED1A0B428DB],
              dtype=U64)
NO_SPACE_LANGUAGES = ("zh", "ja", "th", "lo", "km", "my", "bo", "dz", "yue", "wuu", "gan", "hak",
                      "cdo", "lzh")
# punctuation and symbols, plus the non-ASCII spaces (so that the cheaper ASCII splitter sees them)
_PUNCT = (r"[\p{P}\p{S}\x{85}\x{a0}\x{1680}\x{2000}-\x{200b}\x{2028}\x{2029}\x{202f}\x{205f}"
          r"\x{3000}\x{feff}]+")
_SPACES = r"[\x{85}\x{a0}\x{1680}\x{2000}-\x{200b}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}\x{feff}]+"


def fmix64(x: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finalizer (avalanche), elementwise, wrapping uint64 arithmetic."""
    x = x ^ (x >> U64(33))
    x *= U64(0xFF51AFD7ED558CCD)
    x ^= x >> U64(33)
    x *= U64(0xC4CEB9FE1A85EC53)
    x ^= x >> U64(33)
    return x


def doc_keys(ids) -> np.ndarray:
    """64-bit key of each document id (the id itself stays the tie-breaker everywhere)."""
    arr = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    return pl.Series(arr).hash(seed=0x5EED).to_numpy().astype(U64, copy=False)


def normalize(text, lowercase: bool = True, strip_punctuation: bool = True):
    t = pc.fill_null(text, "")
    if lowercase:
        t = pc.utf8_lower(t)
    t = pc.replace_substring_regex(t, _PUNCT if strip_punctuation else _SPACES, " ")
    t = pc.ascii_trim_whitespace(t)
    # empty documents have no tokens (the splitter would give them one empty token)
    return pc.if_else(pc.equal(pc.binary_length(t), 0), pa.scalar(None, pa.string()), t)


def _flat_tokens(lists: pa.ListArray | pa.ChunkedArray, seed: int):
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    lens = pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(lists)
    h = pl.Series(flat).hash(seed=seed).to_numpy().astype(U64, copy=False)
    return h, lens


def _shingle_hashes(tok: np.ndarray, lens: np.ndarray, n: int, doc_index: np.ndarray, salt: int):
    """Order-sensitive hash of every run of n consecutive tokens inside a document (a document
    with fewer than n tokens, but at least one, gives one shingle of all its tokens).
    Returns (document index, 64-bit shingle hash)."""
    total = int(lens.sum())
    if total == 0:
        return np.empty(0, np.int64), np.empty(0, U64)
    starts = np.zeros(len(lens), np.int64)
    np.cumsum(lens[:-1], out=starts[1:])
    salt_mix = U64((salt * 0x632BE59BD9B4E019) & 0xFFFFFFFFFFFFFFFF)
    docs_out, h_out = [], []
    per_doc = np.maximum(lens - n + 1, 0)  # full windows per document
    m = int(per_doc.sum())
    if m:
        w = total - n + 1  # windows over the flat token array (some straddle documents)
        acc = tok[:w] * _P[0]
        tmp = np.empty(w, U64)
        for j in range(1, n):
            np.multiply(tok[j:j + w], _P[j % len(_P)], out=tmp)
            acc += tmp
        first = np.cumsum(per_doc) - per_doc
        idx = np.arange(m, dtype=np.int64) + np.repeat(starts - first, per_doc)
        h = acc[idx]
        h += salt_mix
        docs_out.append(np.repeat(doc_index, per_doc))
        h_out.append(fmix64(h))
    short = np.flatnonzero((lens > 0) & (lens < n))
    if len(short):  # rare: documents shorter than one shingle
        acc = np.zeros(len(short), U64)
        for j in range(n - 1):
            ok = lens[short] > j
            term = tok[np.where(ok, starts[short] + j, 0)] * _P[j % len(_P)]
            acc += np.where(ok, term, U64(0))
        acc += salt_mix
        docs_out.append(doc_index[short])
        h_out.append(fmix64(acc))
    if len(docs_out) == 1:
        return docs_out[0], h_out[0]
    return np.concatenate(docs_out), np.concatenate(h_out)


def shingles(text, language=None, *, ngram: int = 5, char_ngram: int = 5, lowercase: bool = True,
             strip_punctuation: bool = True, no_space_languages=NO_SPACE_LANGUAGES, seed: int = 0):
    """Shingle hashes of a batch: (doc index int64, 32-bit shingle id as uint64), unsorted."""
    t = normalize(text, lowercase, strip_punctuation)
    if isinstance(t, pa.ChunkedArray):
        t = t.combine_chunks()
    n_docs = len(t)
    char_mask = np.zeros(n_docs, bool)
    if language is not None and no_space_languages:
        lang = pc.fill_null(language, "")
        lang = pc.utf8_lower(pc.utf8_trim_whitespace(lang))
        base = pc.replace_substring_regex(lang, r"[-_].*$", "")
        char_mask = pc.is_in(base, value_set=pa.array(list(no_space_languages), pa.string()))
        char_mask = np.asarray(pc.fill_null(char_mask, False).to_numpy(zero_copy_only=False), bool)
    docs_out, h_out = [], []
    word_idx = np.flatnonzero(~char_mask)
    if len(word_idx):
        wt = t if len(word_idx) == n_docs else t.take(pa.array(word_idx))
        tok, lens = _flat_tokens(pc.ascii_split_whitespace(wt), seed * 2 + 1)
        d, h = _shingle_hashes(tok, lens, ngram, word_idx, salt=ngram)
        docs_out.append(d)
        h_out.append(h)
    char_idx = np.flatnonzero(char_mask)
    if len(char_idx):
        ct = pc.replace_substring_regex(pc.fill_null(t.take(pa.array(char_idx)), ""), r"\s+", "")
        chars = pl.Series(ct).str.split("").to_arrow()
        tok, lens = _flat_tokens(chars, seed * 2 + 2)
        d, h = _shingle_hashes(tok, lens, char_ngram, char_idx, salt=1000 + char_ngram)
        docs_out.append(d)
        h_out.append(h)
    if not docs_out:
        return np.empty(0, np.int64), np.empty(0, U64)
    d = np.concatenate(docs_out) if len(docs_out) > 1 else docs_out[0]
    h = np.concatenate(h_out) if len(h_out) > 1 else h_out[0]
    return d, h >> U64(32)


def _reference_table():
    import sys
    import unicodedata

    table = {}
    for cp in range(sys.maxunicode + 1):
        c = chr(cp)
        if unicodedata.category(c)[0] in "PS":
            table[cp] = " "
    return table


_REF_TABLE: dict | None = None


def reference_shingles(text: str, language: str | None = None, *, ngram: int = 5, char_ngram: int = 5,
                       no_space_languages=NO_SPACE_LANGUAGES) -> set[tuple[str, ...]]:
    """Plain-Python definition of the shingles (for tests and the benchmark's ground truth):
    lowercase, punctuation/symbols -> space, whitespace split, word n-grams (character n-grams
    without whitespace for languages written without spaces)."""
    global _REF_TABLE
    if _REF_TABLE is None:
        _REF_TABLE = _reference_table()
    t = (text or "").lower().translate(_REF_TABLE)
    lang = (language or "").strip().lower().replace("_", "-").split("-")[0]
    if lang in no_space_languages:
        toks, n = list("".join(t.split())), char_ngram
    else:
        toks, n = t.split(), ngram
    if not toks:
        return set()
    if len(toks) < n:
        return {tuple(toks)}
    return {tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)}


def reference_jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 0.0
    return len(a & b) / len(a | b)


def shingle_sets(doc: np.ndarray, h32: np.ndarray, n_docs: int) -> pa.ListArray:
    """Sorted, de-duplicated 32-bit shingle ids of every document, as list<uint32>."""
    packed = (doc.astype(U64) << U64(32)) | h32
    packed.sort()
    if len(packed):
        keep = np.empty(len(packed), bool)
        keep[0] = True
        np.not_equal(packed[1:], packed[:-1], out=keep[1:])
        packed = packed[keep]
    d = (packed >> U64(32)).astype(np.int64)
    counts = np.bincount(d, minlength=n_docs)
    offsets = np.zeros(n_docs + 1, np.int32)
    np.cumsum(counts, out=offsets[1:])
    values = (packed & U64(0xFFFFFFFF)).astype(np.uint32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def signatures(doc: np.ndarray, h32: np.ndarray, n_docs: int, num_perm: int, seed: int = 0):
    """One-permutation MinHash densified by rotation: (n_docs, num_perm) uint64 values; rows of
    documents without shingles stay EMPTY. Also returns the has-shingles mask.

    Bin j of a document is the smallest 32-bit shingle hash whose top bits select j; an empty bin
    takes the value of the next non-empty bin to its right (circularly), tagged with the distance,
    so two documents agree on bin j with probability = their Jaccard similarity (Shrivastava & Li,
    "Densifying one permutation hashing via rotation", 2014)."""
    k = num_perm
    bins = (h32 * U64(k)) >> U64(32)
    sig = np.full(n_docs * k, EMPTY, dtype=U64)
    np.minimum.at(sig, doc.astype(np.int64) * k + bins.astype(np.int64), h32)
    sig = sig.reshape(n_docs, k)
    empty = sig == EMPTY
    has = ~empty.all(axis=1)
    rows = np.flatnonzero(has & empty.any(axis=1))
    if len(rows):
        sub = empty[rows]
        big = 4 * k
        # index of the next non-empty bin at or after each position, over the row seen twice
        pos = np.where(np.concatenate([~sub, ~sub], axis=1), np.arange(2 * k)[None, :], big)
        nxt = np.minimum.accumulate(pos[:, ::-1], axis=1)[:, ::-1][:, :k]
        dist = (nxt - np.arange(k)[None, :]).astype(U64)
        cur = sig[rows]
        vals = np.take_along_axis(cur, nxt % k, axis=1) + (dist << U64(32))
        sig[rows] = np.where(sub, vals, cur)
    return sig, has


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n_docs, bands) uint64 keys: a hash of each band's `rows` values and the band index.
    Band i takes bins i, i + bands, i + 2*bands, ... (strided), so that the neighbouring bins that
    densification copies from land in other bands and a band's values stay independent."""
    n = sig.shape[0]
    s = sig[:, : bands * rows].reshape(n, rows, bands)
    acc = np.zeros((n, bands), U64)
    for j in range(rows):
        acc += fmix64(s[:, j, :] + U64(j + 1)) * _P[j % len(_P)]
    acc += np.arange(1, bands + 1, dtype=U64)[None, :] * U64(0x8CB92BA72F3D8DD7)
    return fmix64(acc)


def lsh_params(threshold: float, num_perm: int, target_recall: float = 0.995) -> tuple[int, int]:
    """(bands, rows): the most rows per band (fewest false candidates) whose S-curve still
    gives P(candidate | Jaccard = threshold) >= target_recall with bands * rows <= num_perm."""
    best = (num_perm, 1)
    for r in range(1, num_perm + 1):
        b = num_perm // r
        if b < 1:
            break
        if 1.0 - (1.0 - threshold ** r) ** b >= target_recall:
            best = (b, r)
    return best


def collision_probability(j: float, bands: int, rows: int) -> float:
    return 1.0 - (1.0 - j ** rows) ** bands


def bucket_pairs(bkey: np.ndarray, doc: np.ndarray, max_neighbors: int = 32):
    """Candidate pairs (a, b), a < b, of documents sharing a band key. Each bucket is sorted by
    document key and every member is paired with the next `max_neighbors` members, so buckets
    up to max_neighbors + 1 give all their pairs and larger ones (exact-duplicate floods) stay
    linear while remaining connected."""
    if len(bkey) < 2:
        return np.empty(0, U64), np.empty(0, U64)
    order = np.lexsort((doc, bkey))
    bk, dk = bkey[order], doc[order]
    out_a, out_b = [], []
    for d in range(1, max_neighbors + 1):
        same = (bk[d:] == bk[:-d]) & (dk[d:] != dk[:-d])
        if not same.any():
            if not (bk[d:] == bk[:-d]).any():
                break
            continue
        out_a.append(dk[:-d][same])
        out_b.append(dk[d:][same])
    if not out_a:
        return np.empty(0, U64), np.empty(0, U64)
    a = np.concatenate(out_a)
    b = np.concatenate(out_b)
    return unique_pairs(np.minimum(a, b), np.maximum(a, b))


def unique_pairs(a: np.ndarray, b: np.ndarray):
    if len(a) == 0:
        return a, b
    order = np.lexsort((b, a))
    a, b = a[order], b[order]
    keep = np.ones(len(a), bool)
    keep[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    return a[keep], b[keep]


def pair_key(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return fmix64(a * U64(0x9E3779B97F4A7C15) + fmix64(b))


def jaccard_lists(sa: pa.ListArray, sb: pa.ListArray) -> np.ndarray:
    """Exact Jaccard of row i of sa and row i of sb (sorted, de-duplicated uint32 lists)."""
    n = len(sa)
    if n == 0:
        return np.empty(0, np.float64)
    la = pc.list_value_length(sa).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    lb = pc.list_value_length(sb).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    va = pc.list_flatten(sa).to_numpy(zero_copy_only=False).astype(U64)
    vb = pc.list_flatten(sb).to_numpy(zero_copy_only=False).astype(U64)
    pid = np.arange(n, dtype=U64)
    packed = np.concatenate([(np.repeat(pid, la) << U64(32)) | va, (np.repeat(pid, lb) << U64(32)) | vb])
    packed.sort()
    dup = packed[1:] == packed[:-1]
    inter = np.bincount((packed[1:][dup] >> U64(32)).astype(np.int64), minlength=n)
    union = la + lb - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        j = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return j


def signature_similarity(sa: np.ndarray, sb: np.ndarray) -> np.ndarray:
    """Estimated Jaccard: the share of equal bins of two (n, K) signature matrices."""
    return (sa == sb).mean(axis=1)


def expected_bands(threshold: float, num_perm: int) -> str:
    b, r = lsh_params(threshold, num_perm)
    return f"{b}x{r} (P[candidate | J={threshold}] = {collision_probability(threshold, b, r):.4f})"


__all__ = [n for n in dir() if not n.startswith("_") and n not in ("annotations", "math")]
