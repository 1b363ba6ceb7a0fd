"""WARC / WET reading: streamed record by record, bad input quarantined as rows.

fastwarc parses each record (WARC headers, HTTP headers, transfer/content decoding), but the
*framing* (gzip members, Content-Length, record boundaries) is done here, because fastwarc on
its own silently drops a truncated last gzip member and raises mid-file on a corrupt member or a
wrong Content-Length, losing every record after it. Here:

- each gzip member is decompressed (ISA-L's ``isal``, else ``zlib``) as the file streams in
  (bounded chunks, never the whole file), so a truncated or corrupt member is reported with the
  file name and the byte offset of the member, every record before it is kept, and after a
  corrupt member reading resumes at the next gzip member;
- every record's Content-Length is checked against its data: the block must be followed by the
  CRLF separator and then the next ``WARC/`` header (or the end of the file); if not, the record
  is quarantined and reading resynchronises at the next ``WARC/`` header line;
- responses with HTTP errors, redirects, empty bodies or an unparseable HTTP head become rows
  with a ``drop_reason`` too.

Bad input is never raised mid-run: it becomes a row whose ``drop_reason`` starts with
``input:`` (and is logged on ``gristmill.warc``), so docs in = docs out + quarantined holds from
the reader on.
"""
from __future__ import annotations

import io
import logging
import os
import re
import zlib
from typing import Iterator

import pyarrow as pa

try:  # ISA-L's inflate, zlib's API: ~2x the speed of zlib on crawl WARCs (0.24 -> 0.12 s CPU for
    # the 16.7 MB web/pages-heavy.warc.gz); zlib where isal has no wheel
    from isal import isal_zlib as _zlib
except ImportError:  # pragma: no cover - isal is a dependency
    _zlib = zlib

log = logging.getLogger("gristmill.warc")

READ_CHUNK = 1 << 20           # compressed bytes read per call
MAX_OUT = 8 << 20              # decompressed bytes produced per zlib call (bounds memory)
MAX_HEADER = 1 << 16           # a WARC header block larger than this is garbage
MAX_RECORD = 512 << 20         # records larger than this are skipped (streamed past), not buffered
BATCH_BYTES = 64 << 20         # also cut a batch when its html/text reaches this many bytes
GZIP_MAGIC = b"\x1f\x8b\x08"
_WARC_LINE = re.compile(rb"(?:^|\n)(WARC/[0-9])")

WARC_SCHEMA = pa.schema([
    ("id", pa.string()), ("url", pa.string()), ("warc_date", pa.string()),
    ("warc_record_id", pa.string()), ("http_status", pa.int32()), ("content_type", pa.string()),
    ("html", pa.binary()), ("text", pa.string()), ("drop_reason", pa.string()),
])
WET_SCHEMA = pa.schema([
    ("id", pa.string()), ("url", pa.string()), ("warc_date", pa.string()),
    ("warc_record_id", pa.string()), ("text", pa.string()), ("drop_reason", pa.string()),
])


class _StreamError(Exception):
    def __init__(self, kind: str, offset: int, detail: str = ""):
        super().__init__(kind)
        self.kind, self.offset, self.detail = kind, offset, detail


