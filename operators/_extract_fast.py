"""gristmill's fast main-content extractor ("fast"): resiliparse's Lexbor DOM + trafilatura-style
container selection, boilerplate pruning and block rules, text rendered by resiliparse's C++ code;
trafilatura itself only for the ~1 % of pages where that finds almost nothing.

Per page:
1. one regex pass over the start tags of the raw HTML classifies their class / id / role / style
   (cached per distinct tag) and marks them: ``data-gmc=<stage>`` for main-container candidates
   (trafilatura's BODY_XPATH stages 1-5), ``data-gmd`` for boilerplate (trafilatura's discard
   vocabulary: navigation, share, comments, related, author boxes, ads, hidden ...);
2. parse with resiliparse (Lexbor, C); the candidates are the first element of each stage that
   is not inside aside / nav / footer / menu / figure (trafilatura removes those before it looks);
3. the candidate becomes <body>'s only child and resiliparse renders it as minimal HTML
   (<p>, <h1-6>, <ul>/<ol>, <a>), skipping marked boilerplate and trafilatura's
   MANUALLY_CLEANED elements (skip_elements: no Python DOM loop; unless that removes more than
   6/7 of its text: trafilatura's over-pruning guard);
4. trafilatura's block rules as regex passes over that string: paragraphs, headings and lists
   are kept, link-dense blocks dropped (trafilatura's link_density_test thresholds), loose lines
   (div / span text) kept only in containers with little paragraph text, or when they are table
   rows or paragraph-long; headings whose section was dropped, and trailing headings and short
   non-sentence lines (credits, captions, "Share") are dropped; no-break spaces become spaces
   and soft hyphens go, as in trafilatura's output;
5. while the text is shorter than ENOUGH characters, the next stage's candidate is added
   (trafilatura moves on to the next BODY_XPATH stage when one yields almost nothing); with no
   usable candidate the whole page is rendered with resiliparse's main-content heuristics and
   the same block rules;
6. text shorter than FALLBACK_CHARS: trafilatura (fast mode, no comments) extracts the page.

The token vocabulary and thresholds follow trafilatura 2.3.1 (``xpaths.py``, ``settings.py``,
``htmlprocessing.py``; Apache-2.0, Adrien Barbaresi).
"""
from __future__ import annotations

import re
from html import unescape as html_unescape

from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.html import HTMLTree

# -- 1. main container stages (trafilatura BODY_XPATH) ---------------------------------------
_CONTAINER_TAGS = frozenset({"article", "div", "main", "section"})
_S1_ID = re.compile(r"(?:entry|article|art)-content|article__content|article(?:-|__)?body|articleBody|body-text")
_S1_CLASS = re.compile(
    r"post[-_]text|post-body|post-?entry|post[-_]?content|postContent|post_inner_wrapper|article-?text|"
    r"articleText|(?:entry|page|text|article|art)-content|article__content|article(?:-|__)?body|articleBody|"
    r"ArticleContent|body-text|article__container")
_S3_ID = re.compile(r"^primary|story-body")
_S3_CLASS = re.compile(r"^article |post-bodycopy|story-?content|(?:theme|blog|section|single)-content|single-post|"
                       r"main-column|wpb_text_column|story-body|field-body")
_S3_CLASS_I = re.compile(r"fulltext", re.I)
_S4_ID = re.compile(r"content-main|content-body|contentBody")
_S4_CLASS = re.compile(r"content[-_]main|content(?:-|__)body")


# superset of the stage tests below (any case): a div / section whose class and id hold none of
# these, with no role or itemprop to test, is no candidate (most are not: one search, not five)
_STAGE_ANY = re.compile(r"post|entry|article|content|body|stor|primary|main|text|cell", re.I)


