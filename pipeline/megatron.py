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
