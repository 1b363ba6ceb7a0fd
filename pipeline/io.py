"""Readers (Parquet, JSONL[.gz|.zst], WARC/WET) and the deterministic Parquet writer.

Readers run as Ray tasks, one input file each, and yield Arrow batches of `batch_rows`; every
batch has `id` and `text`. An input without ids gets deterministic ids: `<file>:<line>` for JSONL
(1-based line, as in the messages), `<file>:<row>` for Parquet (0-based row, as in its messages).
Bad records become rows with `drop_reason` "input:..." (quarantined, counted, written to
rejected/read/), never a crash mid-run and never silently lost. Given ids repeated anywhere in a
run's input are found by a pre-pass (pipeline.unique_ids) and quarantined by the reader that
reads them; a reader called on its own checks within its file.
"""
from __future__ import annotations

import json
import logging
import os
import posixpath
import re
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from operators.base import DROP_REASON, mark_dropped, set_column
from pipeline.runtime import ray_data
from pipeline.unique_ids import DuplicateIds, duplicates_in_file

JSONL_LIFTED = ("url", "source", "language")  # JSONL fields promoted to columns; the rest go to `meta`
# Per-document size guard of the readers: a JSONL line (or a Parquet text) longer than this is
# quarantined (input:too_large); a JSONL line is streamed past, never parsed or buffered whole. WARC records have their own
# (pipeline.warc.MAX_RECORD) and html_extract a per-page one (max_page_bytes).
MAX_RECORD_BYTES = 16 << 20
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
log = logging.getLogger("gristmill.io")


def open_input(path: str):
    """A readable binary stream for a local path or URI, decompressed by what the bytes are (gzip,
    zstd magic numbers), not by what the extension says."""
    raw = _open_raw(path)
    head = raw.read(4)
    comp = _sniff_compression(head)
    raw.close()
    raw = _open_raw(path)
    if comp is None:
        return raw
    return pa.CompressedInputStream(raw, comp)


def _open_raw(path: str):
    if "://" in path:
        fs, p = pafs.FileSystem.from_uri(path)
    else:
        fs, p = pafs.LocalFileSystem(), os.path.abspath(path)
    return fs.open_input_stream(p, compression=None)


def _sniff_compression(head: bytes) -> str | None:
    if head[:2] == GZIP_MAGIC:
        return "gzip"
    if head[:4] == ZSTD_MAGIC:
        return "zstd"
    return None


def file_keys(files: list[str]) -> list[str]:
    """Short, unique, deterministic names for id generation: paths relative to their common dir."""
    if len(files) == 1:
        return [posixpath.basename(files[0])]
    common = posixpath.commonpath([f.split("://")[-1] for f in files])
    return [posixpath.relpath(f.split("://")[-1], common) for f in files]


def peek_columns(path: str, fmt: str, text_col: str | None = None) -> set[str] | None:
    """Columns the reader will produce for this file (before renaming), for recipe validation;
    None for a file with no record at all (0 bytes, blank lines only): it reads as zero rows.
    A Parquet ``text_col`` that is not a string column is an error (a config mistake)."""
    if "://" not in path and os.path.getsize(path) == 0:
        return None
    if fmt == "parquet":
        schema = pq.read_schema(path)
        if text_col in schema.names and not _is_string(schema.field(text_col).type):
            raise ValueError(f"column {text_col!r} is {schema.field(text_col).type}, not text; "
                             "set input.text_column to the column holding the documents")
        return set(schema.names)
    # the first record that is a JSON object; damaged stretches and bad lines are skipped here
    # (the reader quarantines them), so one bad line or a truncated file does not stop the run
    bad = 0
    for ev, _, payload in _line_events(_decompressed(path), MAX_RECORD_BYTES):
        if ev != "line" or not payload.strip():
            continue
        try:
            rec = json.loads(payload)
        except ValueError:
            rec = None
        if isinstance(rec, dict):
            return set(rec)
        bad += 1
        if bad >= 100:
            raise ValueError("none of its first 100 lines is a JSON object")
    return None