def _stage(tag: str, cls: str, id_: str, role: str, itemprop: str) -> int:
    """Best (lowest) BODY_XPATH stage this element matches, 9 if none."""
    if tag not in _CONTAINER_TAGS:
        return 9
    if (tag != "article" and tag != "main" and not role and not itemprop
            and not _STAGE_ANY.search(cls + "\x00" + id_)):
        return 9
    if (cls == "post" or cls == "entry" or itemprop == "articleBody" or id_ == "articleContent"
            or (id_ and _S1_ID.search(id_)) or (cls and _S1_CLASS.search(cls))):
        return 1
    if tag == "article":
        return 2
    if (role == "article" or id_ in ("article", "story")
            or cls in ("postarea", "art-postcontent", "text", "cell", "story")
            or (id_ and _S3_ID.search(id_)) or (cls and (_S3_CLASS.search(cls) or _S3_CLASS_I.search(cls)))):
        return 3
    if (id_ == "content" or cls == "content" or (id_ and _S4_ID.search(id_)) or (cls and _S4_CLASS.search(cls))
            or "main-content" in id_.lower() or "main-content" in cls.lower() or "page-content" in cls.lower()):
        return 4
    if tag == "main" or cls.startswith("main") or id_.startswith("main") or role.startswith("main"):
        return 5
    return 9


# -- 2. boilerplate (trafilatura OVERALL_DISCARD / comments / teasers), tested on class / id ---
_DISCARD_TAGS = frozenset({"div", "li", "ul", "ol", "dl", "p", "section", "span", "aside", "nav", "table"})
_BOTH = r"^shar|social|viral|newsletter|syndication|tags|sidebar|banner|bread-?crumb|button|author"
_ID_ONLY = r"^(?:jp-|dpsp-content)|bmdh|footer|Footer|share|Share|nav|Nav|menu|related|message-container|premium|^ad-"
_CLASS_ONLY = (
    r"^(?:nav|post-nav|ZendeskForm)|subnav|avigation|navbar|navbox|menu|bar| ad |-ad-|(?:^| )ad-|dfp[Aa]d|"
    r"outbrain|taboola|criteo|paid-?content|widget|footer|Footer|byline|Byline|share-|sociable|embedded|embed|"
    r"tag-list|consent|modal-content|permission|elated|next-|-stories|most-popular|more-on|meta|rating|"
    r"attachment|timestamp|user-info|user-profile|-icon|article-infos|message-container|slide|viewport|"
    r"overlay|options|expand|obfuscated|blurred|mol-factbox|yin|zlylin|nfoline")
_DISCARD_ID = re.compile(f"{_BOTH}|{_ID_ONLY}")
_DISCARD_CLASS = re.compile(f"{_BOTH}|{_CLASS_ONLY}")
_ANY_CLASS = re.compile(r"^hide-|comments-title|nocomments|-reply-|message|akismet|suggest-links|-hide-|hide-print|"
                        r" hidden| hide|noprint|notloaded|^reply-|^[Cc]omment(?!ary)|(?:article|post)-comments|"
                        r"comment-?list|comment-page|comments-content|[Tt]easer")
_ANY_ID = re.compile(r"hidden|reader-comments|akismet|^reply-|^(?:[Cc]omment(?!ary)|comol|disqus_thread|dsq-comments)"
                     r"|^respond|[Tt]easer")


# the class / id tests of a _DISCARD_TAGS element, each as one search instead of two
_BP_CLASS = re.compile(f"{_ANY_CLASS.pattern}|{_DISCARD_CLASS.pattern}")
_BP_ID = re.compile(f"{_ANY_ID.pattern}|{_DISCARD_ID.pattern}")


def _boilerplate(tag: str, cls: str, id_: str, a: dict) -> bool:
    discard_tag = tag in _DISCARD_TAGS
    if cls and (_BP_CLASS if discard_tag else _ANY_CLASS).search(cls):
        return True
    if id_ and (_BP_ID if discard_tag else _ANY_ID).search(id_):
        return True
    style = a.get("style")
    if style and ("display:none" in style or "display: none" in style):
        return True
    if a.get("aria") == "true":
        return True
    if discard_tag:
        first = id_ or cls
        if first and "cookie" in first:
            return True
        role = a.get("role")
        if role and "nav" in role.lower():
            return True
    return False


# -- marking: one regex pass over the raw HTML tags ----------------------------------------------
_TAG_RE = re.compile(r"<(article|div|main|section|li|ul|ol|dl|p|span|aside|nav|table|ARTICLE|DIV|MAIN|SECTION|LI|UL|OL|DL|P|SPAN|ASIDE|NAV|TABLE)(\s[^<>]*)>")
_CACHE: dict[str, str] = {}


