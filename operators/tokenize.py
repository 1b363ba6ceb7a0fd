"""tokenize: token ids per document with a Hugging Face fast tokenizer (+EOS), batched."""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
from itertools import chain

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from operators.base import Operator, Params, Resources, register, set_column

DEFAULT_TOKENIZER = "mistral-common:tokenizer.model.v1"
SPM_CONFIG = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
              "add_bos_token": True, "add_eos_token": False}


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("GRISTMILL_CACHE", pathlib.Path.home() / ".cache" / "gristmill"))


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _source_file(spec: str) -> pathlib.Path:
    """The file a tokenizer spec names: `mistral-common:<file>` (a model shipped in that PyPI
    package, offline), a tokenizer.json, a directory holding one (or a SentencePiece
    tokenizer.model), or a SentencePiece `.model` file."""
    if spec.startswith("mistral-common:"):
        import importlib.util

        found = importlib.util.find_spec("mistral_common")
        if found is None or not found.submodule_search_locations:
            raise ValueError(f"tokenizer {spec!r}: the mistral-common package is not installed "
                             "(pip install mistral-common), or give a tokenizer.json path")
        name = spec.split(":", 1)[1]
        path = pathlib.Path(list(found.submodule_search_locations)[0]) / "data" / name
        if not path.is_file() or "/" in name:
            avail = sorted(p.name for p in path.parent.glob("*.model*"))
            raise ValueError(f"tokenizer {spec!r}: mistral-common has no data file {name!r} "
                             f"(SentencePiece models there: {', '.join(avail)})")
        return path
    path = pathlib.Path(spec).expanduser()
    if path.is_dir():
        for name in ("tokenizer.json", "tokenizer.model"):
            if (path / name).is_file():
                return path / name
        raise ValueError(f"tokenizer {spec!r}: the directory has neither tokenizer.json nor tokenizer.model")
    if not path.is_file():
        raise ValueError(f"tokenizer {spec!r}: no such file or directory (give a tokenizer.json, a "
                         f"directory with one, a SentencePiece .model, or {DEFAULT_TOKENIZER!r})")
    return path


def resolve_tokenizer(spec: str) -> tuple[str, dict]:
    """-> (path of a tokenizer.json that `tokenizers` loads directly, info for manifests).

    A SentencePiece model is converted once with transformers (LlamaTokenizer, which also sets
    the BOS template) and the resulting tokenizer.json cached under ~/.cache/gristmill/tokenizers/
    by the model's sha256, so actors load it in milliseconds afterwards."""
    src = _source_file(spec)
    sha = _sha256(src)
    if src.suffix == ".json":
        json_path = src
    else:
        json_path = cache_dir() / "tokenizers" / sha[:24] / "tokenizer.json"
        if not json_path.is_file():
            _convert_sentencepiece(src, json_path)
    return str(json_path), {"name": spec, "file": str(src), "sha256": sha}


def _convert_sentencepiece(model: pathlib.Path, json_path: pathlib.Path) -> None:
    import shutil
    import tempfile

    from transformers import AutoTokenizer

    json_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=json_path.parent) as tmp:
        shutil.copyfile(model, os.path.join(tmp, "tokenizer.model"))
        with open(os.path.join(tmp, "tokenizer_config.json"), "w") as f:
            json.dump(SPM_CONFIG, f)
        tok = AutoTokenizer.from_pretrained(tmp)
        if not getattr(tok, "is_fast", False):
            raise ValueError(f"{model}: transformers did not build a fast tokenizer from it")
        tok.backend_tokenizer.save(os.path.join(tmp, "tokenizer.json"))
        # several actors may convert at once: each renames its own complete file into place
        os.replace(os.path.join(tmp, "tokenizer.json"), json_path)


def load_tokenizer(spec: str):
    """-> (tokenizers.Tokenizer, info: name, file, sha256, vocab_size, bos_id, eos_id)."""
    import tokenizers

    path, info = resolve_tokenizer(spec)
    tok = tokenizers.Tokenizer.from_file(path)
    info["vocab_size"] = tok.get_vocab_size(with_added_tokens=True)
    info["bos_id"], info["eos_id"] = special_ids(tok, path)
    return tok, info


