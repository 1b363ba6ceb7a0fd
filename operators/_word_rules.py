"""spaCy's tokenizer rules per language, extracted once per machine and kept on disk, and a
pure-Python copy of spaCy's ``Tokenizer`` algorithm that runs over them without spaCy.

Why: the word splitter (``operators._words``) used to build ``spacy.blank(code)`` in every worker
process for every language it met. That costs CPU seconds before the first document: importing
spaCy pulls in thinc and with it torch (~4 s), French compiles a 1.4 MB ``token_match`` regex
(~4-5 s), Indonesian loads 16k special cases (~5 s), Malay 9k (~3.5 s), Dutch 4.7k (~1 s); then
the splitter derives its own patterns from them (a spaCy tokenizer run over every special case).
All of it is a pure function of (spaCy version, language), so it is built once per machine and
read back by every later process.

The cache: one file per entry (``rules-<code>``: a language's rules; ``lang-<code>``: whether
spaCy has the language; ``common``: language-independent constants) named with a fingerprint of
the spaCy version, the Python version and its regex engine's code format, and a hash of this
module and ``operators/_words.py`` (the conversion code): changing any of them starts afresh.
Folder: ``$GRISTMILL_WORDS_CACHE`` if set, else ``$GRISTMILL_CACHE/words``, else
``~/.cache/gristmill/words``. A file is one header line (format and the SHA-256 of the rest) and
a JSON body. It is written to a temporary file and renamed, so a reader never sees a partial file;
one that fails the checksum, does not parse or lacks a field is rebuilt and rewritten, never used.
If the folder cannot be written the rules are built in memory (the old cost, nothing worse).

Python's own regexes (prefix / suffix / infix search, token_match, url_match) are stored with
their compiled ``sre`` code, so a process gets them without re-running Python's regex compiler
(French's token_match: ~5 s to compile, 0.02 s from its code). The code is checked against the
freshly compiled pattern on probe strings when the entry is built; if ``_sre.compile`` refuses it
(another Python), the pattern is compiled normally.

``PyTokenizer`` is spaCy's ``Tokenizer.__call__`` for one whitespace-free chunk (spaCy 3.x's
``_split_affixes`` / ``_attach_tokens`` / ``_apply_special_cases``, same branch order), checked
token for token against spaCy in tests/operators/test_words_cache.py.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import pathlib
import re
import sys
import tempfile
from typing import Callable

log = logging.getLogger(__name__)

FORMAT = 1
_HERE = pathlib.Path(__file__).resolve().parent
# counters for tests and benchmarks: entries built (spaCy ran) / read back from disk in this process
STATS = {"built": 0, "read": 0, "rejected": 0}


def cache_dir() -> pathlib.Path:
    if os.environ.get("GRISTMILL_WORDS_CACHE"):
        return pathlib.Path(os.environ["GRISTMILL_WORDS_CACHE"])
    root = os.environ.get("GRISTMILL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "gristmill")
    return pathlib.Path(root) / "words"


@functools.lru_cache(maxsize=1)
def fingerprint() -> str:
    """spaCy version, Python version + sre code format, and a hash of the conversion code."""
    import _sre
    from importlib.metadata import version

    h = hashlib.sha256()
    for name in ("_word_rules.py", "_words.py"):
        h.update((_HERE / name).read_bytes())
    py = f"py{sys.version_info[0]}{sys.version_info[1]}-sre{_sre.MAGIC}.{_sre.CODESIZE}"
    return f"spacy{version('spacy')}-{py}-{h.hexdigest()[:12]}"


def cached(name: str, build: Callable[[], dict], valid: Callable[[dict], bool]) -> dict:
    """The entry ``name`` from the disk cache if it is intact and ``valid``, else ``build()``
    (written back atomically for the next process)."""
    path = cache_dir() / f"{name}-{fingerprint()}.json"
    data = _read(path, valid)
    if data is not None:
        STATS["read"] += 1
        return data
    data = build()
    STATS["built"] += 1
    _write(path, data)
    return data


def _read(path: pathlib.Path, valid: Callable[[dict], bool]) -> dict | None:
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    try:
        head, _, body = raw.partition(b"\n")
        header = json.loads(head)
        if header.get("format") != FORMAT or header.get("sha256") != hashlib.sha256(body).hexdigest():
            raise ValueError("checksum or format mismatch")
        data = json.loads(body)
        if not isinstance(data, dict) or not valid(data):
            raise ValueError("missing or mistyped fields")
        return data
    except Exception as e:  # corrupt or foreign: rebuild, never trust it
        STATS["rejected"] += 1
        log.warning("word-rules cache %s unusable (%s): rebuilding it", path, e)
        return None


def _write(path: pathlib.Path, data: dict) -> None:
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    header = json.dumps({"format": FORMAT, "sha256": hashlib.sha256(body).hexdigest()}).encode()
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(header + b"\n" + body)
        os.replace(tmp, path)
        tmp = None
    except OSError as e:  # read-only home, full disk: the rules stay in memory only
        log.warning("word-rules cache %s not written (%s)", path, e)
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


# -- Python regexes with their compiled code ---------------------------------------------------
def pack_regex(rx: re.Pattern, probes: list[str]) -> dict:
    """``rx`` as JSON: pattern, flags and its sre code (checked to behave as ``rx`` on ``probes``)."""
    out = {"pattern": rx.pattern, "flags": rx.flags, "code": None}
    try:
        from re import _compiler, _parser

        tree = _parser.parse(rx.pattern, rx.flags)
        indexgroup = [None] * tree.state.groups
        for k, i in tree.state.groupdict.items():
            indexgroup[i] = k
        code = {"code": list(_compiler._code(tree, rx.flags)), "groups": tree.state.groups,
                "groupindex": dict(tree.state.groupdict), "indexgroup": indexgroup}
        copy = _from_code(rx.pattern, rx.flags, code)
        same = copy.flags == rx.flags and copy.groups == rx.groups and all(
            _span(copy.search(p)) == _span(rx.search(p)) and _span(copy.match(p)) == _span(rx.match(p))
            and [m.span() for m in copy.finditer(p)] == [m.span() for m in rx.finditer(p)]
            for p in probes)
        if same:
            out["code"] = code
    except Exception:  # another Python's internals: compile the pattern when loading
        pass
    return out


def _span(m):
    return None if m is None else m.span()


def _from_code(pattern: str, flags: int, code: dict) -> re.Pattern:
    import _sre

    return _sre.compile(pattern, flags, code["code"], code["groups"] - 1, code["groupindex"],
                        tuple(code["indexgroup"]))


def unpack_regex(d: dict | None) -> re.Pattern | None:
    if d is None:
        return None
    if d.get("code"):
        try:
            return _from_code(d["pattern"], d["flags"], d["code"])
        except Exception:
            pass
    return re.compile(d["pattern"], d["flags"])


# -- spaCy's tokenizer, from the extracted rules -------------------------------------------------
_REGEX_METHODS = {"prefix_search": "search", "suffix_search": "search", "infix_finditer": "finditer",
                  "token_match": "match", "url_match": "match"}


def tokenizer_spec(tok, special: dict[str, list[str]]) -> dict | None:
    """What ``PyTokenizer`` needs from a spaCy tokenizer: its five regexes (packed) and the
    special-case matcher's patterns. None if the tokenizer is not spaCy's plain ``Tokenizer``
    over compiled regexes (the splitter then keeps a spaCy tokenizer for its slow paths)."""
    from spacy.tokenizer import Tokenizer

    if type(tok) is not Tokenizer:
        return None
    rx = {}
    for attr, method in _REGEX_METHODS.items():
        f = getattr(tok, attr)
        if f is None:
            rx[attr] = None
            continue
        owner = getattr(f, "__self__", None)
        if not isinstance(owner, re.Pattern) or getattr(f, "__name__", "") != method:
            return None
        rx[attr] = owner
    # the special-case matcher (Tokenizer.add_special_case): a key's affix-only tokens, added when
    # the key has an affix or a space (faster_heuristics) or always (faster_heuristics off)
    bare = Tokenizer(tok.vocab, rules={}, prefix_search=tok.prefix_search, suffix_search=tok.suffix_search,
                     infix_finditer=tok.infix_finditer, token_match=tok.token_match, url_match=tok.url_match)
    matcher = []
    for key in sorted(special):
        if (not tok.faster_heuristics or tok.find_prefix(key) or tok.find_infix(key) or tok.find_suffix(key)
                or " " in key):
            matcher.append([key, [w.text for w in bare(key)]])
    # probes for the packed regexes: a spread of the special cases (Indonesian has 16k) and pieces
    keys = sorted(special)
    probes = keys[::max(1, len(keys) // 500)] + [p for _, pieces in matcher[:500] for p in pieces] + _PROBES
    return {"regex": {k: None if v is None else pack_regex(v, probes) for k, v in rx.items()},
            "matcher": matcher}


_PROBES = ["", "a", "A-b", "peut-être", "aujourd'hui", "(x)", "x.", "\"Hi!\"", "http://x.org/a?b=1", "3:00",
           "e.g.", "1,000.50", "l'homme", "-5", "don't", "...", "¿Qué?", "«Oui»", "C++", ":)", "a/b", "ÉTATS-UNIS"]


def valid_spec(spec) -> bool:
    if spec is None:
        return True
    if not isinstance(spec, dict) or not isinstance(spec.get("matcher"), list):
        return False
    rx = spec.get("regex")
    if not isinstance(rx, dict) or set(rx) != set(_REGEX_METHODS):
        return False
    for d in rx.values():
        if d is not None and not (isinstance(d, dict) and isinstance(d.get("pattern"), str)
                                  and isinstance(d.get("flags"), int)):
            return False
    return all(isinstance(m, list) and len(m) == 2 and isinstance(m[0], str) and isinstance(m[1], list)
               for m in spec["matcher"])


class PyTokenizer:
    """spaCy's rule-based ``Tokenizer`` for one chunk without whitespace, in Python."""

    def __init__(self, spec: dict, special: dict[str, list[str]]):
        self._spec = spec["regex"]
        self.special = special
        self._compiled: dict[str, re.Pattern | None] = {}
        # the special-case matcher: pattern token tuples by first token
        self._patterns: dict[str, list[tuple[str, ...]]] = {}
        for _key, pieces in spec["matcher"]:
            if pieces:
                self._patterns.setdefault(pieces[0], []).append(tuple(pieces))

    def _rx(self, name: str) -> re.Pattern | None:
        if name not in self._compiled:  # compiled on first use: most chunks never need infixes
            self._compiled[name] = unpack_regex(self._spec[name])
        return self._compiled[name]

    @property
    def token_match(self):
        rx = self._rx("token_match")
        return None if rx is None else rx.match

    def __call__(self, chunk: str) -> list[str]:
        """Token texts of ``chunk`` as ``nlp.tokenizer(chunk)`` gives them."""
        if not chunk:
            return []
        special = self.special
        if chunk in special:
            tokens = list(special[chunk])
        else:
            tokens = self._tokenize(chunk)
        if self._patterns:
            tokens = self._apply_special_cases(tokens)
        return tokens

    def _tokenize(self, s: str) -> list[str]:
        special = self.special
        tm = self._rx("token_match")
        pre_rx, suf_rx = self._rx("prefix_search"), self._rx("suffix_search")
        prefixes: list[str] = []
        suffixes: list[str] = []
        last = 0
        # Tokenizer._split_affixes
        while s and len(s) != last:
            if tm is not None and tm.match(s):
                break
            if s in special:
                break
            last = len(s)
            pre_len = 0
            if pre_rx is not None:
                m = pre_rx.search(s)
                pre_len = m.end() - m.start() if m is not None else 0
            if pre_len:
                prefix, minus_pre = s[:pre_len], s[pre_len:]
                if minus_pre and minus_pre in special:
                    s = minus_pre
                    prefixes.append(prefix)
                    break
            suf_len = 0
            if suf_rx is not None:
                m = suf_rx.search(s[pre_len:])
                suf_len = m.end() - m.start() if m is not None else 0
            if suf_len:
                suffix, minus_suf = s[-suf_len:], s[:-suf_len]
                if minus_suf and minus_suf in special:
                    s = minus_suf
                    suffixes.append(suffix)
                    break
            if pre_len and suf_len and pre_len + suf_len <= len(s):
                s = s[pre_len:-suf_len]
                prefixes.append(prefix)
                suffixes.append(suffix)
            elif pre_len:
                s = minus_pre
                prefixes.append(prefix)
            elif suf_len:
                s = minus_suf
                suffixes.append(suffix)
        # Tokenizer._attach_tokens
        tokens = prefixes
        if s:
            um = self._rx("url_match")
            if s in special:
                tokens.extend(special[s])
            elif (tm is not None and tm.match(s)) or (um is not None and um.match(s)):
                tokens.append(s)
            else:
                inf = self._rx("infix_finditer")
                matches = list(inf.finditer(s)) if inf is not None else []
                if not matches:
                    tokens.append(s)
                else:
                    start = 0
                    for m in matches:
                        a, b = m.start(), m.end()
                        if a == 0:
                            continue
                        if a != start:
                            tokens.append(s[start:a])
                        if a != b:
                            tokens.append(s[a:b])
                        start = b
                    if s[start:]:
                        tokens.append(s[start:])
        tokens.extend(reversed(suffixes))
        return tokens

    def _apply_special_cases(self, tokens: list[str]) -> list[str]:
        """Tokenizer._apply_special_cases: special cases found as token sequences (":)" split
        by the affix rules) are put back, longest first, then leftmost."""
        matches = set()
        for i, t in enumerate(tokens):
            for pat in self._patterns.get(t, ()):
                if tuple(tokens[i:i + len(pat)]) == pat:
                    matches.add((i, i + len(pat)))
        if not matches:
            return tokens
        # _filter_special_spans: by length, then start (ties: the leftmost), checking only the
        # span's first and last token against those already covered, as spaCy does
        seen: set[int] = set()
        kept = []
        for s, e in sorted(matches, key=lambda m: (m[1] - m[0], -m[0]), reverse=True):
            if s not in seen and e - 1 not in seen:
                kept.append((s, e))
            seen.update(range(s, e))
        kept.sort()
        out: list[str] = []
        i = 0
        for s, e in kept:
            if s < i:
                continue
            out.extend(tokens[i:s])
            text = "".join(tokens[s:e])
            out.extend(self.special.get(text, tokens[s:e]))
            i = e
        out.extend(tokens[i:])
        return out