def _lines(stream) -> Iterator[bytes]:
    """Lines of a decompressed stream (no size guard: for validation peeks)."""
    rest = b""
    while True:
        chunk = stream.read(1 << 20)
        if not chunk:
            break
        pieces = (rest + chunk).split(b"\n") if rest else chunk.split(b"\n")
        rest = pieces.pop()
        yield from pieces
    if rest:
        yield rest


# -- decompression with byte offsets (JSONL) ------------------------------------------------------
class _Damage:
    """A stretch of a compressed file that cannot be read: (kind, compressed byte offset, detail)."""

    __slots__ = ("kind", "offset", "detail")

    def __init__(self, kind: str, offset: int, detail: str):
        self.kind, self.offset, self.detail = kind, offset, detail


def _decompressed(path: str) -> Iterator[bytes | _Damage]:
    """Decompressed chunks of a file; compression from the magic bytes (an extension that lies
    does not matter). gzip: every member in turn (concatenated members are one stream), a corrupt
    member is reported and reading resumes at the next member, a truncated last member is
    reported after what it held. zstd: every frame in turn; a truncated or corrupt frame is
    reported and ends the file (zstd has no resynchronisation point)."""
    from pipeline.warc import _Source, _StreamError

    raw = _open_raw(path)
    try:
        head = raw.read(4) or b""
        comp = _sniff_compression(head)
        if comp == "zstd":
            yield from _zstd_chunks(raw, head)
            return
        src = _Source(_Prepend(head, raw))
        while True:
            try:
                data = src.read()
            except _StreamError as e:
                yield _Damage(e.kind, e.offset, e.detail)
                continue
            if data is None:
                return
            if data:
                yield data
    finally:
        raw.close()


class _Prepend:
    """A stream with bytes already read put back in front."""

    def __init__(self, head: bytes, raw):
        self.head, self.raw = head, raw

    def read(self, n: int) -> bytes:
        if self.head:
            out, self.head = self.head, b""
            return out + (self.raw.read(n - len(out)) if n > len(out) else b"")
        return self.raw.read(n)


def _zstd_chunks(raw, head: bytes) -> Iterator[bytes | _Damage]:
    import zstandard

    pending, comp_off, frame_start = head, 0, 0
    d = None
    while True:
        if not pending:
            pending = raw.read(1 << 20) or b""
            if not pending:
                if d is not None:
                    yield _Damage("truncated_zstd", frame_start, "zstd frame ends early")
                return
        if d is None:
            if not pending.strip(b"\x00"):
                pending = b""
                continue
            frame_start = comp_off
            d = zstandard.ZstdDecompressor().decompressobj()
        try:
            out = d.decompress(pending)
        except zstandard.ZstdError as e:
            yield _Damage("corrupt_zstd", frame_start, str(e))
            return
        if d.eof:
            rest = d.unused_data
            d = None
        else:
            rest = b""
        comp_off += len(pending) - len(rest)
        pending = rest
        if out:
            yield out


def _line_events(chunks: Iterator[bytes | _Damage], max_bytes: int) -> Iterator[tuple]:
    """("line", lineno, bytes) | ("too_large", lineno, nbytes) | ("damage", lineno, _Damage).
    A line longer than ``max_bytes`` is streamed past without being buffered whole."""
    parts: list[bytes] = []
    plen = 0
    skipped = -1  # >= 0: inside an over-long line, this many bytes so far
    lineno = 0
    for chunk in chunks:
        if isinstance(chunk, _Damage):
            # the partial line before the damage is part of the damaged stretch
            parts, plen, skipped = [], 0, -1
            lineno += 1
            yield ("damage", lineno, chunk)
            continue
        pieces = chunk.split(b"\n")
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            if skipped >= 0:
                skipped += len(piece)
                if not last:
                    lineno += 1
                    yield ("too_large", lineno, skipped)
                    skipped = -1
                continue
            if last:
                if piece:
                    parts.append(piece)
                    plen += len(piece)
                    if plen > max_bytes:
                        skipped, parts, plen = plen, [], 0
                continue
            lineno += 1
            if parts:
                parts.append(piece)
                piece = b"".join(parts)
                parts, plen = [], 0
            if len(piece) > max_bytes:
                yield ("too_large", lineno, len(piece))
            else:
                yield ("line", lineno, piece)
    if skipped >= 0:
        yield ("too_large", lineno + 1, skipped)
    elif parts:
        yield ("line", lineno + 1, b"".join(parts))