# -- decompression layer -------------------------------------------------------------------------
class _Source:
    """Yields decompressed bytes of a (possibly multi-member gzip) stream.

    ``read()`` returns the next chunk, ``b""`` when it made no progress yet, ``None`` at the end;
    it raises ``_StreamError`` for a truncated / corrupt gzip member, after positioning itself so
    that the following ``read()`` continues at the next member. ``comp_offset(pos)`` maps a
    position in the decompressed stream to the compressed offset of the member holding it.
    """

    def __init__(self, raw, chunk: int = READ_CHUNK):
        self.raw, self.chunk = raw, chunk
        self.pending = raw.read(chunk) or b""
        self.gz = self.pending[:2] == GZIP_MAGIC[:2]
        self.comp = 0                # compressed offset of pending[0]
        self.out = 0                 # decompressed bytes produced so far
        self.member_start = 0        # compressed offset of the current member
        self.members: list[tuple[int, int]] = [(0, 0)]  # (decompressed pos, compressed offset)
        self.d = _zlib.decompressobj(31) if self.gz else None
        self.in_member = False
        self.done = False

    def comp_offset(self, pos: int) -> int:
        if not self.gz:
            return pos
        off = 0
        for dpos, coff in self.members:
            if dpos <= pos:
                off = coff
            else:
                break
        return off

    def forget_before(self, pos: int) -> None:
        """Drop member bookkeeping older than decompressed position ``pos``."""
        m = self.members
        i = 0
        while i + 1 < len(m) and m[i + 1][0] <= pos:
            i += 1
        if i:
            del m[:i]

    def _more(self) -> bool:
        data = self.raw.read(self.chunk)
        if not data:
            return False
        self.pending = self.pending + data if self.pending else data
        return True

    def read(self) -> bytes | None:
        if self.done:
            return None
        if not self.gz:
            data, self.pending = self.pending, b""
            if not data:
                data = self.raw.read(self.chunk)
            if not data:
                self.done = True
                return None
            self.comp += len(data)
            self.out += len(data)
            return data
        while True:
            if not self.pending and not self._more():
                self.done = True
                if self.in_member:
                    raise _StreamError("truncated_gzip", self.member_start,
                                       f"gzip member ends early at byte {self.comp}")
                return None
            if not self.in_member:
                # a new member must start here (zero padding at the very end is tolerated)
                if self.pending[:3] != GZIP_MAGIC:
                    if len(self.pending) < 3 and self._more():
                        continue
                    if not self.pending.strip(b"\x00"):
                        self.comp += len(self.pending)
                        self.pending = b""
                        continue
                    bad = self.comp
                    self._resync(bad + 1)
                    raise _StreamError("corrupt_gzip", bad, "bytes that are not a gzip member")
                self.member_start = self.comp
                if self.members[-1][0] == self.out:
                    self.members[-1] = (self.out, self.comp)
                else:
                    self.members.append((self.out, self.comp))
                self.d = _zlib.decompressobj(31)
                self.in_member = True
            try:
                out = self.d.decompress(self.pending, MAX_OUT)
            except _zlib.error as e:
                bad = self.member_start
                self.in_member = False
                self._resync(bad + 1)
                raise _StreamError("corrupt_gzip", bad, str(e)) from None
            if self.d.eof:
                rest = self.d.unused_data
                self.in_member = False
            else:
                rest = self.d.unconsumed_tail
            self.comp += len(self.pending) - len(rest)
            self.pending = rest
            self.out += len(out)
            if out:
                return out
            if not self.in_member:
                continue
            if not self.pending and not self._more():
                continue  # -> truncated on the next turn

    def _resync(self, from_offset: int) -> None:
        """Skip to the next gzip magic at or after compressed offset ``from_offset``."""
        skip = from_offset - self.comp
        if skip > 0:
            while len(self.pending) < skip and self._more():
                pass
            take = min(skip, len(self.pending))
            self.pending = self.pending[take:]
            self.comp += take
        while True:
            i = self.pending.find(GZIP_MAGIC)
            if i >= 0:
                self.pending = self.pending[i:]
                self.comp += i
                return
            keep = self.pending[-2:]
            self.comp += len(self.pending) - len(keep)
            self.pending = keep
            if not self._more():
                self.comp += len(self.pending)
                self.pending = b""
                return


# -- framing layer -------------------------------------------------------------------------------
def _parse_warc_head(head: bytes) -> dict[str, str]:
    """WARC header block (without the version line) -> {lower-case name: value}."""
    out: dict[str, str] = {}
    last = None
    for line in head.split(b"\n"):
        line = line.rstrip(b"\r")
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and last is not None:
            out[last] += " " + line.strip().decode("utf-8", "replace")
            continue
        k, sep, v = line.partition(b":")
        if not sep:
            continue
        last = k.strip().decode("ascii", "replace").lower()
        out[last] = v.strip().decode("utf-8", "replace")
    return out


class _Record:
    __slots__ = ("offset", "headers", "raw")

    def __init__(self, offset: int, headers: dict[str, str], raw: bytes | None):
        self.offset, self.headers, self.raw = offset, headers, raw


