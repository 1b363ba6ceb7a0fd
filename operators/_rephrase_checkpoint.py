"""Generation checkpoint for `rephrase`: every finished generation is appended to a JSONL file as
soon as it completes, so a killed run resumes where it stopped and a rerun with the same
parameters generates nothing (datatrove #316, #398: regenerating everything after a crash).

Layout: `<dir>/<config hash>/<writer>.jsonl`, one file per worker process (no two writers share a
file, so appends never interleave). A line is `{"key": ..., "text": ..., "tokens": ...}` with key
= `<row id>\\t<style>\\t<chunk index>`; the config hash covers model, template and sampling
parameters, so a change of any of them starts a new directory instead of reusing stale text.
Requests that failed are not written: a rerun tries them again. A line torn by a kill is skipped.
The index kept in memory is key -> (file, offset), not the texts.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def chunk_key(row_id: str, style: str, chunk: int) -> str:
    return f"{row_id}\t{style}\t{chunk}"


class Checkpoint:
    def __init__(self, root: str, config: dict):
        self.dir = os.path.join(root, config_hash(config))
        os.makedirs(self.dir, exist_ok=True)
        meta = os.path.join(self.dir, "config.json")
        if not os.path.exists(meta):
            tmp = f"{meta}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(config, f, sort_keys=True, indent=1, default=str)
            os.replace(tmp, meta)
        self.index: dict[str, tuple[str, int]] = {}
        self._scan()
        self.path = os.path.join(self.dir, f"{os.getpid()}-{uuid.uuid4().hex[:12]}.jsonl")
        self._fh = None

    def _scan(self) -> None:
        for name in sorted(os.listdir(self.dir)):
            if not name.endswith(".jsonl"):
                continue
            path = os.path.join(self.dir, name)
            with open(path, "rb") as f:
                offset = 0
                for line in f:
                    if line.endswith(b"\n"):
                        try:
                            key = json.loads(line)["key"]
                        except (ValueError, KeyError):
                            key = None
                        if key is not None:
                            self.index.setdefault(key, (path, offset))
                    offset += len(line)

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def __len__(self) -> int:
        return len(self.index)

    def get(self, key: str) -> dict | None:
        where = self.index.get(key)
        if where is None:
            return None
        path, offset = where
        with open(path, "rb") as f:
            f.seek(offset)
            return json.loads(f.readline())

    def put(self, key: str, text: str, tokens: int) -> None:
        """Append one finished generation; flushed at once (a kill loses at most the line being written)."""
        if key in self.index:
            return
        if self._fh is None:
            self._fh = open(self.path, "ab")
        line = (json.dumps({"key": key, "text": text, "tokens": tokens}, ensure_ascii=False) + "\n").encode()
        offset = self._fh.tell()
        self._fh.write(line)
        self._fh.flush()
        self.index[key] = (self.path, offset)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
