"""cluster: k-means domains over hashed TF-IDF vectors (the c-BTM recipe), fitted on a sample."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from pydantic import Field

from operators.base import Operator, Params, Resources, register, set_column


class ClusterParams(Params):
    k: int = Field(8, ge=2, le=1024, description="number of clusters (domains)")
    sample_size: int = Field(20000, ge=10, description="documents the model is fitted on (seeded by id)")
    dims: int = Field(1 << 18, ge=1024, description="hashed feature dimensions")
    iterations: int = Field(25, ge=1, le=500)
    restarts: int = Field(4, ge=1, le=50, description="k-means++ starts; the best by total cosine is kept")
    column: str = Field("domain", description="column that receives the cluster label (c00, c01, ...)")
    top_terms: int = Field(10, ge=1, le=100, description="terms per cluster in <output>/<step>.clusters.json")
    seed: int | None = Field(None, description="sample and k-means++ seed (default: the recipe's)")
    max_chars: int = Field(5000, ge=100, description="characters of each document used for its vector")


WORD = r"\w+"  # a word, for the features and for naming the hashed word dimensions

# Python's str.isspace() code points (all below U+3001): a trigram made only of them is no feature
_SPACE = np.zeros(0x3001, dtype=bool)
_SPACE[[c for c in range(0x3001) if chr(c).isspace()]] = True


def _is_space(cp: np.ndarray) -> np.ndarray:
    return (cp <= 0x3000) & _SPACE[np.minimum(cp, 0x3000).astype(np.int64)]


def _fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer (vectorized): spreads the bits of a packed trigram."""
    with np.errstate(over="ignore"):
        h = h ^ (h >> np.uint64(33))
        h = h * np.uint64(0xFF51AFD7ED558CCD)
        h = h ^ (h >> np.uint64(33))
        h = h * np.uint64(0xC4CEB9FE1A85EC53)
        return h ^ (h >> np.uint64(33))


def _prepared(texts: list[str], max_chars: int):
    import polars as pl

    return pl.Series(texts, dtype=pl.String).fill_null("").str.slice(0, max_chars).str.to_lowercase()


def _word_hits(s, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, dim) of every word; each distinct word of the batch is hashed once."""
    import polars as pl

    words = s.str.extract_all(WORD)
    counts = words.list.len().fill_null(0).to_numpy()
    flat = words.explode().drop_nulls()
    uniq = flat.unique()
    dims_of = pl.Series([word_dim(w, dims) for w in uniq.to_list()], dtype=pl.Int64)
    cols = flat.replace_strict(uniq, dims_of, return_dtype=pl.Int64).to_numpy()
    return np.repeat(np.arange(len(s)), counts), cols


def _trigram_hits(s, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, dim) of every character trigram that is not all whitespace, from the texts' code
    points (UTF-32) in whole-batch numpy arrays."""
    texts = s.to_list()
    lens = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    cp = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    n = np.maximum(lens - 2, 0)  # trigrams per text
    rows = np.repeat(np.arange(len(texts)), n)
    # position of each trigram's first code point: its text's start + its rank within the text
    pos = np.repeat((np.cumsum(lens) - lens) - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))
    a, b, c = cp[pos], cp[pos + 1], cp[pos + 2]
    space = _is_space(a) & _is_space(b) & _is_space(c)
    # 21 bits per code point: the three pack into one 64-bit word without loss
    packed = (a << np.uint64(42)) | (b << np.uint64(21)) | c
    half = dims // 2
    cols = half + (_fmix64(packed[~space]) % np.uint64(half)).astype(np.int64)
    return rows[~space], cols


def features(texts: list[str], dims: int, max_chars: int):
    """Hashed word unigrams + character trigrams (so languages written without spaces get
    features too), log-scaled counts, as a CSR matrix. Words are in the lower half of the
    dimensions and trigrams in the upper half, so top terms are words. Whole-batch arrays:
    the only per-item Python is one hash per distinct word of the batch."""
    from scipy import sparse

    s = _prepared(texts, max_chars)
    wr, wc = _word_hits(s, dims)
    tr, tc = _trigram_hits(s, dims)
    rows, cols = np.concatenate([wr, tr]), np.concatenate([wc, tc])
    m = sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(texts), dims))
    m.sum_duplicates()
    m.data = 1.0 + np.log(m.data)
    return m


