"""zip_select: ZIP's stages with the reference's quirks fixed (each quirk has a test here),
budgets, groups, and the same result in-process and on Ray whatever the blocks and tasks."""
from __future__ import annotations

import random
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pydantic import ValidationError

from operators.base import DROP_REASON, RunContext
from operators.zip_select import (EMPTY, NOT_SELECTED, ZipSelect, compressor, conditional_sizes,
                                  select_group, solo_sizes)

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "vo", "shi", "den", "bar", "tel", "qui", "pos", "ama", "zer"]


def doc(seed: int, words: int = 160) -> str:
    """A distinct document: seeded pseudo-words (they share an alphabet, not passages)."""
    rng = random.Random(seed)
    return " ".join("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(words))


def pool_with_copies(n_unique: int, words: int = 160) -> tuple[list[str], dict[int, int]]:
    """n_unique distinct documents followed by one exact copy of each: copy index -> original."""
    texts = [doc(i, words) for i in range(n_unique)]
    return texts + texts, {n_unique + i: i for i in range(n_unique)}


def run_select(texts, budget, k1=10_000, k2=200, k3=100, units=None):
    b = [t.encode() for t in texts]
    units = np.ones(len(b), dtype=np.int64) if units is None else np.asarray(units)
    return select_group(b, solo_sizes(b), units, budget, k1, k2, k3)


def pairs_together(order, copy_of: dict[int, int]) -> int:
    s = set(order.tolist())
    return sum(1 for c, o in copy_of.items() if c in s and o in s)


# -- the reference's quirks, fixed --------------------------------------------------------------
def test_ratio_is_of_the_text_not_a_repr():
    texts = [doc(i, 40 + 20 * i) for i in range(6)]
    order, ratios = run_select(texts, 1)
    raw = [len(t.encode()) for t in texts]
    alone = [len(t.encode()) / len(compressor(b"").compress(t.encode())) for t in texts]
    assert order.tolist() == [int(np.argmin(alone))]
    assert ratios[0] == pytest.approx(alone[order[0]])
    # metadata never enters the score: a longer id or url changes nothing
    t = pa.table({"id": [f"a-very-long-identifier-{i:09d}" for i in range(6)], "text": texts,
                  "url": ["https://example.invalid/" + "x" * 500] * 6})
    out = ZipSelect(budget_docs=3).select(t)
    plain = ZipSelect(budget_docs=3).select(pa.table({"id": [f"a-very-long-identifier-{i:09d}" for i in range(6)],
                                                        "text": texts}))
    assert out.column("zip_ratio").equals(plain.column("zip_ratio"))
    assert raw  # (lengths differ, so the test would see a repr-sized effect)


def test_conditional_size_sees_the_whole_selection_not_32kb():
    texts = [doc(i).encode() for i in range(120)]
    selection = b"".join(t + b"\n" for t in texts)
    assert len(selection) > 3 * 32 * 1024
    first, last = texts[0], texts[-1]
    y_first, y_last = conditional_sizes(selection, [first, last])
    alone = len(compressor(b"").compress(first))
    assert y_first < 0.1 * alone and y_last < 0.1 * alone  # a copy of the oldest pick is still seen
    # zlib (the reference) forgets everything but the last 32 KB: the same copy costs ~ full size
    z = zlib.compressobj(9)
    z.compress(selection)
    z.flush(zlib.Z_SYNC_FLUSH)
    assert len(z.compress(first) + z.flush()) > 0.5 * len(zlib.compress(first, 9))


def test_selection_avoids_copies_beyond_zlib_window():
    texts, copy_of = pool_with_copies(60)
    order, _ = run_select(texts, 60, k3=10)  # 60 docs of ~1 KB: selection far beyond 32 KB
    assert len(order) == 60 and pairs_together(order, copy_of) == 0
    # the same greedy with the reference's zlib takes copies of picks it no longer sees
    b = [t.encode() for t in texts]
    zlib_order, _ = select_group(b, solo_sizes(b, "zlib"), np.ones(len(b)), 60, 10_000, 200, 10, backend="zlib")
    assert pairs_together(zlib_order, copy_of) > 0


def test_stage3_is_conditioned_on_earlier_rounds():
    # k2 = the whole pool, so only stage 3 can keep the copy of a doc picked in an earlier round
    # out (the reference's stage 3 compresses this round's picks only and takes it)
    texts, copy_of = pool_with_copies(10)
    order, _ = run_select(texts, 10, k1=20, k2=20, k3=2)
    assert pairs_together(order, copy_of) == 0


def test_unchosen_stage2_candidates_return_to_the_pool():
    texts = [doc(i, 30) for i in range(12)]
    # the reference marks all k2 candidates used each round: with k2 = 12 it would stop at 3
    order, _ = run_select(texts, 12, k1=12, k2=12, k3=3)
    assert sorted(order.tolist()) == list(range(12))


@pytest.mark.parametrize("budget", [7, 100, 1])
def test_document_budget_met_exactly(budget):
    texts = [doc(i, 20) for i in range(30)]
    order, ratios = run_select(texts, budget, k1=20, k2=10, k3=5)
    assert len(order) == min(budget, 30) == len(set(order.tolist())) == len(ratios)


def test_token_and_byte_budgets_never_overshoot():
    texts = [doc(i, 10 + (i * 7) % 50) for i in range(40)]
    tokens = [len(t.split()) for t in texts]
    t = pa.table({"id": [f"d{i:02d}" for i in range(40)], "text": texts, "n_tokens": tokens})
    for params, unit in (({"budget_tokens": 333}, tokens), ({"budget_bytes": 5000}, [len(x.encode()) for x in texts])):
        out = ZipSelect(k1=30, k2=10, k3=4, **params).select(t)
        kept = pc.is_null(out.column(DROP_REASON)).to_pylist()
        used = sum(u for u, k in zip(unit, kept) if k)
        budget = next(iter(params.values()))
        assert used <= budget
        assert all(budget - used < u for u, k in zip(unit, kept) if not k)  # nothing else fits


def test_small_pools_and_groups_smaller_than_k1():
    assert run_select([doc(1)], 5)[0].tolist() == [0]  # budget above the pool: all of it
    assert run_select([doc(1), doc(2)], 0)[0].tolist() == []
    assert run_select([], 3)[0].tolist() == []
    t = pa.table({"id": ["a", "b", "c"], "text": [doc(1), "", None]})
    out = ZipSelect(keep_fraction=1.0).select(t)
    assert out.column(DROP_REASON).to_pylist() == [None, EMPTY, EMPTY]
    assert out.column("zip_rank").to_pylist() == [0, None, None]


def test_selection_is_more_diverse_than_random():
    texts, copy_of = pool_with_copies(50)
    order, _ = run_select(texts, 50, k1=80, k2=30, k3=10)
    rng = np.random.default_rng(0)
    randoms = [pairs_together(rng.choice(100, 50, replace=False), copy_of) for _ in range(5)]
    assert pairs_together(order, copy_of) == 0 < min(randoms)

    def z9(idx):
        b = "\n".join(texts[i] for i in idx).encode()
        return len(b) / len(zlib.compress(b, 9))
    assert z9(order) < min(z9(rng.choice(100, 50, replace=False)) for _ in range(5))


def test_params_validate_before_any_work():
    assert ZipSelect().params.keep_fraction == 0.5
    with pytest.raises(ValidationError, match="one budget"):
        ZipSelect(budget_docs=3, keep_fraction=0.5)
    with pytest.raises(ValidationError, match="k3"):
        ZipSelect(k1=100, k2=10, k3=20)
    with pytest.raises(ValidationError):
        ZipSelect(keep_fraction=1.5)
    with pytest.raises(ValueError, match="group_by column 'lang'"):
        ZipSelect(group_by="lang").select(pa.table({"id": ["a"], "text": ["x"]}))


# -- groups, and the same result everywhere ----------------------------------------------------
def grouped_table() -> pa.table:
    texts, _ = pool_with_copies(45, words=60)
    rng = random.Random(3)
    ids = [f"doc-{i:03d}" for i in range(len(texts))]
    order = list(range(len(texts)))
    rng.shuffle(order)  # input order must not matter
    return pa.table({"id": [ids[i] for i in order], "text": [texts[i] for i in order],
                     "language": [["en", "de", "fr"][i % 3] for i in order]})


def chosen(t: pa.Table) -> list:
    kept = t.filter(pc.is_null(t.column(DROP_REASON))).sort_by("id")
    return list(zip(kept.column("id").to_pylist(), kept.column("zip_rank").to_pylist(),
                    kept.column("zip_ratio").to_pylist()))


def test_groups_are_selected_independently():
    t = grouped_table()
    op = ZipSelect(keep_fraction=0.3, group_by="language", k1=20, k2=8, k3=3)
    out = op.select(t)
    for lang in ("en", "de", "fr"):
        alone = op.select(t.filter(pc.equal(t.column("language"), lang)))
        assert chosen(alone) == [c for c in chosen(out) if c[0] in set(alone.column("id").to_pylist())]
        n = int(pc.sum(pc.equal(t.column("language"), lang)).as_py())
        assert sum(1 for c in chosen(alone)) == int(0.3 * n)
    assert set(out.column(DROP_REASON).to_pylist()) == {None, NOT_SELECTED}


def test_same_result_in_process_and_on_ray_for_any_blocks_and_tasks(ray_session, tmp_path, monkeypatch):
    import ray.data

    import operators.zip_select as zip_select

    t = grouped_table()
    params = dict(keep_fraction=0.3, group_by="language", k1=20, k2=8, k3=3)
    expected = chosen(ZipSelect(**params).select(t))
    runs = [  # (blocks of rows, stage-1 scoring chunk: 4 -> each round split over several tasks,
        # workers, whether the chosen ids go back by a join instead of a broadcast)
        ([t.slice(s, 7) for s in range(0, t.num_rows, 7)], 4, 1, False),
        ([t.slice(s, 40) for s in range(0, t.num_rows, 40)], 10_000, 2, True),
    ]
    for blocks, chunk, workers, join in runs:
        monkeypatch.setattr(zip_select, "BROADCAST_BYTES", -1 if join else zip_select.BROADCAST_BYTES)
        op = ZipSelect(scoring_chunk=chunk, scoring_tasks=3 if chunk < 10 else 1, **params)
        ds = op.run(ray.data.from_arrow(blocks), RunContext(step_id="z", output_dir=str(tmp_path), max_workers=workers))
        out = pa.concat_tables(ray.get(ds.to_arrow_refs()))
        assert out.num_rows == t.num_rows
        assert chosen(out) == expected
