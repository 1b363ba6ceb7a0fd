"""megatron-core's indexed dataset format (`.bin` + `.idx`), written with numpy, and a small reader
for `gristmill shards` (tests read our files with megatron-core's own IndexedDataset instead).

Layout (megatron/core/datasets/indexed_dataset.py, `_IndexWriter` / `_IndexReader`):

- `.bin`: every sequence's token ids back to back, in the index's dtype, nothing else.
- `.idx`: b"MMIDIDX\\x00\\x00", version <Q 1, dtype code <B, sequence count <Q, document count <Q
  (= documents + 1), then int32 sequence lengths, int64 byte offsets of each sequence in `.bin`,
  int64 document indices (0, then the sequence count after each document).

One sequence per document. megatron-core picks uint16 for vocabularies below 65,500 and int32
above (`DType.optimal_dtype`; it has no uint32 code), so do we.
"""
from __future__ import annotations

import struct

import numpy as np

INDEX_HEADER = b"MMIDIDX\x00\x00"
DTYPE_CODES = {np.dtype(np.uint8): 1, np.dtype(np.int8): 2, np.dtype(np.int16): 3, np.dtype(np.int32): 4,
               np.dtype(np.int64): 5, np.dtype(np.float64): 6, np.dtype(np.float32): 7, np.dtype(np.uint16): 8}
CODE_DTYPES = {v: k for k, v in DTYPE_CODES.items()}


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """megatron-core's choice (DType.optimal_dtype): uint16 below 65,500 token ids, else int32."""
    return np.dtype(np.uint16) if vocab_size < 65500 else np.dtype(np.int32)


def encode_index(lengths: np.ndarray, dtype: np.dtype) -> bytes:
    """The `.idx` bytes for sequences of these lengths (one sequence per document)."""
    lengths = np.asarray(lengths, dtype=np.int32)
    n = len(lengths)
    pointers = np.zeros(n, dtype=np.int64)
    if n > 1:
        np.cumsum(lengths[:-1].astype(np.int64) * dtype.itemsize, out=pointers[1:])
    doc_idx = np.arange(n + 1, dtype=np.int64)
    head = INDEX_HEADER + struct.pack("<Q", 1) + struct.pack("<B", DTYPE_CODES[np.dtype(dtype)])
    head += struct.pack("<Q", n) + struct.pack("<Q", n + 1)
    return head + lengths.tobytes() + pointers.tobytes() + doc_idx.tobytes()


def encode_bin(flat_tokens: np.ndarray, dtype: np.dtype) -> bytes:
    """The `.bin` bytes: token ids in `dtype`; ids that do not fit are an error, never wrapped."""
    flat = np.asarray(flat_tokens)
    if flat.size:
        lo, hi = int(flat.min()), int(flat.max())
        info = np.iinfo(dtype)
        if lo < info.min or hi > info.max:
            raise ValueError(f"token ids {lo}..{hi} do not fit in {np.dtype(dtype).name}: "
                             "the tokenizer's vocabulary is larger than the one the shards were sized for")
    return flat.astype(dtype, copy=False).tobytes()


def write_indexed(store, rel_prefix: str, flat_tokens: np.ndarray, lengths: np.ndarray, dtype: np.dtype) -> None:
    """Write `<rel_prefix>.bin` then `<rel_prefix>.idx` through the store (each atomically:
    temp file + rename), so a reader never sees half a file; `.idx` last marks the pair complete."""
    store.write_bytes(rel_prefix + ".bin", encode_bin(flat_tokens, dtype))
    store.write_bytes(rel_prefix + ".idx", encode_index(lengths, dtype))


class IndexedShard:
    """Read-only view of one `.bin/.idx` pair (memory-mapped), for inspection from the CLI."""

    def __init__(self, prefix: str):
        with open(prefix + ".idx", "rb") as f:
            head = f.read(9 + 8 + 1 + 8 + 8)
        if head[:9] != INDEX_HEADER:
            raise ValueError(f"{prefix}.idx: not a megatron indexed dataset (bad header {head[:9]!r})")
        version, = struct.unpack("<Q", head[9:17])
        if version != 1:
            raise ValueError(f"{prefix}.idx: unsupported version {version}")
        self.dtype = CODE_DTYPES[head[17]]
        n, ndocs = struct.unpack("<QQ", head[18:34])
        off = 34
        idx = np.memmap(prefix + ".idx", mode="r", dtype=np.uint8)
        self.lengths = np.frombuffer(idx, dtype=np.int32, count=n, offset=off)
        self.pointers = np.frombuffer(idx, dtype=np.int64, count=n, offset=off + 4 * n)
        self.document_indices = np.frombuffer(idx, dtype=np.int64, count=ndocs, offset=off + 12 * n)
        self.bin = np.memmap(prefix + ".bin", mode="r", dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.frombuffer(self.bin, dtype=self.dtype, count=int(self.lengths[i]), offset=int(self.pointers[i]))

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum(dtype=np.int64))