# -- per-format batch readers -------------------------------------------------------------
def _finish(table: pa.Table, key: str, first_row: int, id_col: str, text_col: str,
            duplicates: dict[int, str] | None = None) -> pa.Table:
    """Rename to id/text, generate missing ids, make sure drop_reason exists; quarantine rows
    whose text is missing, not a string, whitespace only or holds NUL bytes, and the rows
    ``duplicates`` names ({row in the file: drop_reason}, from pipeline.unique_ids)."""
    names = table.column_names
    if text_col != "text" and text_col in names:
        if "text" in names:
            table = table.drop_columns(["text"])
        table = table.rename_columns(["text" if c == text_col else c for c in table.column_names])
    if id_col != "id" and id_col in table.column_names:
        if "id" in table.column_names:
            table = table.drop_columns(["id"])
        table = table.rename_columns(["id" if c == id_col else c for c in table.column_names])
    n = table.num_rows
    gen = pa.array([f"{key}:{first_row + i}" for i in range(n)], pa.string())
    given = "id" in table.column_names
    ids = pc.cast(table.column("id"), pa.string()) if given else pa.nulls(n, pa.string())
    table = set_column(table, "id", pc.coalesce(ids, gen))  # missing or null ids get generated ones
    if "text" not in table.column_names:
        table = set_column(table, "text", pa.nulls(n, pa.string()))
    text = table.column("text")
    if not _is_string(text.type):
        # a text column of numbers, lists, ...: not documents. Keep the values (as strings) for
        # inspection in rejected/read/ and quarantine every row.
        table = mark_dropped(table, pc.is_valid(text),
                             f"input:text_not_string ({text.type} column {text_col!r}) in {key}")
        text = pa.array([None if v is None else json.dumps(v, default=str) for v in text.to_pylist()], pa.string())
    table = set_column(table, "text", pc.cast(text, pa.string()))
    table = mark_dropped(table, pc.is_null(table.column("text")), "input:missing_text")
    text = table.column("text")
    table = _mark_rows(table, pc.greater(pc.binary_length(text), MAX_RECORD_BYTES), "too_large", key, first_row)
    table = _mark_rows(table, pc.match_substring(text, "\x00"), "nul_byte", key, first_row)
    table = _mark_rows(table, pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0), "empty_text",
                       key, first_row)
    if duplicates:
        hit = [(r - first_row, why) for r, why in duplicates.items() if first_row <= r < first_row + n]
        if hit:
            reasons = [None] * n
            for i, why in hit:
                reasons[i] = why
            reasons = pa.array(reasons, pa.string())
            table = mark_dropped(table, pc.is_valid(reasons), reasons)
    cols = ["id", "text"] + [c for c in table.column_names if c not in ("id", "text")]
    return table.select(cols)


def _is_string(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t) or (
        hasattr(pa.types, "is_string_view") and pa.types.is_string_view(t))


def _mark_rows(table: pa.Table, mask, reason: str, key: str, first_row: int) -> pa.Table:
    """Quarantine rows where ``mask`` is true, naming the row: "input:<reason> at row N of <key>"."""
    mask = pc.fill_null(mask, False)
    hit = pc.indices_nonzero(mask.combine_chunks() if isinstance(mask, pa.ChunkedArray) else mask).to_pylist()
    if not hit:
        return table
    reasons = [None] * table.num_rows
    for i in hit:
        reasons[i] = f"input:{reason} at row {first_row + i} of {key}"
    return mark_dropped(table, mask, pa.array(reasons, pa.string()))


def _quarantined_file(key: str, reason: str) -> pa.Table:
    """One row standing for a file (or a part of one) that cannot be read at all."""
    return pa.table({"id": [f"{key}#unreadable"], "text": pa.nulls(1, pa.string()), DROP_REASON: [reason]})


def parquet_row_group_rows(path: str) -> list[int] | None:
    """Rows per row group, or None for a file whose footer cannot be read (or 0 bytes): such a
    file is read whole by read_parquet_batches, which quarantines it."""
    try:
        if "://" not in path and os.path.getsize(path) == 0:
            return None
        md = _parquet_file(path).metadata
        return [md.row_group(g).num_rows for g in range(md.num_row_groups)]
    except (pa.ArrowException, OSError):
        return None


