"""cluster: k-means domains separate what differs (languages, scripts) and are deterministic."""
from __future__ import annotations

import collections
import json

import pyarrow as pa

from operators.base import RunContext
from operators.cluster import Cluster
from pipeline.samples import multilingual_docs


def purity(clusters, labels) -> float:
    by = collections.defaultdict(collections.Counter)
    for c, l in zip(clusters, labels):
        by[c][l] += 1
    return sum(c.most_common(1)[0][1] for c in by.values()) / len(clusters)


def test_clusters_separate_languages_and_name_their_terms(ray_session, tmp_path):
    import ray.data

    docs = [d for d in multilingual_docs(600, seed=4) if d["lang"] in ("en", "ru", "zh")]
    table = pa.table({"id": [d["id"] for d in docs], "text": [d["text"] for d in docs]})
    labels = [d["lang"] for d in docs]
    runs = []
    for blocks in (1, 3):  # the same labels however the data is split
        ds = ray.data.from_arrow(table).repartition(blocks)
        out = Cluster(k=3, sample_size=200, seed=1).run(ds, RunContext(step_id="dom", output_dir=str(tmp_path)))
        got = pa.concat_tables(ray_session.get(out.to_arrow_refs())).sort_by("id")
        runs.append(got.column("domain").to_pylist())
    assert runs[0] == runs[1]
    assert purity(runs[0], [labels[i] for i in sorted(range(len(docs)), key=lambda i: docs[i]["id"])]) >= 0.95
    terms = json.loads((tmp_path / "dom.clusters.json").read_text())["top_terms"]
    assert len(terms) == 3 and all(len(t) >= 3 for t in terms.values())
    assert any(any(ch.isascii() for w in ts for ch in w) for ts in terms.values())  # an English cluster


def test_partitions_by_cluster_carry_the_top_terms(ray_session, tmp_path):
    """c-BTM end to end in-process: cluster -> tokens -> mixture partition_by the cluster column:
    each domain's shard set names its cluster's top terms (from <output>/<step>.clusters.json)."""
    import ray.data

    from operators.mixture import Mixture
    from operators.tokenize import DEFAULT_TOKENIZER, load_tokenizer

    docs = [d for d in multilingual_docs(300, seed=5) if d["lang"] in ("en", "ru", "zh")]
    table = pa.table({"id": [d["id"] for d in docs], "text": [d["text"] for d in docs]})
    ctx = RunContext(step_id="dom", output_dir=str(tmp_path))
    clustered = pa.concat_tables(ray_session.get(
        Cluster(k=3, sample_size=100, seed=1).run(ray.data.from_arrow(table), ctx).to_arrow_refs()))
    tok, _ = load_tokenizer(DEFAULT_TOKENIZER)
    ids = [e.ids for e in tok.encode_batch(clustered.column("text").to_pylist())]
    clustered = clustered.append_column("tokens", pa.array(ids, pa.list_(pa.int32()))) \
        .append_column("n_tokens", pa.array([len(i) for i in ids], pa.int64()))
    Mixture(group_by="domain", partition_by="domain", layout="mixed").run(
        ray.data.from_arrow(clustered), RunContext(step_id="mix", output_dir=str(tmp_path)))
    terms = json.loads((tmp_path / "dom.clusters.json").read_text())["top_terms"]
    listing = json.loads((tmp_path / "mix.partitions" / "partitions.json").read_text())
    labels = clustered.column("domain").to_pylist()
    assert {e["value"] for e in listing["partitions"]} == set(labels)
    for e in listing["partitions"]:
        man = json.loads((tmp_path / "mix.partitions" / e["dir"] / "manifest.json").read_text())
        assert man["top_terms"] == e["top_terms"] == terms[e["value"]] and man["terms_from"] == "dom.clusters.json"
        assert man["docs"] == labels.count(e["value"])
