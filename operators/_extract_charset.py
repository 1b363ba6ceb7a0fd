"""Bytes -> str for HTML payloads: charset from the HTTP header, then <meta>, then detection;
plus sniffing of payloads that are not HTML at all (PDF, images, archives ...)."""
from __future__ import annotations

import codecs
import re

_HTTP_CHARSET = re.compile(r"charset\s*=\s*[\"']?\s*([A-Za-z0-9_.:\-]+)", re.I)
_META_CHARSET = re.compile(rb"<meta[^>]{0,200}?charset\s*=\s*[\"']?\s*([A-Za-z0-9_.:\-]+)", re.I)
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
# magic numbers of common non-HTML payloads served (sometimes as text/html) by web servers
_MAGIC = (b"%PDF", b"\x89PNG", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"PK\x03\x04", b"\x1f\x8b", b"BM",
          b"RIFF", b"\x00\x00\x01\x00", b"OggS", b"ID3", b"fLaC", b"\x7fELF", b"MZ", b"%!PS", b"{\\rtf",
          b"\xd0\xcf\x11\xe0", b"wOFF", b"wOF2", b"7z\xbc\xaf", b"Rar!", b"BZh", b"\xfd7zXZ", b"(\xb5/\xfd",
          b"\x00\x00\x00\x18ftyp", b"\x00\x00\x00\x1cftyp", b"\x00\x00\x00 ftyp", b"\x1aE\xdf\xa3")
_NON_HTML_TYPES = re.compile(r"^\s*(?:image|audio|video|font)/|application/(?:pdf|zip|octet-stream|x-|msword|"
                             r"vnd\.|postscript|gzip|ogg|wasm|java)", re.I)
_ALIASES = {"utf8": "utf-8", "unicode": "utf-8", "iso-8859-1": "cp1252", "latin1": "cp1252",
            "latin-1": "cp1252", "us-ascii": "cp1252", "ascii": "cp1252", "x-sjis": "shift_jis",
            "gb2312": "gb18030", "gbk": "gb18030", "ks_c_5601-1987": "cp949", "euc-kr": "cp949",
            "tis-620": "cp874", "iso-8859-9": "cp1254", "iso-8859-11": "cp874", "windows-874": "cp874"}


_SINGLE_BYTE = re.compile(r"^(?:cp125\d|iso8859|latin|mac-roman|koi8|cp874|cp437|cp850|ascii)")


def normalize_charset(name: str | None) -> str | None:
    """A Python codec name for a declared charset (WHATWG-style supersets), or None if unknown."""
    if not name:
        return None
    name = name.strip().strip("\"'").lower()
    name = _ALIASES.get(name, name)
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


_CONTROL_BYTES = bytes([0, 1, 2, 3, 4, 5, 6, 7, 8, *range(14, 32)])  # C0 but tab, LF, VT, FF, CR


def sniff_not_html(data: bytes, content_type: str | None = None) -> str | None:
    """A short reason when ``data`` is clearly not an HTML document, else None."""
    head = data[:1024]
    stripped = head.lstrip()
    for magic in _MAGIC:
        if stripped.startswith(magic) or head.startswith(magic):
            return "binary_payload"
    if content_type and _NON_HTML_TYPES.search(content_type):
        return "non_html_content_type"
    # many control bytes (NUL and C0 except tab / newline / carriage return / form feed): binary
    sample = data[:4096]
    if sample and not any(sample.startswith(b) for b, _ in _BOMS[1:]):
        ctrl = len(sample) - len(sample.translate(None, _CONTROL_BYTES))  # one pass, not 27 counts
        if ctrl > len(sample) // 20:
            return "binary_payload"
    lower = data[:65536].lower()
    if b"<" not in lower or not any(t in lower for t in (b"<html", b"<body", b"<p", b"<div", b"<head", b"<title",
                                                         b"<!doctype", b"<br", b"<span", b"<table", b"<meta",
                                                         b"<a ", b"<h1", b"<h2", b"<ul", b"<li", b"<article")):
        return "no_markup"
    return None


def decode_html(data: bytes, content_type: str | None = None, max_bad: float = 0.01
                ) -> tuple[str | None, str | None, str]:
    """Decode an HTML payload: (text, codec used, how it was chosen: bom | http | meta | detected).

    A declared charset that does not decode the bytes cleanly is treated as mislabelled and the
    next source is tried. ``text`` is None when no codec decodes the page with at most
    ``max_bad`` of its characters replaced (the caller quarantines it as undecodable).
    """
    for bom, enc in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(enc), enc, "bom"
            except UnicodeDecodeError:
                break
    tried = []
    declared = []
    if content_type:
        m = _HTTP_CHARSET.search(content_type)
        if m:
            declared.append((normalize_charset(m.group(1)), "http"))
    m = _META_CHARSET.search(data[:8192])
    if m:
        declared.append((normalize_charset(m.group(1).decode("ascii", "replace")), "meta"))
    for enc, how in declared:
        if not enc or enc in tried:
            continue
        tried.append(enc)
        if enc.startswith(("utf-16", "utf-32")):  # declared in an ASCII header: cannot be right
            continue
        try:
            text = data.decode(enc)
        except UnicodeDecodeError:
            continue
        if enc != "utf-8" and _SINGLE_BYTE.match(enc) and not data.isascii():
            # legacy single-byte labels decode anything: UTF-8 bytes under a latin label are
            # the commonest mislabelling on the web
            try:
                return data.decode("utf-8"), "utf-8", f"{how}_mislabelled"
            except UnicodeDecodeError:
                pass
        return text, enc, how
    # detection: strict UTF-8 first (most of the web), then resiliparse's detector
    if "utf-8" not in tried:
        try:
            return data.decode("utf-8"), "utf-8", "detected"
        except UnicodeDecodeError:
            tried.append("utf-8")
    from resiliparse.parse.encoding import detect_encoding

    enc = normalize_charset(detect_encoding(data)) or "cp1252"
    text = data.decode(enc, errors="replace")
    bad = text.count("\ufffd")
    if bad > max(4, int(len(text) * max_bad)):
        return None, enc, "detected"
    return text, enc, "detected"