def _classify(tag: str, a: dict) -> tuple[int, bool]:
    """(container stage 1-5 or 9, boilerplate?) for one start tag."""
    cls, id_ = a.get("class", ""), a.get("id", "")
    stage = _stage(tag, cls, id_, a.get("role", ""), a.get("itemprop", ""))
    return stage, _boilerplate(tag, cls, id_, a)


# superset of every class / id token above: a tag whose class and id match none of these needs no
# further test (most tags: layout classes such as "row col-md-6")
_UNION = re.compile(
    r"post|entry|article|art-|content|body|text|story|primary|main|cell|single|column|field|fulltext|"
    r"shar|social|viral|newsletter|syndication|tag|sidebar|banner|crumb|button|author|jp-|dpsp|bmdh|foot|"
    r"nav|menu|related|message|premium|ad-| ad |dfp|outbrain|taboola|criteo|paid|widget|byline|sociable|embed|"
    r"consent|modal|permission|elated|next-|stories|popular|more-on|meta|rating|attachment|timestamp|user|"
    r"-icon|infos|slide|viewport|overlay|options|expand|obfuscated|blurred|factbox|yin|zlylin|nfoline|cookie|"
    r"hide|hidden|comment|reply|akismet|suggest|print|notloaded|comol|disqus|dsq|respond|teaser|bar")


def _attr_re(name: str) -> re.Pattern:
    return re.compile(r"(?:^|\s)" + name + r"""\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+))""", re.I)


_ATTRS = (("class", _attr_re("class")), ("id", _attr_re("id")), ("role", _attr_re("role")),
          ("style", _attr_re("style")), ("itemprop", _attr_re("itemprop")), ("aria", _attr_re("aria-hidden")))


def _mark_tag(m: re.Match) -> str:
    whole = m.group(0)
    hit = _CACHE.get(whole)
    if hit is not None:
        return hit
    attrs = m.group(2)
    a = {}
    low = attrs.lower()
    for key, rx in _ATTRS:
        if (key if key != "aria" else "aria-hidden") in low:
            am = rx.search(attrs)
            if am is not None:
                v = am.group(1)
                if v is None:
                    v = am.group(2) if am.group(2) is not None else am.group(3)
                a[key] = v
    out = whole
    tag = m.group(1).lower()
    if a and (tag == "article" or tag == "main" or len(a) > ("class" in a) + ("id" in a)
              or _UNION.search((a.get("class", "") + " " + a.get("id", "")).lower())):
        stage, drop = _classify(tag, a)
        extra = ""
        if stage < 9:
            extra += f' data-gmc="{stage}"'
        if drop:
            extra += ' data-gmd=""'
        if extra:
            end = -2 if whole.endswith("/>") else -1
            out = whole[:end] + extra + whole[end:]
    if len(_CACHE) > 200_000:
        _CACHE.clear()
    _CACHE[whole] = out
    return out


def mark(html: str) -> str:
    """Tag container candidates (data-gmc=stage) and boilerplate (data-gmd) in the raw HTML."""
    return _TAG_RE.sub(_mark_tag, html)


# descendants of the container that are never main text (trafilatura's MANUALLY_CLEANED, the marked
# boilerplate); "body > * " scopes them to the container, which is body's only child when rendered
_ALWAYS_SKIP = ["aside", "nav", "footer", "form", "figure", "figcaption", "button", "select", "iframe", "menu",
                "time", "label", "fieldset", "legend", "dialog", "textarea", "datalist", "output", "progress",
                "video", "audio", "canvas", "svg", "map", "picture", "object", "embed", "applet", "frame",
                "marquee", "noscript", "[role=navigation]", "[aria-hidden=true]", "[hidden]"]
_SKIP = ["body > * " + s for s in _ALWAYS_SKIP]
_SKIP_BP = _SKIP + ["body > * [data-gmd]"]
MIN_TEXT = 250

# trafilatura cleans aside / nav / footer / menu / figure out of the tree before it looks for the
# container: a candidate inside one of them (a teaser "post" in a sidebar) is not a candidate
_NOT_IN = ":not(aside *):not(nav *):not(footer *):not(menu *):not(figure *)"
# stage 2 is any <article>, stage 5 includes any <main>: also those without attributes, which
# the tag regex does not see
_STAGE_SEL = tuple(", ".join(part + _NOT_IN for part in sel.split(", ")) for sel in (
    '[data-gmc="1"]', 'article', '[data-gmc="3"]', '[data-gmc="4"]', '[data-gmc="5"], main'))