def _frame(src: _Source, max_record: int = MAX_RECORD) -> Iterator[tuple]:
    """Yield ("rec", _Record) for well-framed records and ("bad", offset, kind, detail, headers)
    for input that cannot be framed; ``offset`` is a compressed-file byte offset."""
    buf = bytearray()
    base = 0  # decompressed position of buf[0]
    pos = 0   # parse position inside buf
    eof = False

    def fill() -> bool:
        nonlocal eof
        while not eof:
            data = src.read()
            if data is None:
                eof = True
                return False
            if data:
                buf.extend(data)
                return True
        return False

    def reset_after_error() -> None:
        nonlocal buf, base, pos
        base = src.out
        buf = bytearray()
        pos = 0

    while True:
        # compact the buffer now and then (records are parsed in place)
        if pos > (4 << 20) or (pos and pos == len(buf)):
            del buf[:pos]
            base += pos
            pos = 0
            src.forget_before(base)
        # skip separators / whitespace between records
        try:
            while True:
                n = len(buf)
                while pos < n and buf[pos] in b"\r\n \t\x00":
                    pos += 1
                if pos < n or not fill():
                    break
        except _StreamError as e:
            yield ("bad", e.offset, e.kind, e.detail, None)
            reset_after_error()
            continue
        if pos >= len(buf):
            return
        start = pos
        start_off = src.comp_offset(base + start)
        # header block
        try:
            while True:
                end = buf.find(b"\r\n\r\n", start)
                alt = buf.find(b"\n\n", start)
                if alt >= 0 and (end < 0 or alt < end):
                    hend, body = alt, alt + 2
                elif end >= 0:
                    hend, body = end, end + 4
                else:
                    hend = -1
                if hend >= 0 or len(buf) - start > MAX_HEADER or not fill():
                    break
        except _StreamError as e:
            yield ("bad", e.offset, e.kind, e.detail, None)
            reset_after_error()
            continue
        if not buf.startswith(b"WARC/", start) or hend < 0 or hend - start > MAX_HEADER:
            if hend < 0 and eof and buf.startswith(b"WARC/", start):
                kind = "truncated_record"
                detail = "file ends inside a WARC header"
            else:
                kind, detail = "invalid_warc_header", "no WARC/ version line where a record should start"
            yield ("bad", start_off, kind, detail, None)
            m = _WARC_LINE.search(buf, start + 1)
            if m:
                pos = m.start(1)
            else:
                pos = len(buf)  # nothing to resync on in the buffer: drop it, keep reading
            continue
        nl = buf.find(b"\n", start)
        headers = _parse_warc_head(bytes(buf[nl + 1:hend]))
        try:
            clen = int(headers.get("content-length", "").strip())
            if clen < 0:
                raise ValueError
        except ValueError:
            yield ("bad", start_off, "invalid_warc_header", "missing or bad Content-Length", headers)
            m = _WARC_LINE.search(buf, body)
            pos = m.start(1) if m else len(buf)
            continue
        # block
        too_big = clen > max_record
        try:
            if too_big:
                # stream past the block without buffering it (base absorbs what is cut, so
                # positions after the block stay right)
                remaining, ok = clen, True
                while True:
                    got = len(buf) - body
                    if got >= remaining:
                        block_end = body + remaining
                        break
                    remaining -= got
                    del buf[body:]
                    base += got
                    if not fill():
                        ok, block_end = False, len(buf)
                        break
            else:
                while len(buf) - body < clen and fill():
                    pass
                ok = len(buf) - body >= clen
                block_end = body + clen
        except _StreamError as e:
            yield ("bad", e.offset, e.kind, e.detail, headers)
            reset_after_error()
            continue
        if not ok:
            # an overrunning Content-Length reaches the end of the file: if another record starts
            # inside what it claimed, it is a length mismatch and that record is read normally
            m = None if too_big else _WARC_LINE.search(buf, body)
            if m:
                yield ("bad", start_off, "content_length_mismatch",
                       f"Content-Length {clen} runs past the next record", headers)
                pos = m.start(1)
            else:
                yield ("bad", start_off, "truncated_record",
                       f"Content-Length {clen} but only {len(buf) - body} bytes before the end of the file",
                       headers)
                pos = len(buf)
            continue
        # the block must be followed by separators and the next record (or the end)
        err = None
        try:
            j = block_end
            while True:
                n = len(buf)
                while j < n and buf[j] in b"\r\n \t\x00":
                    j += 1
                if j < n and n - j < 5 and fill():
                    continue
                if j < n or not fill():
                    break
        except _StreamError as e:
            err = e
        good_follow = j >= len(buf) or buf.startswith(b"WARC/", j)
        if not good_follow:
            yield ("bad", start_off, "content_length_mismatch",
                   f"Content-Length {clen} does not end where the next record starts", headers)
            m = _WARC_LINE.search(buf, body)
            pos = m.start(1) if m else len(buf)
        else:
            if too_big:
                yield ("bad", start_off, "record_too_large", f"Content-Length {clen} > {max_record}", headers)
            else:
                yield ("rec", _Record(start_off, headers, bytes(buf[start:block_end])))
            pos = j
        if err is not None:
            yield ("bad", err.offset, err.kind, err.detail, None)
            reset_after_error()


