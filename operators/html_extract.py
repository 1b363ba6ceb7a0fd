"""html_extract: raw HTML bytes -> main text, title and declared language.

Extractors (``extractor`` parameter):
- ``fast`` (default): gristmill's own extractor (operators/_extract_fast.py): trafilatura's
  container selection and boilerplate vocabulary applied to resiliparse's Lexbor DOM through one
  regex pass over the tags, the container rendered by resiliparse's C++ code as minimal HTML,
  then trafilatura's block rules (paragraphs / headings / lists, link density, loose text) as
  regex passes; trafilatura itself only for the ~1 % of pages where that finds almost nothing.
- ``trafilatura``: trafilatura.extract with its default settings.
- ``resiliparse``: resiliparse ``extract_plain_text(main_content=True)``.

Charset: the HTTP header (``content_type`` column when present), then ``<meta>``, then
detection; a declared charset that does not decode the bytes is treated as mislabelled.
Bad input is quarantined, never raised: ``extract:not_html`` (PDF, images, archives, binary
data, even when labelled text/html), ``extract:undecodable`` (no charset decodes the page),
``extract:empty`` (no body / nothing left after extraction), ``extract:error`` (the extractor
raised).

Guards, so that one pathological page cannot take a worker's time or memory:
- size: a page over ``max_page_bytes`` (default 16 MB; real pages are well under 5 MB) is
  quarantined unparsed (``extract:too_large``); pages between ``max_html_bytes`` and it are cut;
- nesting: a page whose tags nest deeper than ``max_depth`` (default 2000; real pages stay under
  a few hundred) is quarantined unparsed (``extract:too_deep``): HTML parsers take time quadratic
  in the depth (20 000 nested <div> take minutes), and that C code cannot be interrupted;
- time: extraction of one page that runs longer than ``time_limit_s`` (default 30 s) is stopped
  and the page quarantined (``extract:timeout``). The limit is a SIGALRM timer, so it is checked
  between Python steps (trafilatura, the block rules), not inside one C call (the size and depth
  guards bound those), and it works where extraction runs on the process's main thread (Ray
  tasks, in-process calls); elsewhere only the size and depth guards apply.
"""
from __future__ import annotations

import logging
import re
import signal
import threading
from contextlib import contextmanager
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from operators.base import DROP_REASON, Operator, Params, Resources, mark_dropped, register, set_column

log = logging.getLogger("gristmill.extract")


class HtmlExtractParams(Params):
    extractor: Literal["fast", "trafilatura", "resiliparse"] = Field(
        "fast", description="fast: gristmill's extractor (trafilatura-level quality at >5x its speed); "
                            "trafilatura: trafilatura.extract defaults; resiliparse: its main-content mode")
    min_chars: int = Field(1, ge=0, le=1_000_000,
                           description="rows whose extracted text has fewer characters are dropped "
                                       "(extract:empty)")
    keep_html: bool = Field(False, description="keep the raw `html` column after extraction "
                                               "(off: it is replaced by null to save space downstream)")
    cascade: float = Field(1.0, ge=0.0, le=1.0,
                           description="fast extractor only: 0 = never hand a page to trafilatura; > 0 = "
                                       "trafilatura (fast mode) re-extracts pages whose fast text is shorter "
                                       "than fallback_chars (about 1 page in 100 on the 990 eval pages)")
    fallback_chars: int = Field(500, ge=0, le=1_000_000,
                                description="fast extractor only: pages whose fast text has fewer characters "
                                            "go to trafilatura when cascade > 0 (0 = never)")
    max_html_bytes: int = Field(8_000_000, ge=1024, le=1 << 31,
                                description="pages larger than this are cut to this many bytes before parsing")
    max_page_bytes: int = Field(16_000_000, ge=1024, le=1 << 31,
                                description="pages larger than this are quarantined unparsed (extract:too_large)")
    max_depth: int = Field(2000, ge=10, le=1_000_000,
                           description="pages whose tags nest deeper are quarantined unparsed (extract:too_deep)")
    time_limit_s: float = Field(30.0, gt=0, le=3600,
                                description="extraction of one page running longer is stopped (extract:timeout)")


# tags that nest when left open (the parser does not close them on a sibling of the same name);
# the lookahead on the first letters only spares trying every name at each "<" (a third faster:
# under re.I the class admits exactly what the names' first letters admit)
_NESTING_TAG = re.compile(r"<(/?)(?=[abcdefhimnoqstu])(?:div|span|section|article|main|aside|nav|header|footer|"
                          r"table|ul|ol|blockquote|font|center|form|b|i|em|strong|small|big|u|q|sub|sup)[\s>/]", re.I)