def word_dim(w: str, dims: int) -> int:
    return xxhash.xxh32_intdigest(w.encode()) % (dims // 2)


def l2_rows(m):
    from scipy import sparse

    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    return sparse.diags(1.0 / norms) @ m


def _kmeans_pp(x, k: int, rng) -> np.ndarray:
    """k-means++ seeding on cosine distance."""
    centers = [x[rng.integers(x.shape[0])].toarray().ravel()]
    for _ in range(1, k):
        sims = x @ np.stack(centers).T
        d = np.clip(1.0 - np.asarray(sims).max(axis=1), 0, None) ** 2
        centers.append(x[rng.choice(x.shape[0], p=d / d.sum()) if d.sum() > 0 else rng.integers(x.shape[0])]
                       .toarray().ravel())
    return np.stack(centers).astype(np.float32)


def _kmeans(x, c: np.ndarray, iterations: int) -> np.ndarray:
    """Spherical k-means (Lloyd's iterations on unit vectors) from centers `c`."""
    for _ in range(iterations):
        assign = np.asarray((x @ c.T)).argmax(axis=1)
        new = np.zeros_like(c)
        for j in range(len(c)):
            members = x[assign == j]
            new[j] = np.asarray(members.sum(axis=0)).ravel() if members.shape[0] else c[j]
        new /= np.maximum(np.linalg.norm(new, axis=1, keepdims=True), 1e-12)
        if np.allclose(new, c):
            break
        c = new
    return c


def fit(texts: list[str], words: dict, p: ClusterParams, seed: int) -> dict:
    """Spherical k-means (cosine) with k-means++ seeding on TF-IDF vectors of the sample."""
    x = features(texts, p.dims, p.max_chars)
    df = np.bincount(x.indices, minlength=p.dims)
    idf = (np.log((1 + x.shape[0]) / (1 + df)) + 1.0).astype(np.float32)
    x = l2_rows(x.multiply(idf).tocsr())
    rng = np.random.default_rng(seed)
    k = min(p.k, x.shape[0])
    best, best_score = None, -np.inf
    for _ in range(p.restarts):  # k-means can settle in a poor optimum: keep the best of a few
        c = _kmeans(x, _kmeans_pp(x, k, rng), p.iterations)
        score = float(np.asarray(x @ c.T).max(axis=1).sum())  # total cosine to the nearest center
        if score > best_score + 1e-6:
            best, best_score = c, score
    c = best
    terms = {}
    for j in range(k):
        order = np.argsort(-c[j][: p.dims // 2])
        terms[f"c{j:02d}"] = [words[h] for h in order[:500] if h in words][:p.top_terms]
    return {"idf": idf, "centers": c, "terms": terms}


def assign(batch: pa.Table, model, p: ClusterParams) -> pa.Table:
    import ray

    m = ray.get(model) if isinstance(model, ray.ObjectRef) else model
    x = l2_rows(features(pc.fill_null(batch.column("text"), "").to_pylist(), p.dims, p.max_chars)
                .multiply(m["idf"]).tocsr())
    sims = np.asarray(x @ m["centers"].T)
    labels = np.array([f"c{j:02d}" for j in range(m["centers"].shape[0])], dtype=object)[sims.argmax(axis=1)]
    batch = set_column(batch, p.column, pa.array(labels.tolist(), pa.string()))
    return set_column(batch, f"{p.column}_similarity", pa.array(sims.max(axis=1).astype(np.float32)))


def _sample(batch: pa.Table, seed: int, rate: float) -> pa.Table:
    import polars as pl

    h = pl.Series(batch.column("id").cast(pa.string()).combine_chunks()).hash(seed=seed).to_numpy()
    keep = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53) < rate
    return batch.filter(pa.array(keep)).select(["id", "text"])


def _fit_sample(p: ClusterParams, seed: int, *parts: pa.Table) -> tuple[dict, dict]:
    """The model from the seeded sample (in a Ray task): (idf and centers, what the clusters.json
    says: k, sample size, top terms)."""
    sample = pa.concat_tables(parts, promote_options="permissive") if parts else pa.table({"id": pa.array([], pa.string()),
                                                               "text": pa.array([], pa.string())})
    sample = sample.sort_by("id").slice(0, p.sample_size)  # order-independent
    texts = sample.column("text").to_pylist()
    # each hashed word dimension is named by its most frequent word in the sample
    words = _prepared(texts, p.max_chars).str.extract_all(WORD).explode().drop_nulls()
    freq = words.value_counts(name="n").sort(["n", words.name], descending=[True, False])
    names: dict[int, str] = {}
    for w in freq[words.name].to_list():
        names.setdefault(word_dim(w, p.dims), w)
    model = fit([t or "" for t in texts], names, p, seed)
    meta = {"k": int(model["centers"].shape[0]), "sample": len(texts), "top_terms": model["terms"]}
    return {"idf": model["idf"], "centers": model["centers"]}, meta


@register
class Cluster(Operator):
    """k-means domains for Branch-Train-Merge (c-BTM: Gururangan et al. 2023, "Scaling Expert
    Language Models with Unsupervised Domain Discovery").

    Rules: a seeded sample of about `sample_size` documents (hash of seed and id) is fitted in
    one Ray task (the driver gets only the top terms); vectors are hashed word unigrams (`\w+`)
    + character trigrams (not all whitespace), log counts x IDF of the sample, L2-normalized;
    spherical k-means with k-means++ seeding, `restarts` times, keeping the centers with the
    highest total cosine; every document is then assigned on the workers (the model goes
    through the object store) to its nearest center: `<column>` = c00..c{k-1},
    `<column>_similarity` = the cosine. The clusters' top terms (the centers' heaviest words) go to
    `<output>/<step>.clusters.json` so a person can name them.
    """

    name = "cluster"
    kind = "global"
    Params = ClusterParams
    needs = frozenset({"id", "text"})
    adds = frozenset({"domain", "domain_similarity"})
    resources = Resources(num_cpus=1, batch_size=2048)

    @classmethod
    def columns_added(cls, params):
        return frozenset({params.column, f"{params.column}_similarity"})

    def run(self, ds, ctx):
        import ray

        from pipeline.storage import Store

        p = self.params
        seed = p.seed if p.seed is not None else ctx.seed
        n = ds.count()
        rate = min(1.0, p.sample_size / max(n, 1))
        sample = ds.map_batches(_sample, fn_args=(seed, rate), batch_format="pyarrow").to_arrow_refs()
        # the fit runs in a task: the sample's vectors and k-means never enter the driver, which
        # receives only the clusters' top terms; the model goes to the workers by reference
        ref, meta = ray.remote(num_cpus=1, num_returns=2)(_fit_sample).remote(p, seed, *sample)
        meta = ray.get(meta)
        Store(ctx.output_dir).write_json(f"{ctx.step_id}.clusters.json", {**meta, "column": p.column})
        return ds.map_batches(assign, fn_args=(ref, p), batch_format="pyarrow", batch_size=self.resources.batch_size)
