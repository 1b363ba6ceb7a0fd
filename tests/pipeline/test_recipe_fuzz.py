"""Fuzzed recipes: every mutation of a valid recipe is answered by `gristmill validate` with a
message and exit code 2 (or 0 when the mutation happens to be valid), never a traceback."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import random
from pathlib import Path

import pytest
import yaml

from pipeline import cli

BASE = {
    "name": "fuzz",
    "input": {"format": "jsonl", "paths": ["IN"], "batch_rows": 64},
    "output": "OUT",
    "seed": 0,
    "steps": [
        {"id": "length", "op": "length_filter", "params": {"min_chars": 10}},
        {"id": "rep", "op": "gopher_repetition"},
        {"id": "dedup", "op": "exact_dedup", "input": "rep"},
        {"id": "pick", "op": "sample", "params": {"fraction": 0.5, "seed": 1}},
    ],
}
ODD_VALUES = [None, True, 0, -1, 10**30, 1e308, float("nan"), "", "x" * 5000, "ünï\u202ecode", [], [1, [2]],
              {}, {"a": {"b": None}}, "../../etc/passwd"]


def validate(text: bytes | str, tmp_path: Path) -> tuple[int, str]:
    p = tmp_path / "r.yaml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(["validate", str(p)])  # an exception here fails the test: that is the point
    return rc, err.getvalue() + out.getvalue()


def paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from paths(v, prefix + (i,))


def set_at(root, path, value, delete=False):
    node = root
    for p in path[:-1]:
        node = node[p]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value


@pytest.fixture
def base(tmp_path):
    (tmp_path / "in.jsonl").write_text(json.dumps({"id": "a", "text": "some text here"}) + "\n")
    r = copy.deepcopy(BASE)
    r["input"]["paths"] = [str(tmp_path / "in.jsonl")]
    r["output"] = str(tmp_path / "out")
    rc, msg = validate(yaml.safe_dump(r), tmp_path)
    assert rc == 0, msg
    return r


def check(rc: int, msg: str, what) -> None:
    assert rc in (0, 2), (what, rc, msg)
    assert "Traceback" not in msg, (what, msg)
    if rc == 2:
        assert msg.strip(), what


def test_wrong_types_and_missing_keys_everywhere(base, tmp_path):
    rng = random.Random(25)
    for path in list(paths(base))[1:]:
        for value in rng.sample(ODD_VALUES, 4):
            r = copy.deepcopy(base)
            set_at(r, path, value)
            rc, msg = validate(yaml.safe_dump(r, allow_unicode=True), tmp_path)
            check(rc, msg, (path, value))
        r = copy.deepcopy(base)
        set_at(r, path, None, delete=True)
        rc, msg = validate(yaml.safe_dump(r), tmp_path)
        check(rc, msg, (path, "deleted"))


def test_unknown_steps_cycles_and_huge_numbers(base, tmp_path):
    cases = {}
    r = copy.deepcopy(base)
    r["steps"][1]["op"] = "gopher_repetitoin"
    cases["typo op"] = (r, "Did you mean 'gopher_repetition'")
    r = copy.deepcopy(base)
    r["steps"][0]["input"] = "pick"
    cases["cycle"] = (r, "cycle")
    r = copy.deepcopy(base)
    r["steps"][2]["input"] = ["rep", "nowhere"]
    cases["unknown input"] = (r, "'nowhere' is not a step")
    r = copy.deepcopy(base)
    r["seed"] = 10**100
    cases["huge seed"] = (r, "seed")
    r = copy.deepcopy(base)
    r["input"]["batch_rows"] = 10**100
    cases["huge batch"] = (r, "batch_rows")
    r = copy.deepcopy(base)
    r["steps"] = r["steps"] * 3
    cases["duplicate ids"] = (r, "id already used")
    for what, (r, expect) in cases.items():
        rc, msg = validate(yaml.safe_dump(r), tmp_path)
        assert rc == 2 and expect in msg and "Traceback" not in msg, (what, msg)


def test_yaml_anchors_aliases_and_bytes(base, tmp_path):
    good = yaml.safe_dump(base)
    texts = {
        "non-utf8 bytes": good.encode().replace(b"fuzz", b"fu\xff\xfezz"),
        "latin-1 file": good.replace("fuzz", "füzz").encode("latin-1"),
        "NUL byte": good.encode().replace(b"fuzz", b"fu\x00zz"),
        "empty file": b"",
        "a list": b"- 1\n- 2\n",
        "a scalar": b"42\n",
        "tabs": good.replace("  ", "\t").encode(),
        "unclosed flow": b"name: x\ninput: {format: jsonl, paths: [a\n",
        "python tag": b"name: !!python/object/apply:os.system ['echo hi']\n",
        "billion laughs": (b"a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                           b"c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                           b"e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
                           b"name: x\ninput: {format: jsonl, paths: *f}\noutput: o\nsteps: *f\n"),
        "aliased step": good.replace("- id: length", "- &s\n  id: length").encode() + b"  - *s\n",
        "merge key": (good + "extra: &e {min_chars: 3}\n").encode(),
        "duplicate key": (good + "name: again\n").encode(),
        "deep nesting": b"name: " + b"[" * 1200 + b"]" * 1200 + b"\n",
    }
    for what, text in texts.items():
        rc, msg = validate(text, tmp_path)
        check(rc, msg, what)
        assert len(msg.splitlines()) <= 60, (what, msg[:2000])  # a short answer, even for billions of values
        if what in ("non-utf8 bytes", "latin-1 file", "empty file", "a list", "python tag", "billion laughs",
                    "aliased step", "merge key", "deep nesting"):
            assert rc == 2, (what, msg)


def test_random_byte_and_line_mutations(base, tmp_path):
    rng = random.Random(2025)
    good = yaml.safe_dump(base).encode()
    for i in range(150):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            pos = rng.randrange(len(data))
            if op < 0.4:
                data[pos] = rng.randrange(256)
            elif op < 0.7:
                del data[pos:pos + rng.randint(1, 20)]
            else:
                data[pos:pos] = rng.choice([b":", b"- ", b"&a ", b"*a", b"{", b"]", b"\n  ", b"'", b"!!binary ", b"\t"])
        rc, msg = validate(bytes(data), tmp_path)
        check(rc, msg, bytes(data))
