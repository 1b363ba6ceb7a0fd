"""cluster: k-means domains over hashed TF-IDF vectors (the c-BTM recipe), fitted on a sample."""
from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from pydantic import Field

from operators.base import Operator, Params, Resources, register, set_column

WORD = re.compile(r"\w+", re.UNICODE)


class ClusterParams(Params):
    k: int = Field(8, ge=2, le=1024, description="number of clusters (domains)")
    sample_size: int = Field(20000, ge=10, description="documents the model is fitted on (seeded by id)")
    dims: int = Field(1 << 18, ge=1024, description="hashed feature dimensions")
    iterations: int = Field(25, ge=1, le=500)
    column: str = Field("domain", description="column that receives the cluster label (c00, c01, ...)")
    top_terms: int = Field(10, ge=1, le=100, description="terms per cluster in <output>/<step>.clusters.json")
    seed: int | None = Field(None, description="sample and k-means++ seed (default: the recipe's)")
    max_chars: int = Field(5000, ge=100, description="characters of each document used for its vector")


def features(texts: list[str], dims: int, max_chars: int):
    """Hashed word unigrams + character trigrams (so languages written without spaces get
    features too), log-scaled counts, as a CSR matrix."""
    from scipy import sparse

    rows, cols = [], []
    for i, t in enumerate(texts):
        t = (t or "")[:max_chars].lower()
        toks = WORD.findall(t)
        grams = [t[j:j + 3] for j in range(0, max(0, len(t) - 2))]
        half = dims // 2  # words in the lower half, trigrams in the upper: top terms are words
        hs = [word_dim(w, dims) for w in toks] + \
             [half + xxhash.xxh32_intdigest(g.encode()) % half for g in grams if not g.isspace()]
        rows.extend([i] * len(hs))
        cols.extend(hs)
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


def fit(texts: list[str], words: dict, p: ClusterParams, seed: int) -> dict:
    """Spherical k-means (cosine) with k-means++ seeding on TF-IDF vectors of the sample."""
    x = features(texts, p.dims, p.max_chars)
    df = np.bincount(x.indices, minlength=p.dims)
    idf = (np.log((1 + x.shape[0]) / (1 + df)) + 1.0).astype(np.float32)
    x = l2_rows(x.multiply(idf).tocsr())
    rng = np.random.default_rng(seed)
    k = min(p.k, x.shape[0])
    centers = [x[rng.integers(x.shape[0])].toarray().ravel()]
    for _ in range(1, k):  # k-means++ on cosine distance
        sims = x @ np.stack(centers).T
        d = np.clip(1.0 - np.asarray(sims).max(axis=1), 0, None) ** 2
        centers.append(x[rng.choice(x.shape[0], p=d / d.sum()) if d.sum() > 0 else rng.integers(x.shape[0])]
                       .toarray().ravel())
    c = np.stack(centers).astype(np.float32)
    for _ in range(p.iterations):
        assign = np.asarray((x @ c.T)).argmax(axis=1)
        new = np.zeros_like(c)
        for j in range(k):
            members = x[assign == j]
            if members.shape[0]:
                new[j] = np.asarray(members.sum(axis=0)).ravel()
            else:
                new[j] = c[j]
        new /= np.maximum(np.linalg.norm(new, axis=1, keepdims=True), 1e-12)
        if np.allclose(new, c):
            break
        c = new
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


@register
class Cluster(Operator):
    """k-means domains for Branch-Train-Merge (c-BTM: Gururangan et al. 2023, "Scaling Expert
    Language Models with Unsupervised Domain Discovery").

    Rules: a seeded sample of about `sample_size` documents (hash of seed and id) is brought to
    the driver (bounded by sample_size, not the corpus); vectors are hashed word unigrams +
    character trigrams, log counts x IDF of the sample, L2-normalized; spherical k-means with
    k-means++ seeding; every document is then assigned on the workers (the model goes through
    the object store) to its nearest center: `<column>` = c00..c{k-1}, `<column>_similarity` =
    the cosine. The clusters' top terms (the centers' heaviest words) go to
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
        sample = ds.map_batches(_sample, fn_args=(seed, rate), batch_format="pyarrow").take_all()
        sample = sorted(sample, key=lambda r: r["id"])[: p.sample_size]  # order-independent
        texts = [r["text"] or "" for r in sample]
        words: dict[int, str] = {}
        counts: dict[str, int] = {}
        for t in texts:
            for w in WORD.findall(t[:p.max_chars].lower()):
                counts[w] = counts.get(w, 0) + 1
        for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            words.setdefault(word_dim(w, p.dims), w)
        model = fit(texts, words, p, seed)
        Store(ctx.output_dir).write_json(f"{ctx.step_id}.clusters.json",
                                         {"k": int(model["centers"].shape[0]), "sample": len(texts),
                                          "column": p.column, "top_terms": model["terms"]})
        ref = ray.put({"idf": model["idf"], "centers": model["centers"]})
        return ds.map_batches(assign, fn_args=(ref, p), batch_format="pyarrow", batch_size=self.resources.batch_size)
