"""Output storage on any pyarrow filesystem (local, s3://, gs://): atomic writes, listing.

Names under the output dir are built from step ids (validated) and hex keys, never from data,
so nothing a document contains can make a path escape the output dir.
"""
from __future__ import annotations

import io
import json
import os
import posixpath
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


class Store:
    def __init__(self, root: str):
        if "://" in root:
            self.fs, self.root = pafs.FileSystem.from_uri(root)
        else:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(root)
        # what workers get: absolute, since a relative path would resolve against their own cwd
        self.uri = root if "://" in root else self.root

    def path(self, *parts: str) -> str:
        for p in parts:
            if p.startswith("/") or ".." in p.split("/"):
                raise ValueError(f"refusing path part {p!r}: it would leave the output dir")
        return posixpath.join(self.root, *parts)

    def makedirs(self, *parts: str) -> str:
        p = self.path(*parts)
        self.fs.create_dir(p, recursive=True)
        return p

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Atomic: write a temp file beside the target, then rename over it."""
        final = self.path(rel)
        self.fs.create_dir(posixpath.dirname(final), recursive=True)
        tmp = posixpath.join(posixpath.dirname(final), f".tmp-{uuid.uuid4().hex}-{posixpath.basename(final)}")
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, final)

    def write_json(self, rel: str, obj) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=1, sort_keys=True, default=str).encode())

    def read_json(self, rel: str):
        with self.fs.open_input_stream(self.path(rel)) as f:
            return json.loads(f.read())

    def write_table(self, rel: str, table: pa.Table) -> None:
        buf = io.BytesIO()
        write_parquet(table, buf)
        self.write_bytes(rel, buf.getvalue())

    def list(self, rel: str, suffix: str = "") -> list[str]:
        """Files directly under rel (sorted, temp files skipped), as full paths."""
        sel = pafs.FileSelector(self.path(rel), allow_not_found=True)
        out = [i.path for i in self.fs.get_file_info(sel)
               if i.type == pafs.FileType.File and i.path.endswith(suffix)
               and not posixpath.basename(i.path).startswith((".", "_"))]
        return sorted(out)

    def rmtree(self, rel: str) -> None:
        p = self.path(rel)
        if self.fs.get_file_info(p).type == pafs.FileType.Directory:
            self.fs.delete_dir(p)

    def full(self, path: str) -> str:
        """A path from list() as something Ray / pyarrow readers accept."""
        return path if "://" not in self.uri else f"{self.uri.split('://')[0]}://{path}"


def write_parquet(table: pa.Table, where) -> None:
    """One fixed set of writer settings, so equal tables give byte-identical files."""
    table = table.replace_schema_metadata(None)
    pq.write_table(table, where, compression="zstd", row_group_size=64 * 1024,
                   write_statistics=True, store_schema=False)