def read_parquet_batches(path: str, key: str, batch_rows: int, id_col: str, text_col: str,
                         row_groups: list[int] | None = None, first_row: int = 0,
                         duplicates: DuplicateIds | None = None) -> Iterator[pa.Table]:
    """Row group by row group (all, or ``row_groups``, whose first row is ``first_row``): a row
    group that cannot be decoded is quarantined as one row naming it, the others are kept. A file
    whose footer is unreadable is one quarantined row. Repeated ids: the rows ``duplicates``
    names (a run's pre-pass); None: checked within this file here."""
    try:
        if "://" not in path and os.path.getsize(path) == 0:
            return  # a 0-byte file: zero rows (nothing to lose)
        pf = _parquet_file(path)
    except (pa.ArrowException, OSError) as e:
        log.error("%s: unreadable Parquet file: %s", key, e)
        yield _quarantined_file(key, f"input:corrupt_parquet {key}: {str(e)[:120]}")
        return
    if text_col not in pf.schema_arrow.names:
        raise ValueError(f"{path}: no {text_col!r} column (it has {', '.join(pf.schema_arrow.names)}); "
                         "set input.text_column")
    groups = range(pf.metadata.num_row_groups) if row_groups is None else row_groups
    if duplicates is None:
        dups = duplicates_in_file(path, key, "parquet", id_col, text_col)
    else:
        dups = duplicates.for_file(key, first_row, first_row + sum(pf.metadata.row_group(g).num_rows for g in groups))
    row = first_row
    for g in groups:
        group_rows = pf.metadata.row_group(g).num_rows
        end = row + group_rows
        try:
            for rb in pf.iter_batches(batch_size=batch_rows, row_groups=[g]):
                t = pa.Table.from_batches([rb])
                yield _finish(t, key, row, id_col, text_col, dups)
                row += t.num_rows
        except (pa.ArrowException, OSError) as e:
            log.error("%s: row group %d unreadable: %s", key, g, e)
            yield _quarantined_file(f"{key}:rg{g}", f"input:corrupt_parquet row group {g} of {key} "
                                                    f"({group_rows} rows): {str(e)[:120]}")
        row = end


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


def _clean_str(s: str) -> tuple[str, bool]:
    """(s with lone surrogates replaced by U+FFFD, whether there were any)."""
    try:
        s.encode("utf-8")
        return s, False
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogatepass").decode("utf-8", "replace"), True


