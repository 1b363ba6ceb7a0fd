"""Cluster quality on ../shared/data/oscar (OSCAR sample + UDHR): purity and NMI of `cluster`'s
domains against the known language and source labels.

    .venv/bin/python tools/eval_clusters.py [K] [SAMPLE]      # default k=8, sample 2000
"""
import sys
import gzip, json, glob, time, collections, math
import pyarrow as pa, numpy as np
from pipeline.runtime import init_ray
init_ray(num_cpus=2, quiet=True)
import ray, ray.data
from operators.base import RunContext
from operators.cluster import Cluster
rows = []
for f in sorted(glob.glob("/work/shared/data/oscar/*.jsonl.gz")):
    for l in gzip.open(f, "rt"):
        r = json.loads(l); rows.append({"id": r["id"], "text": r["text"], "language": r.get("language"), "source": r.get("source")})
t = pa.Table.from_pylist(rows)
t0 = time.time()
out = Cluster(k=int(sys.argv[1]) if len(sys.argv) > 1 else 8, sample_size=int(sys.argv[2]) if len(sys.argv) > 2 else 2000).run(ray.data.from_arrow(t), RunContext(step_id="c", output_dir="/tmp/gristmill_eval_clusters"))
res = pa.concat_tables(ray.get(out.to_arrow_refs()))
print("time", time.time() - t0, res.num_rows)
def nmi(a, b):
    a = np.asarray(a); b = np.asarray(b); n = len(a)
    ca, cb = collections.Counter(a), collections.Counter(b); cab = collections.Counter(zip(a, b))
    mi = sum(v / n * math.log(v * n / (ca[x] * cb[y])) for (x, y), v in cab.items())
    ha = -sum(v / n * math.log(v / n) for v in ca.values()); hb = -sum(v / n * math.log(v / n) for v in cb.values())
    return mi / math.sqrt(ha * hb) if ha > 0 and hb > 0 else 0.0
def purity(clusters, labels):
    by = collections.defaultdict(collections.Counter)
    for c, l in zip(clusters, labels): by[c][l] += 1
    return sum(c.most_common(1)[0][1] for c in by.values()) / len(clusters)
d = res.column("domain").to_pylist()
for lab in ("source", "language"):
    L = res.column(lab).to_pylist()
    print(lab, "purity", round(purity(d, L), 3), "NMI", round(nmi(d, L), 3))
print(json.load(open("/tmp/gristmill_eval_clusters/c.clusters.json"))["top_terms"])