def nesting_depth(html: str, stop_at: int) -> int:
    """Estimated element depth (opening minus closing tags of the nesting kinds); stops counting at
    ``stop_at``. A page with fewer than ``stop_at`` tags cannot nest that deep: not scanned."""
    if html.count("<") < stop_at:
        return 0
    depth = best = 0
    for slash in _NESTING_TAG.findall(html):
        if slash:
            depth = depth - 1 if depth else 0
        else:
            depth += 1
            if depth > best:
                best = depth
                if best >= stop_at:
                    break
    return best


class ExtractTimeout(BaseException):
    """BaseException: extractors' own `except Exception` must not swallow it."""


def _raise_timeout(signum, frame):
    raise ExtractTimeout()


@contextmanager
def time_limit(seconds: float):
    """Raise ExtractTimeout in the block after ``seconds`` (SIGALRM; main thread only, else no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGALRM, _raise_timeout)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _extract_one(extractor: str, html: str, fallback_chars: int | None = None) -> tuple[str, str | None, str | None]:
    """``fallback_chars``: fast extractor only (None = its default, 0 = never call trafilatura)."""
    if extractor == "fast":
        from operators._extract_fast import extract_fast

        return extract_fast(html, fallback_chars)
    from resiliparse.parse.html import HTMLTree

    from operators._extract_fast import page_meta

    tree = HTMLTree.parse(html)
    title, lang = page_meta(tree)
    if extractor == "resiliparse":
        from resiliparse.extract.html2text import extract_plain_text

        return extract_plain_text(tree, main_content=True), title, lang
    import trafilatura

    return trafilatura.extract(html) or "", title, lang


@register
class HtmlExtract(Operator):
    """Extract main text, title and <html lang> from raw HTML (fast | trafilatura | resiliparse)."""

    name = "html_extract"
    kind = "map"
    Params = HtmlExtractParams
    needs = frozenset({"html"})
    adds = frozenset({"text", "title", "html_lang"})
    resources = Resources(num_cpus=1, batch_size=256)
    requires = ("resiliparse", "trafilatura")

    def setup(self) -> None:
        if self.params.extractor == "trafilatura" or self._fallback_chars() > 0:
            import trafilatura  # noqa: F401  (fail early if its optional deps are missing)

    def _fallback_chars(self) -> int:
        return self.params.fallback_chars if self.params.cascade > 0 else 0

    def process(self, batch: pa.Table) -> pa.Table:
        from operators._extract_charset import decode_html, sniff_not_html

        n = batch.num_rows
        htmls = batch.column("html").to_pylist()
        ctypes = (batch.column("content_type").to_pylist() if "content_type" in batch.column_names
                  else [None] * n)
        if DROP_REASON in batch.column_names:
            already = pc.is_valid(batch.column(DROP_REASON)).to_pylist()
        else:
            already = [False] * n
        old_text = batch.column("text").to_pylist() if "text" in batch.column_names else [None] * n
        texts, titles, langs, reasons = [], [], [], []
        ext, cap, min_chars = self.params.extractor, self.params.max_html_bytes, self.params.min_chars
        fallback = self._fallback_chars()
        max_page, max_depth, limit = self.params.max_page_bytes, self.params.max_depth, self.params.time_limit_s
        for i in range(n):
            raw, text, title, lang, reason = htmls[i], old_text[i], None, None, None
            if already[i]:
                pass  # quarantined upstream (reader): leave it as it is
            elif raw is None or not raw.strip():
                reason = "extract:empty"
            else:
                if isinstance(raw, str):
                    raw = raw.encode("utf-8")
                why = sniff_not_html(raw, ctypes[i])
                if why:
                    reason = "extract:not_html"
                elif len(raw) > max_page:
                    reason = "extract:too_large"
                else:
                    decoded, _, _ = decode_html(raw[:cap], ctypes[i])
                    if decoded is None:
                        reason = "extract:undecodable"
                    elif nesting_depth(decoded, max_depth) >= max_depth:
                        reason = "extract:too_deep"
                    else:
                        try:
                            with time_limit(limit):
                                text, title, lang = _extract_one(ext, decoded, fallback)
                        except ExtractTimeout:
                            log.warning("html_extract(%s): row %d took over %ss, quarantined", ext, i, limit)
                            reason, text = "extract:timeout", None
                        except Exception as e:  # one bad page must not stop the batch
                            log.warning("html_extract(%s) failed on row %d: %r", ext, i, e)
                            reason, text = "extract:error", None
                        else:
                            text = (text or "").strip()
                            if len(text) < min_chars:
                                reason = "extract:empty"
            texts.append(text)
            titles.append(title)
            langs.append(lang)
            reasons.append(reason)
        out = set_column(batch, "text", pa.array(texts, pa.string()))
        out = set_column(out, "title", pa.array(titles, pa.string()))
        out = set_column(out, "html_lang", pa.array(langs, pa.string()))
        if not self.params.keep_html:
            out = set_column(out, "html", pa.nulls(n, batch.schema.field("html").type))
        mask = pa.array([r is not None for r in reasons], pa.bool_())
        return mark_dropped(out, mask, pa.array(reasons, pa.string()))