# -- record -> row -------------------------------------------------------------------------------
def _strip_id(rid: str) -> str:
    rid = rid.strip()
    if rid.startswith("<") and rid.endswith(">"):
        rid = rid[1:-1]
    if rid.lower().startswith("urn:uuid:"):
        rid = rid[9:]
    return rid


def _open(path: str, filesystem):
    if filesystem is None and "://" in path and not path.startswith("file://"):
        from pyarrow.fs import FileSystem
        filesystem, path = FileSystem.from_uri(path)
    elif path.startswith("file://"):
        path = path[7:]
    if filesystem is None:
        return open(path, "rb", buffering=0)
    return filesystem.open_input_stream(path, compression=None)


def _http_payload(raw: bytes, clen_hint: int):
    """Parse the HTTP response in a WARC response record. Returns (status, content_type, body,
    error or None)."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    hend = raw.find(b"\r\n\r\n")
    if hend > 0 and b"application/http" not in raw[:hend].lower() and raw.startswith(b"HTTP/", hend + 4):
        # some writers omit (or mislabel) the WARC Content-Type of responses; fastwarc parses the
        # HTTP head only when it says application/http
        nl = raw.find(b"\n")
        raw = raw[:nl + 1] + b"Content-Type: application/http; msgtype=response\r\n" + raw[nl + 1:]
    try:
        it = ArchiveIterator(io.BytesIO(raw), record_types=WarcRecordType.any_type,
                             parse_http=True, auto_decode="all")
        rec = next(iter(it), None)
        if rec is None:
            return None, None, None, "bad_http_header"
        body = rec.reader.read()
        hh = rec.http_headers
        if hh is None:
            return None, None, body, "bad_http_header"
        status = hh.status_code
        if not status:
            return None, None, body, "bad_http_header"
        ctype = hh.get("Content-Type")
        return status, ctype, body, None
    except Exception as e:  # fastwarc raises OSError / ValueError on broken payload encodings
        return None, None, None, f"bad_http_payload ({type(e).__name__})"


def read_warc_batches(path: str, fmt: str = "warc", batch_rows: int = 1024, filesystem=None,
                      id_prefix: str | None = None) -> Iterator[pa.Table]:
    """Stream one WARC (``fmt="warc"``: response records) or WET (``fmt="wet"``: conversion
    records) file as ``pyarrow.Table`` batches of at most ``batch_rows`` rows.

    Bad input (truncated / corrupt gzip member, Content-Length mismatch, unparseable headers,
    HTTP errors and redirects, empty bodies) comes out as rows whose ``drop_reason`` starts with
    ``input:``; nothing is raised mid-file and nothing is dropped silently.
    """
    if fmt not in ("warc", "wet"):
        raise ValueError(f"fmt must be 'warc' or 'wet', not {fmt!r}")
    name = os.path.basename(path.rstrip("/")) or path
    prefix = id_prefix or ""
    schema = WARC_SCHEMA if fmt == "warc" else WET_SCHEMA
    want = "response" if fmt == "warc" else "conversion"
    cols: dict[str, list] = {f.name: [] for f in schema}
    nbytes = 0
    seen_ids: dict[str, int] = {}

    def flush() -> pa.Table:
        nonlocal cols, nbytes
        t = pa.Table.from_pydict(cols, schema=schema)
        cols = {f.name: [] for f in schema}
        nbytes = 0
        return t

    def add(rid: str | None, offset: int, headers: dict | None, reason: str | None,
            status=None, ctype=None, html=None, text=None) -> None:
        nonlocal nbytes
        headers = headers or {}
        wid = headers.get("warc-record-id")
        doc_id = _strip_id(wid) if wid else f"{name}@{offset}"
        k = seen_ids.get(doc_id)
        if k is not None:  # duplicate record ids in one file: keep ids unique, deterministically
            seen_ids[doc_id] = k + 1
            doc_id = f"{doc_id}#{k + 1}"
        else:
            seen_ids[doc_id] = 0
        cols["id"].append(prefix + doc_id)
        cols["url"].append(headers.get("warc-target-uri", "").strip("<> ") or None)
        cols["warc_date"].append(headers.get("warc-date"))
        cols["warc_record_id"].append(wid)
        if fmt == "warc":
            cols["http_status"].append(status)
            cols["content_type"].append(ctype)
            cols["html"].append(html)
            nbytes += len(html or b"")
        else:
            nbytes += len(text or "")
        cols["text"].append(text)
        cols["drop_reason"].append(reason)

    raw = _open(path, filesystem)
    try:
        src = _Source(raw)
        for ev in _frame(src):
            if ev[0] == "bad":
                _, offset, kind, detail, headers = ev
                if headers is not None and headers.get("warc-type", want) != want:
                    # a broken record of a type we do not read (request, metadata, ...):
                    # still log it, but it is not a document of this file
                    log.error("%s: %s at byte %d (%s record): %s", name, kind, offset,
                              headers.get("warc-type"), detail)
                    continue
                reason = f"input:{kind} at byte {offset} of {name}"
                log.error("%s: %s at byte %d: %s", name, kind, offset, detail)
                add(None, offset, headers, reason)
            else:
                rec: _Record = ev[1]
                h = rec.headers
                if h.get("warc-type", "").strip().lower() != want:
                    continue
                if fmt == "wet":
                    block = rec.raw[rec.raw.find(b"\n\n") + 2 if rec.raw.find(b"\r\n\r\n") < 0
                                    else rec.raw.find(b"\r\n\r\n") + 4:]
                    text = block.decode("utf-8", "replace")
                    reason = None
                    if not text.strip():
                        reason = "input:empty_body"
                    elif text.count("\ufffd") > max(8, len(text) // 100):
                        reason = "input:undecodable_text"
                    add(None, rec.offset, h, reason, text=text)
                    continue
                status, ctype, body, err = _http_payload(rec.raw, 0)
                reason = None
                if err:
                    reason = f"input:{err.split(' ')[0]}"
                    log.error("%s: %s at byte %d (%s)", name, err, rec.offset, h.get("warc-record-id"))
                elif 300 <= status < 400:
                    reason = "input:http_redirect"
                elif status >= 400 or status < 200:
                    reason = "input:http_error"
                elif not body or not body.strip():
                    reason = "input:empty_body"
                add(None, rec.offset, h, reason, status=status, ctype=ctype, html=body if body else None)
            if len(cols["id"]) >= batch_rows or nbytes >= BATCH_BYTES:
                yield flush()
    finally:
        raw.close()
    if cols["id"]:
        yield flush()


def count_records(path: str, fmt: str = "warc", filesystem=None) -> dict[str, int]:
    """{"records": n, "dropped": k}: rows the reader gives for ``path`` (for tests and checks)."""
    n = k = 0
    for t in read_warc_batches(path, fmt=fmt, filesystem=filesystem):
        n += t.num_rows
        k += t.num_rows - t.column("drop_reason").null_count
    return {"records": n, "dropped": k}