def read_jsonl_batches(path: str, key: str, batch_rows: int, id_col: str, text_col: str,
                       max_record_bytes: int | None = None,
                       duplicates: DuplicateIds | None = None) -> Iterator[pa.Table]:
    """JSON Lines (plain, gzip with any number of members, zstd; a BOM and CRLF line ends are
    fine): `text` and `id`, url/source/language as columns when the file has them, every other
    field kept as JSON in `meta` (only when there are any). Quarantined, with the line number:
    a line that is not a JSON object (invalid_json), not UTF-8 (invalid_utf8), with a lone
    surrogate (lone_surrogate), a text that is not a string (text_not_string), whitespace only
    (empty_text) or holds NUL (nul_byte), a line over ``max_record_bytes`` (too_large), damaged
    compressed data (truncated_gzip, ... with the byte offset), and the lines ``duplicates``
    names (duplicate_id, from a run's pre-pass; None: checked within this file here)."""
    max_bytes = MAX_RECORD_BYTES if max_record_bytes is None else max_record_bytes
    rows: list[dict] = []
    first = 0
    if duplicates is None:
        dups = duplicates_in_file(path, key, "jsonl", id_col, text_col)
    else:
        dups = duplicates.for_file(key)
    lifted_seen: set[str] = set()
    for ev, lineno, payload in _line_events(_decompressed(path), max_bytes):
        where = f"line {lineno} of {key}"
        rec: dict = {}
        bad = None
        if ev == "damage":
            bad = f"input:{payload.kind} at byte {payload.offset} of {key} (line {lineno}): {payload.detail[:80]}"
            log.error("%s", bad)
        elif ev == "too_large":
            bad = f"input:too_large ({payload} bytes > {max_bytes}) at {where}"
        else:
            if lineno == 1 and payload.startswith(b"\xef\xbb\xbf"):
                payload = payload[3:]
            if not payload.strip():
                continue
            try:
                rec = json.loads(payload)
                if not isinstance(rec, dict):
                    raise ValueError(f"not a JSON object but {type(rec).__name__}")
            except UnicodeDecodeError as e:
                rec, bad = {}, f"input:invalid_utf8 at {where}: byte {e.start}"
            except ValueError as e:
                rec, bad = {}, f"input:invalid_json at {where}: {str(e)[:80]}"
        text = rec.pop(text_col, None)
        rid = rec.pop(id_col, None)
        if not isinstance(text, str) and text is not None:
            bad = bad or f"input:text_not_string ({type(text).__name__}) at {where}"
            text = json.dumps(text)
        row = {"id": None if rid is None else str(rid), "text": text}
        for k in JSONL_LIFTED:
            v = rec.pop(k, None)
            if v is not None:
                lifted_seen.add(k)
                row[k] = v if isinstance(v, str) else json.dumps(v)
        if rec:
            row["meta"] = json.dumps(rec, ensure_ascii=False, sort_keys=True)
            lifted_seen.add("meta")
        if ev == "line" and _SURROGATE_ESCAPE.search(payload):
            dirty = False
            for k, v in row.items():
                if isinstance(v, str):
                    row[k], d = _clean_str(v)
                    dirty |= d
            if dirty:
                bad = bad or f"input:lone_surrogate at {where}"
        if bad is None and text is not None:
            if "\x00" in text:
                bad = f"input:nul_byte at {where}"
            elif not text.strip():
                bad = f"input:empty_text at {where}"
        if bad is None and dups:
            bad = dups.get(lineno)
        if row["id"] is None:  # generated ids name the same 1-based line as the messages do
            row["id"] = f"{key}:{lineno}"
        row[DROP_REASON] = bad
        rows.append(row)
        if len(rows) >= batch_rows:
            yield _jsonl_table(rows, key, first, lifted_seen)
            first += len(rows)
            rows = []
    if rows:
        yield _jsonl_table(rows, key, first, lifted_seen)


def _jsonl_table(rows: list[dict], key: str, first: int, lifted_seen: set[str]) -> pa.Table:
    """Columns: id, text, drop_reason, then url/source/language/meta only if the file has had
    them so far (a reader does not invent all-null columns the input did not have)."""
    extra = [k for k in (*JSONL_LIFTED, "meta") if k in lifted_seen]
    schema = pa.schema([("id", pa.string()), ("text", pa.string()), (DROP_REASON, pa.string())]
                       + [(k, pa.string()) for k in extra])
    t = pa.Table.from_pylist(rows, schema=schema)
    return _finish(t, key, first, "id", "text")


def read_file_batches(path: str, key: str, fmt: str, batch_rows: int, id_col: str = "id",
                      text_col: str = "text", duplicates: DuplicateIds | None = None) -> Iterator[pa.Table]:
    """One file's batches. ``duplicates``: the rows a run's id pre-pass quarantines
    (pipeline.unique_ids; NONE: no check); None, for a reader called on its own: repeated ids
    are checked within this file."""
    if fmt == "parquet":
        yield from read_parquet_batches(path, key, batch_rows, id_col, text_col, duplicates=duplicates)
    elif fmt == "jsonl":
        yield from read_jsonl_batches(path, key, batch_rows, id_col, text_col, duplicates=duplicates)
    elif fmt in ("warc", "wet"):
        from pipeline.warc import read_warc_batches

        for t in read_warc_batches(path, fmt=fmt, batch_rows=batch_rows, id_prefix=key):
            if DROP_REASON not in t.column_names:
                t = set_column(t, DROP_REASON, pa.nulls(t.num_rows, pa.string()))
            if fmt == "wet":  # the per-document size guard (WARC pages: html_extract's max_page_bytes)
                t = mark_dropped(t, pc.greater(pc.binary_length(t.column("text")), MAX_RECORD_BYTES),
                                 f"input:too_large (> {MAX_RECORD_BYTES} bytes) in {key}")
            yield t
    else:
        raise ValueError(f"unknown input format {fmt!r}")