# -- `gristmill shards DIR` ----------------------------------------------------------------------
def find_manifest_dir(path: str) -> str:
    """DIR itself when it holds manifest.json, else the one `<step>.shards/` directory under it
    (a run's output dir)."""
    import glob
    import os

    if os.path.isfile(os.path.join(path, "manifest.json")):
        return path
    found = sorted(glob.glob(os.path.join(path, "*.shards", "manifest.json")))
    if len(found) == 1:
        return os.path.dirname(found[0])
    if not found:
        raise FileNotFoundError(f"{path}: no manifest.json here nor in a <step>.shards/ directory below it")
    raise FileNotFoundError(f"{path}: several shard sets ({', '.join(os.path.dirname(f) for f in found)}); "
                            "name one")


def format_shards(path: str, peek: int = 2, shard: str | None = None, max_chars: int = 300) -> str:
    """The manifest as tables (groups, phases, shards) and the first `peek` documents of a shard
    decoded with the manifest's tokenizer (same resolution as the tokenize step)."""
    import json
    import os

    root = find_manifest_dir(path)
    with open(os.path.join(root, "manifest.json")) as f:
        man = json.load(f)
    tok = man.get("tokenizer", {})
    lines = [f"{root}: {man.get('format', '')}",
             f"tokenizer {tok.get('name')} (vocab {tok.get('vocab_size')}, sha256 {str(tok.get('sha256'))[:12]}), "
             f"dtype {man.get('dtype')}, BOS {man.get('bos_id')}, EOS {man.get('eos_id')}, layout {man.get('layout')}, "
             f"group_by {man.get('group_by')}, seed {man.get('seed')}",
             "", f"{'group':<16} {'docs avail':>11} {'tokens avail':>13} {'tokens out':>12} {'epochs':>7} "
             f"{'target w':>9} {'realized w':>10}"]
    if "partition_by" in man:  # a partition's shard set (mixture partition_by): each document once
        lines.insert(2, f"partition {man['partition_by']} = {man['value']!r}: {man['docs']:,} docs, "
                        f"{man['tokens']:,} tokens" + (f"; top terms {', '.join(man['top_terms'])}"
                                                       if man.get("top_terms") else ""))
    for g, v in man.get("groups", {}).items():
        tw, rw = v.get("target_weight"), v.get("realized_weight")
        docs, tokens = v.get("docs_available", v.get("docs")), v.get("tokens_available", v.get("tokens"))
        lines.append(f"{g:<16} {docs:>11,} {tokens:>13,} {v.get('tokens_emitted', tokens):>12,} "
                     f"{v.get('epochs', 1.0):>7.3f} {'' if tw is None else f'{tw:.4f}':>9} "
                     f"{'' if rw is None else f'{rw:.4f}':>10}")
    phases = man.get("phases")
    shard_lists = []
    if phases:
        lines += ["", f"{'phase':<10} {'method':<22} {'tokens':>12}  dir"]
        for ph in phases:
            lines.append(f"{ph['name']:<10} {ph['method']:<22} {ph['tokens_emitted']:>12,}  {ph['dir']}")
            with open(os.path.join(root, ph["dir"], "manifest.json")) as f:
                shard_lists += [dict(s, path=f"{ph['dir']}/{s['path']}") for s in json.load(f)["shards"]]
    else:
        shard_lists = man.get("shards", [])
    lines += ["", f"{'shard':<40} {'docs':>9} {'tokens':>12}"]
    for s in shard_lists:
        lines.append(f"{s['path']:<40} {s['docs']:>9,} {s['tokens']:>12,}")
    if man.get("data_path") and not phases:
        lines += ["", "Megatron --data-path:",
                  " ".join(w if i % 2 == 0 and man.get("blend") else os.path.join(root, w)
                           for i, w in enumerate(man["data_path"].split()))]
    for note in man.get("notes", []):
        lines.append(f"note: {note}")
    if peek and shard_lists:
        target = shard or shard_lists[0]["path"]
        ds = IndexedShard(os.path.join(root, target))
        decode = _decoder(tok)
        lines += ["", f"{target}: {len(ds):,} sequences, {ds.num_tokens:,} tokens ({ds.dtype.name}); "
                      f"first {min(peek, len(ds))}:"]
        for i in range(min(peek, len(ds))):
            ids = ds[i]
            text = decode(ids.tolist()) if decode else " ".join(map(str, ids[:40].tolist()))
            text = text.replace("\n", " ")
            lines.append(f"  [{i}] {len(ids)} tokens: {text[:max_chars]}{'...' if len(text) > max_chars else ''}")
    return "\n".join(lines)


def _decoder(tok_info: dict):
    """A decode function from the tokenizer the manifest names, or None when it is not here."""
    import os

    try:
        import tokenizers
    except ImportError:
        return None
    name = tok_info.get("name") or ""
    cache = os.environ.get("GRISTMILL_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "gristmill"))
    candidates = [name, os.path.join(cache, "tokenizers", str(tok_info.get("sha256", ""))[:24], "tokenizer.json")]
    for c in candidates:
        if c and c.endswith(".json") and os.path.isfile(c):
            t = tokenizers.Tokenizer.from_file(c)
            return lambda ids: t.decode(ids, skip_special_tokens=True)
        if c and os.path.isdir(c) and os.path.isfile(os.path.join(c, "tokenizer.json")):
            t = tokenizers.Tokenizer.from_file(os.path.join(c, "tokenizer.json"))
            return lambda ids: t.decode(ids, skip_special_tokens=True)
    return None