def _candidates(root) -> list[tuple[str, object]]:
    """(selector, element): the first element of each BODY_XPATH stage, in trafilatura's order."""
    out = []
    for sel in _STAGE_SEL:
        el = root.query_selector(sel)
        if el is not None and all(el is not o for _, o in out):
            out.append((sel, el))
    return out


def page_meta(tree: HTMLTree) -> tuple[str | None, str | None]:
    """(<title>, <html lang>) of a parsed page."""
    title = (tree.title or "").strip() or None
    lang = None
    root = tree.document.first_element_child if tree.document is not None else None
    if root is not None:
        lang = (root.getattr("lang") or root.getattr("xml:lang") or "").strip() or None
    return title, lang


# -- 3. trafilatura's block rules on resiliparse's minimal-HTML rendering -----------------------
# resiliparse renders the container as "minimal HTML": <p>, <h1-6>, <ul>/<ol> (top level at the
# start of a line, nested ones indented), <pre>, <a href> with links=True; any other text comes
# as plain lines (div / span / td / blockquote text). trafilatura keeps paragraphs, headings and
# lists, drops link-dense blocks, and keeps loose div text only when the container has little
# paragraph text. These rules run as regex passes over that small string.
_BLOCK = re.compile(r"^(?:<(p|h[1-6]|pre)>(.*?)</\1>|<(ul|ol)>\n(.*?)\n</\3>)\s*$|^([^\n]*)$", re.S | re.M)
_TAG = re.compile(r"<[^>]+>")
_LINK = re.compile(r"<a [^>]*>(.*?)</a>", re.S)
_ITEM = re.compile(r"<li>(.*?)</li>", re.S)
_SPACES = re.compile("[\u00a0\u2000-\u200a\u202f\u205f\u3000]")
# a container whose paragraphs hold less text than this also contributes its loose lines
# (trafilatura: div text counts when <p> text < 3 x MIN_EXTRACTED_SIZE)
LOOSE_MIN = 1500
LOOSE_MIN_PAGE = 500  # same, when no container was found and the whole page is rendered
# keep adding the next container stage while the text is shorter than this (trafilatura goes on
# to the next BODY_XPATH stage while the result is nearly empty)
ENOUGH = 750
KEEP_ROWS = True  # loose lines with a tab are table rows: kept (trafilatura keeps tables)
LOOSE_LONG = 400  # loose lines this long are kept anyway (a paragraph written without <p>)
TRAIL_SHORT = 100
_SENTENCE_END = re.compile(r'[.!?:"\u201c\u201d\u00bb)]\s*$')


def _link_dense(inner: str, kind: str, last: bool) -> bool:
    """trafilatura's link_density_test on one rendered block."""
    links = _LINK.findall(inner)
    if not links:
        return False
    text = " ".join(_TAG.sub("", inner).split())
    links = [" ".join(_TAG.sub("", a).split()) for a in links]
    if len(links) == 1 and len(links[0]) > 100 and len(links[0]) > len(text) * 0.9:
        return True
    limit = (60 if last else 30) if kind == "p" else (300 if last else 100)
    links = [a for a in links if a]
    if len(text) < limit:
        if not links:
            return True
        linklen = sum(map(len, links))
        short = sum(1 for a in links if len(a) < 10)
        return linklen > len(text) * 0.8 or (len(links) > 1 and short / len(links) > 0.8)
    if len(links) > 4:
        linklen = sum(map(len, links))
        return linklen > len(text) * 0.9 and linklen < 100 * len(links)
    return False


