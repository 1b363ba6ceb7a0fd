"""The shards load in megatron-core itself: IndexedDataset decodes documents back to their text,
and the manifest's blend, built with BlendedMegatronDatasetBuilder + GPTDataset, gives per-group
sample shares within 2% of the mixture's targets. megatron-core 0.16.1 (pinned test dependency)
runs on CPU once a one-process gloo group exists."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators.base import RunContext
from operators.mixture import Mixture
from operators.tokenize import Tokenize, load_tokenizer

megatron = pytest.importorskip("megatron.core.datasets.indexed_dataset")


def two_group_corpus(n: int = 400) -> pa.Table:
    rng = np.random.default_rng(7)
    words = {"a": "alpha beta gamma delta epsilon zeta eta theta".split(),
             "b": "rouge vert bleu jaune noir blanc gris violet".split()}
    ids, texts, groups = [], [], []
    for i in range(n):
        g = "a" if i % 2 else "b"
        ids.append(f"d{i:05d}")
        texts.append(" ".join(rng.choice(words[g], int(rng.integers(5, 60)))) + f" {i}.")
        groups.append(g)
    return Tokenize()(pa.table({"id": ids, "text": texts, "source": groups}))


@pytest.fixture(scope="module")
def shards(ray_session, tmp_path_factory):
    import ray.data

    out = tmp_path_factory.mktemp("blend")
    table = two_group_corpus()
    ds = Mixture(group_by="source", weights={"a": 0.3, "b": 0.7}, max_epochs=4, shard_tokens=3000).run(
        ray.data.from_arrow(table), RunContext(step_id="mix", output_dir=str(out)))
    ray_session.get(ds.to_arrow_refs())
    root = out / "mix.shards"
    return table, root, json.loads((root / "manifest.json").read_text())


def test_indexed_dataset_decodes_documents_back_to_text(shards):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    table, root, manifest = shards
    tok, _ = load_tokenizer(manifest["tokenizer"]["name"])
    text_of = dict(zip(table.column("id").to_pylist(), table.column("text").to_pylist()))
    assert manifest["dtype"] == "uint16"
    checked = 0
    for shard in manifest["shards"]:
        prefix = str(root / shard["path"])
        ds = IndexedDataset(prefix)
        docs = pq.read_table(prefix + ".docs.parquet")
        assert len(ds) == docs.num_rows == shard["docs"]
        assert int(ds.sequence_lengths.sum()) == shard["tokens"]
        for i in range(0, len(ds), max(1, len(ds) // 10)):
            ids = ds[i].tolist()
            assert ids[0] == manifest["bos_id"] and ids[-1] == manifest["eos_id"]
            assert tok.decode(ids, skip_special_tokens=True) == text_of[docs.column("id")[i].as_py()]
            checked += 1
    assert checked >= 10


def test_megatron_blend_realizes_target_shares(shards, tmp_path):
    import torch.distributed as dist
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.tokenizers import MegatronTokenizer

    table, root, manifest = shards
    assert {g: v["target_weight"] for g, v in manifest["groups"].items()} == {"a": 0.3, "b": 0.7}
    for g in ("a", "b"):  # the realized token shares follow the target, within a document or so
        assert abs(manifest["groups"][g]["realized_weight"] - manifest["groups"][g]["target_weight"]) < 0.01
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
        dist.init_process_group("gloo", rank=0, world_size=1)
    tokenizer = MegatronTokenizer.from_pretrained(
        manifest["tokenizer"]["file"], metadata_path={"library": "sentencepiece"})
    weights = [w for w, _ in manifest["blend"]]
    prefixes = [str(root / p) for _, p in manifest["blend"]]
    config = GPTDatasetConfig(random_seed=1, sequence_length=64, blend=(prefixes, weights), split="100,0,0",
                              tokenizer=tokenizer, reset_position_ids=False, reset_attention_mask=False,
                              eod_mask_loss=False, path_to_cache=str(tmp_path / "cache"))
    n_samples = manifest["tokens_emitted"] // 65
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [n_samples, 0, 0], lambda: True, config).build()
    group_of = [p.split("/")[0] for _, p in manifest["blend"]]
    picked = np.asarray(train.dataset_index[:n_samples])
    share_a = float(np.isin(picked, [i for i, g in enumerate(group_of) if g == "a"]).mean())
    assert abs(share_a - 0.3) < 0.02, share_a
    sample = train[0]
    assert sample["tokens"].shape[0] == 64
