"""tokenize: the offline default is the real Mistral SentencePiece model; BOS/EOS rules; paths."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from operators.tokenize import Tokenize, TokenizeParams, add_specials, resolve_tokenizer

TEXTS = ["Hello world, Grüße aus München!", "", None, "数据清洗很重要。", "Ein\nzweiter  Absatz.\n\n"]


@pytest.fixture(scope="module")
def table():
    return pa.table({"id": [f"t{i}" for i in range(len(TEXTS))], "text": TEXTS})


def test_default_matches_sentencepiece_itself(table):
    import sentencepiece as spm

    op = Tokenize()
    out = op(table)
    sp = spm.SentencePieceProcessor(model_file=op.info["file"])  # the model file inside mistral-common
    bos, eos = sp.bos_id(), sp.eos_id()
    assert (op.info["bos_id"], op.info["eos_id"], op.info["vocab_size"]) == (bos, eos, 32000)
    for text, ids, n in zip(TEXTS, out.column("tokens").to_pylist(), out.column("n_tokens").to_pylist()):
        assert ids[0] == bos and ids[-1] == eos and n == len(ids)  # template BOS, EOS appended
        if "  " not in (text or "") and "\n" not in (text or ""):
            assert ids == [bos] + sp.encode(text or "") + [eos]
        else:  # runs of whitespace: the fast conversion may pick other pieces ("▁▁" for two
            # spaces), the text they decode to is the same
            assert sp.decode(ids) == sp.decode(sp.encode(text))
    assert out.column("tokens").type == pa.list_(pa.int32())


def test_bos_and_eos_switches(table):
    plain = Tokenize(bos=False, eos=False)(table).column("tokens").to_pylist()
    no_bos = Tokenize(bos=False)(table).column("tokens").to_pylist()
    forced = Tokenize(bos=True)(table).column("tokens").to_pylist()
    assert all(a + [2] == b for a, b in zip(plain, no_bos))
    assert all(b[0] == 1 and b[1:] == a for a, b in zip(no_bos, forced))
    assert plain[1] == [] and no_bos[1] == [2]


def test_tokenizer_json_by_path_gives_the_same_ids(table, tmp_path):
    path, info = resolve_tokenizer(TokenizeParams().tokenizer)  # the cached conversion
    by_path = Tokenize(tokenizer=path)(table).column("tokens")
    assert by_path.equals(Tokenize()(table).column("tokens"))
    with pytest.raises(ValueError, match="no such file"):
        TokenizeParams(tokenizer=str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="mistral-common has no data file"):
        TokenizeParams(tokenizer="mistral-common:nope.model")


def test_add_specials_vectorized_equals_a_loop():
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 6, 50)
    flat = rng.integers(3, 100, int(lengths.sum())).astype(np.int32)
    out, new_len = add_specials(flat, lengths, 1, 2)
    expect, pos = [], 0
    for n in lengths:
        expect += [1] + flat[pos:pos + n].tolist() + [2]
        pos += n
    assert out.tolist() == expect and (new_len == lengths + 2).all()