def read_files(files: pa.Table, fmt: str, batch_rows: int, id_col: str, text_col: str,
               duplicates: DuplicateIds | None = None) -> Iterator[pa.Table]:
    """Ray map_batches UDF: one input row per file -> the file's record batches."""
    for path, key in zip(files.column("path").to_pylist(), files.column("key").to_pylist()):
        yield from read_file_batches(path, key, fmt, batch_rows, id_col, text_col, duplicates)


def read_input(spec, files: list[str], max_workers: int | None = None, duplicates: DuplicateIds | None = None):
    """A lazy ray.data.Dataset over the input files (one read task per file); ``duplicates``:
    the run's id pre-pass (None: each file checked on its own)."""
    if not files:
        raise FileNotFoundError(f"no input files match {spec.paths}")
    listing = pa.table({"path": files, "key": file_keys(files)})
    ds = ray_data().from_arrow(listing).repartition(len(files))
    return ds.map_batches(read_files, fn_args=(spec.format, spec.batch_rows, spec.id_column, spec.text_column,
                                               duplicates),
                          batch_size=1, batch_format="pyarrow", zero_copy_batch=True,
                          compute=ray_data().TaskPoolStrategy(size=max_workers))


def input_units(spec, files: list[str]) -> list[tuple]:
    """Work units for the engine's segment workers: one per Parquet row group (so a single
    big file still feeds every worker), one per file for the streaming formats. A unit is
    (path, key, row_groups, first_row); ids generated from it equal whole-file reading."""
    units = []
    for path, key in zip(files, file_keys(files)):
        groups = parquet_row_group_rows(path) if spec.format == "parquet" else None
        if groups is not None:
            first = 0
            for rg, n in enumerate(groups):
                units.append((path, key, [rg], first))
                first += n
            if not groups:
                units.append((path, key, [], 0))
        else:
            units.append((path, key, None, 0))
    return units


def _parquet_file(path: str) -> pq.ParquetFile:
    if "://" in path:
        fs, p = pafs.FileSystem.from_uri(path)
        return pq.ParquetFile(fs.open_input_file(p))
    return pq.ParquetFile(path)


def read_unit(spec, unit: tuple, duplicates: DuplicateIds | None = None) -> Iterator[pa.Table]:
    """The batches of one unit from input_units, exactly as read_file_batches yields them
    (``duplicates``: the run's id pre-pass; None: checked within the unit's file)."""
    path, key, row_groups, first = unit
    if row_groups is None:
        yield from read_file_batches(path, key, spec.format, spec.batch_rows, spec.id_column, spec.text_column,
                                     duplicates)
        return
    # damaged row groups are quarantined there (issue 25)
    yield from read_parquet_batches(path, key, spec.batch_rows, spec.id_column, spec.text_column, row_groups, first,
                                    duplicates)


# -- deterministic output ------------------------------------------------------------------
def text_bytes(table: pa.Table) -> int:
    if "text" not in table.column_names or table.num_rows == 0:
        return 0
    return int(pc.sum(pc.binary_length(table.column("text"))).as_py() or 0)


def write_dataset(ds, store, rel_dir: str, shard_bytes: int) -> dict:
    """Write a dataset as Parquet shards: rows spread over shards by a hash of `id`, each shard
    sorted by id. Same rows => byte-identical files, whatever the number of workers.
    One Ray Data execution (materialize); the shards are then written by one Ray task each
    straight from the object store (pipeline.shards), without a shuffle."""
    import ray

    from pipeline.shards import sizes_of_refs, write_refs_with_tasks

    mat = ds.materialize()
    refs = mat.to_arrow_refs()
    schema = mat.schema()
    schema = getattr(schema, "base_schema", schema) if schema is not None else None
    sizes = ray.get(ray.remote(num_cpus=0.25)(sizes_of_refs).remote(refs))
    return write_refs_with_tasks(refs, store, rel_dir, shard_bytes, sum(sizes),
                                 schema if isinstance(schema, pa.Schema) else None)


def read_step_output(store, rel_dir: str):
    files = [store.full(p) for p in store.list(rel_dir, ".parquet")]
    return ray_data().read_parquet(files, filesystem=None if "://" in store.uri else None)