def special_ids(tok, path: str) -> tuple[int | None, int | None]:
    """BOS / EOS ids: from transformers' tokenizer_config.json beside the file when there is one,
    else the usual names."""
    names = {"bos": ["<s>", "<|begin_of_text|>", "<|startoftext|>", "<bos>"],
             "eos": ["</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>", "<|im_end|>"]}
    cfg = pathlib.Path(path).with_name("tokenizer_config.json")
    if cfg.is_file():
        conf = json.loads(cfg.read_text())
        for k in ("bos", "eos"):
            v = conf.get(f"{k}_token")
            v = v.get("content") if isinstance(v, dict) else v
            if isinstance(v, str):
                names[k].insert(0, v)
    found = []
    for k in ("bos", "eos"):
        ids = [tok.token_to_id(n) for n in names[k]]
        found.append(next((i for i in ids if i is not None), None))
    return found[0], found[1]


class TokenizeParams(Params):
    tokenizer: str = Field(DEFAULT_TOKENIZER, description="tokenizer.json, a directory with one, a SentencePiece "
                           ".model, or mistral-common:<file> (offline; default: Mistral's 32k SentencePiece v1)")
    eos: bool = Field(True, description="append the EOS id to every document (unless the template already does)")
    bos: bool | None = Field(None, description="None: as the tokenizer's template says; True: make sure each "
                             "document starts with BOS; False: no special tokens from the template")
    text_column: str = Field("text", description="column to tokenize")

    @field_validator("tokenizer")
    @classmethod
    def _exists(cls, v: str) -> str:
        _source_file(v)  # a missing file is a recipe error before any work
        return v


def lists_from_flat(flat: np.ndarray, lengths: np.ndarray) -> pa.ListArray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.int32()))


@register
class Tokenize(Operator):
    """Token ids per document with a Hugging Face fast tokenizer (`tokenizers`), + EOS.

    Rules: text is encoded with `encode_batch_fast` over the whole batch (Rust, no per-document
    Python call); special tokens follow the tokenizer's template (Llama/Mistral: BOS first) unless
    `bos` says otherwise; EOS is appended to every document so documents stay separable once a
    trainer packs them (datatrove #345: BOS is kept when EOS is appended); a null text tokenizes
    as an empty document (its special tokens only). Adds `tokens` (list<int32>) and `n_tokens`.
    The default tokenizer ships inside the mistral-common package (no Hub download); its
    SentencePiece model is converted to tokenizer.json once and cached.
    """

    name = "tokenize"
    kind = "map"
    Params = TokenizeParams
    needs = frozenset({"text"})
    adds = frozenset({"tokens", "n_tokens"})
    resources = Resources(num_cpus=1, batch_size=1024, actor=True)
    requires = ("tokenizers",)

    def setup(self) -> None:
        self.tok, self.info = load_tokenizer(self.params.tokenizer)
        p = self.params
        self.special = p.bos is not False
        probe = self.tok.encode("a", add_special_tokens=self.special).ids
        eos, bos = self.info["eos_id"], self.info["bos_id"]
        if p.eos and eos is None:
            raise ValueError(f"tokenizer {p.tokenizer!r} has no EOS token; set eos: false")
        if p.bos and bos is None:
            raise ValueError(f"tokenizer {p.tokenizer!r} has no BOS token; set bos: null or false")
        self.append_eos = p.eos and not (probe and probe[-1] == eos)
        self.prepend_bos = bool(p.bos) and not (probe and probe[0] == bos)

    def process(self, batch: pa.Table) -> pa.Table:
        texts = pc.fill_null(batch.column(self.params.text_column), "").to_pylist()
        encodings = self.tok.encode_batch_fast(texts, add_special_tokens=self.special)
        ids = [e.ids for e in encodings]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum()))
        if self.prepend_bos or self.append_eos:
            flat, lengths = add_specials(flat, lengths, self.info["bos_id"] if self.prepend_bos else None,
                                         self.info["eos_id"] if self.append_eos else None)
        batch = set_column(batch, "tokens", lists_from_flat(flat, lengths))
        return set_column(batch, "n_tokens", pa.array(lengths.astype(np.int32)))


def add_specials(flat: np.ndarray, lengths: np.ndarray, bos: int | None, eos: int | None):
    """Insert BOS before / EOS after every document of a flat id array, vectorized."""
    extra = (bos is not None) + (eos is not None)
    new_len = lengths + extra
    starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(new_len[:-1], out=starts[1:]) if len(lengths) > 1 else None
    out = np.empty(int(new_len.sum()), dtype=np.int32)
    body = np.ones(len(out), dtype=bool)
    if bos is not None:
        out[starts] = bos
        body[starts] = False
    if eos is not None:
        out[starts + new_len - 1] = eos
        body[starts + new_len - 1] = False
    out[body] = flat
    return out, new_len