def _blocks(rendered: str, loose_min: int) -> list[tuple[str, str]]:
    """Kept (kind, text) blocks of one minimal-HTML rendering: p / h / l (list) / t (loose line)."""
    blocks = []
    for m in _BLOCK.finditer(rendered):
        if m.group(1):
            blocks.append((m.group(1)[0], m.group(2)))
        elif m.group(3):
            blocks.append(("l", m.group(4)))
        elif m.group(5).strip():
            blocks.append(("t", m.group(5)))
    keep_loose = sum(len(b) for k, b in blocks if k == "p") < loose_min
    out: list[tuple[str, str]] = []
    dropped = False
    n = len(blocks)
    for i, (kind, inner) in enumerate(blocks):
        if ((kind == "t" and not keep_loose and not (KEEP_ROWS and "\t" in inner)
             and not (LOOSE_LONG and len(inner) >= LOOSE_LONG))
                or (kind != "h" and _link_dense(inner, kind, i == n - 1))):
            dropped = True
            continue
        # a heading whose section was dropped (link list, teaser lines) or that is followed by
        # another heading heads nothing
        if dropped or kind == "h":
            if out and out[-1][0] == "h":
                out.pop()
        dropped = False
        if kind == "l":
            text = "\n".join("- " + t for t in (_TAG.sub("", x).strip() for x in _ITEM.findall(inner)) if t)
        else:
            text = _TAG.sub("", inner).strip()
        if text:
            out.append((kind, text))
    # trailing headings (trafilatura's NOT_AT_THE_END), and trailing short lines that are no
    # sentence (credits, captions, "Share", "Newsletter")
    while out and (out[-1][0] == "h" or (out[-1][0] in "pt" and len(out[-1][1]) < TRAIL_SHORT
                                         and not _SENTENCE_END.search(out[-1][1]))):
        out.pop()
    return out


def _render(tree: HTMLTree, main_content: bool, skip: list[str] | None) -> str:
    return extract_plain_text(tree, preserve_formatting="minimal_html", main_content=main_content, links=True,
                              list_bullets=True, comments=False, post_meta=False, skip_elements=skip)


def _finish(blocks: list[tuple[str, str]]) -> str:
    text = html_unescape("\n".join(t for _, t in blocks))
    # trafilatura's output has plain spaces and no soft hyphens
    return _SPACES.sub(" ", text).replace("\u00ad", "")


# pages whose fast text is shorter than this many characters are re-extracted by trafilatura
# (fast mode, whole page): a short text means the container heuristics found nothing reliable
FALLBACK_CHARS = 500


def _trafilatura(html: str) -> str:
    import trafilatura

    return trafilatura.extract(html, fast=True, include_comments=False) or ""


def extract_fast(html: str, fallback_chars: int | None = None) -> tuple[str, str | None, str | None]:
    """Main text, title and declared language of one decoded HTML page. ``fallback_chars``:
    trafilatura re-extracts pages whose text is shorter (default FALLBACK_CHARS; 0 = never)."""
    limit = FALLBACK_CHARS if fallback_chars is None else fallback_chars
    marked = mark(html)
    tree = HTMLTree.parse(marked)
    title, lang = page_meta(tree)
    if tree.body is None:
        return "", title, lang
    acc: list[tuple[str, str]] = []
    used = False
    for sel, cand in _candidates(tree.body):
        if used:  # the previous candidate replaced <body>'s children: start from a fresh tree
            tree = HTMLTree.parse(marked)
            cand = tree.body.query_selector(sel)
            if cand is None:
                continue
        total = len(cand.text)
        tree.body.replace_children(cand)
        used = True
        rendered = _render(tree, False, _SKIP_BP)
        plain = len(_TAG.sub("", rendered))
        if plain * 7 < total:  # (.text counts script / style too: confirm on the rendered text)
            whole = _render(tree, False, _SKIP)
            whole_plain = len(_TAG.sub("", whole))
            if plain * 7 < whole_plain:  # boilerplate marks took nearly everything: trafilatura's guard
                rendered, plain = whole, whole_plain
        if plain < MIN_TEXT:
            continue
        # a later stage often contains an earlier one (<main> around <article>): add only blocks
        # the earlier stages did not already give, or short pages come out twice
        seen = {t for _, t in acc}
        acc.extend(b for b in _blocks(rendered, LOOSE_MIN) if b[1] not in seen)
        if sum(len(t) for _, t in acc) >= ENOUGH:
            break
    else:
        if used:
            tree = HTMLTree.parse(marked)
        seen = {t for _, t in acc}  # the page holds the containers already taken
        acc.extend(b for b in _blocks(_render(tree, True, None), LOOSE_MIN_PAGE) if b[1] not in seen)
    text = _finish(acc)
    if limit and len(text) < limit:
        text = _trafilatura(html) or text
    return text, title, lang
