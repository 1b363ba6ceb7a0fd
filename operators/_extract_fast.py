"""gristmill's fast main-content extractor ("fast"): resiliparse's Lexbor DOM + trafilatura-style
container selection and boilerplate pruning, text rendered by resiliparse's C++ code, and a
trafilatura fallback on the container only where the fast path looks unreliable.

Per page:
1. one regex pass over the start tags of the raw HTML classifies their class / id / role / style
   (cached per distinct tag) and marks them: ``data-gmc=<stage>`` for main-container candidates
   (trafilatura's BODY_XPATH stages 1-5), ``data-gmd`` for boilerplate (trafilatura's discard
   vocabulary: navigation, share, comments, related, author boxes, ads, hidden ...);
2. parse with resiliparse (Lexbor, C); the container is the first element of the first stage
   that has >= MIN_TEXT characters;
3. inside it, the outermost marked boilerplate elements are dropped (unless that removes more than
   6/7 of its text: trafilatura's over-pruning guard), plus aside / nav / footer / form / figure;
4. the container becomes the only child of <body>; resiliparse renders it twice, with and
   without its main-content heuristics. If the heuristics drop more than 5 % of the container's
   text (CASCADE_RATIO), they disagree with the container (they drop lists, headings, short
   paragraphs that are content): trafilatura (fast mode, no comments) then extracts the
   container's HTML only — a fraction of the page, so a fraction of its cost. This happens on
   about one page in five.
5. no container: resiliparse's main-content extraction of the whole page.

The token vocabulary follows trafilatura 2.3.1's ``xpaths.py`` (Apache-2.0, Adrien Barbaresi).
"""
from __future__ import annotations

import re

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


def _stage(tag: str, cls: str, id_: str, role: str, itemprop: str) -> int:
    """Best (lowest) BODY_XPATH stage this element matches, 9 if none."""
    if tag not in _CONTAINER_TAGS:
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


def _boilerplate(tag: str, cls: str, id_: str, a: dict) -> bool:
    if cls and _ANY_CLASS.search(cls):
        return True
    if id_ and _ANY_ID.search(id_):
        return True
    style = a.get("style")
    if style and ("display:none" in style or "display: none" in style):
        return True
    if a.get("aria") == "true":
        return True
    if tag in _DISCARD_TAGS:
        if id_ and _DISCARD_ID.search(id_):
            return True
        if cls and _DISCARD_CLASS.search(cls):
            return True
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


_ALWAYS_SKIP = ["aside", "nav", "footer", "form", "figure", "figcaption", "button", "select", "iframe",
                "[role=navigation]", "[aria-hidden=true]", "[hidden]"]
_SKIP_SEL = ", ".join(_ALWAYS_SKIP)
MIN_TEXT = 250


# stage 2 is any <article>, stage 5 includes any <main>: also those without attributes, which
# the tag regex does not see
_STAGE_SEL = ('[data-gmc="1"]', 'article', '[data-gmc="3"]', '[data-gmc="4"]', '[data-gmc="5"], main')


def _candidates(root):
    """The first element of each BODY_XPATH stage, in trafilatura's order."""
    out = []
    for sel in _STAGE_SEL:
        el = root.query_selector(sel)
        if el is not None and all(el is not o for o in out):
            out.append(el)
    return out


def _prune(container) -> bool:
    """Drop boilerplate elements inside ``container``. Returns False when that removed more than
    6/7 of its text (trafilatura's over-pruning guard): the caller then starts again unpruned."""
    container.setattr("data-gmk", "")
    outer = container.query_selector_all("[data-gmk] [data-gmd]:not([data-gmk] [data-gmd] *)")
    if not len(outer):
        return True
    total = len(container.text)
    for el in outer:
        el.decompose()
    return len(container.text) > total / 7


def page_meta(tree: HTMLTree) -> tuple[str | None, str | None]:
    """(<title>, <html lang>) of a parsed page."""
    title = (tree.title or "").strip() or None
    lang = None
    root = tree.document.first_element_child if tree.document is not None else None
    if root is not None:
        lang = (root.getattr("lang") or root.getattr("xml:lang") or "").strip() or None
    return title, lang


# fall back to trafilatura (on the container only) when resiliparse's main-content pass drops
# more than this share of the container's text: its heuristics disagree with the container and
# trafilatura's finer rules (lists, headings, link density) win there (measured, see README)
CASCADE_RATIO = 0.95


def _trafilatura(html: str) -> str:
    import trafilatura

    return trafilatura.extract(html, fast=True, include_comments=False) or ""


def extract_fast(html: str, cascade: float | None = None) -> tuple[str, str | None, str | None]:
    """Main text, title and declared language of one decoded HTML page. ``cascade``: the share of
    the container's text resiliparse's heuristics may drop before trafilatura takes over
    (default CASCADE_RATIO; 0 = never)."""
    ratio = CASCADE_RATIO if cascade is None else cascade
    marked = mark(html)
    tree = HTMLTree.parse(marked)
    title, lang = page_meta(tree)
    body = tree.body
    if body is None:
        return "", title, lang
    for cand in _candidates(body):
        if not _prune(cand):  # over-pruned: parse again, keep this container whole
            tree = HTMLTree.parse(marked)
            body = tree.body
            cand = body.query_selector(f'[data-gmc="{cand.getattr("data-gmc")}"]')
        if len(cand.text.strip()) < MIN_TEXT:
            continue
        for el in cand.query_selector_all(_SKIP_SEL):
            el.decompose()
        body.replace_children(cand)
        text = extract_plain_text(tree, main_content=True, comments=False, post_meta=False)
        if ratio > 0:
            full = extract_plain_text(tree, main_content=False, comments=False, post_meta=False)
            if len(text) < ratio * len(full):
                return _trafilatura("<html><body>" + cand.html + "</body></html>"), title, lang
        return text, title, lang
    return extract_plain_text(tree, main_content=True, comments=False, post_meta=False), title, lang
