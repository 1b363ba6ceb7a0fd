"""gristmill's fast main-content extractor ("fast"): resiliparse's Lexbor DOM + trafilatura-style
container selection and boilerplate pruning, with the text rendered by resiliparse's C++ code.

Pipeline per page (all DOM work is in C except a short loop over class/id-carrying elements):
1. parse with resiliparse (Lexbor);
2. pick the main container the way trafilatura's BODY_XPATH stages do (first element matching
   stage 1, else stage 2, ...), checked for enough text;
3. inside that container, drop boilerplate sections found by their class / id / role / style
   (trafilatura's discard vocabulary, applied only inside the container, with trafilatura's
   over-pruning guard: nothing is dropped if that would remove more than 6/7 of the text);
4. move the container to be the only child of <body> and render it with resiliparse's
   ``extract_plain_text(main_content=True)`` (its own nav/footer/hidden-element heuristics);
5. no container, or too little text: resiliparse's main-content extraction of the whole page.

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
_ATTR_RE = re.compile(r"""([a-zA-Z_:][-a-zA-Z0-9_:.]*)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+))""")
_WANTED = {"class": "class", "id": "id", "role": "role", "style": "style", "itemprop": "itemprop",
           "aria-hidden": "aria"}
_CACHE: dict[str, str] = {}


def _classify(tag: str, a: dict) -> tuple[int, bool]:
    """(container stage 1-5 or 9, boilerplate?) for one start tag."""
    cls, id_ = a.get("class", ""), a.get("id", "")
    stage = _stage(tag, cls, id_, a.get("role", ""), a.get("itemprop", ""))
    return stage, _boilerplate(tag, cls, id_, a)


def _mark_tag(m: re.Match) -> str:
    whole = m.group(0)
    hit = _CACHE.get(whole)
    if hit is not None:
        return hit
    attrs = m.group(2)
    a = {}
    if "=" in attrs:
        for am in _ATTR_RE.finditer(attrs):
            k = _WANTED.get(am.group(1).lower())
            if k is not None and k not in a:
                v = am.group(2)
                if v is None:
                    v = am.group(3) if am.group(3) is not None else am.group(4)
                a[k] = v
    out = whole
    if a:
        stage, drop = _classify(m.group(1).lower(), a)
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
MIN_TEXT = 250


def _candidates(root):
    """The first element of each BODY_XPATH stage, in trafilatura's order."""
    out = []
    for s in range(1, 6):
        el = root.query_selector(f'[data-gmc="{s}"]')
        if el is not None and all(el is not o for o in out):
            out.append(el)
    return out


def _prune(container) -> None:
    """Drop boilerplate elements inside ``container`` unless that would remove > 6/7 of its text."""
    container.setattr("data-gmk", "")
    outer = container.query_selector_all("[data-gmk] [data-gmd]:not([data-gmk] [data-gmd] *)")
    if not len(outer):
        return
    total = len(container.text)
    removed = sum(len(el.text) for el in outer)
    if total - removed > total / 7:
        for el in outer:
            el.decompose()


def page_meta(tree: HTMLTree) -> tuple[str | None, str | None]:
    """(<title>, <html lang>) of a parsed page."""
    title = (tree.title or "").strip() or None
    lang = None
    root = tree.document.first_element_child if tree.document is not None else None
    if root is not None:
        lang = (root.getattr("lang") or root.getattr("xml:lang") or "").strip() or None
    return title, lang


def extract_fast(html: str) -> tuple[str, str | None, str | None]:
    """Main text, title and declared language of one decoded HTML page."""
    tree = HTMLTree.parse(mark(html))
    title, lang = page_meta(tree)
    body = tree.body
    if body is None:
        return "", title, lang
    for cand in _candidates(body):
        _prune(cand)
        if len(cand.text.strip()) < MIN_TEXT:
            continue
        body.replace_children(cand)
        return (extract_plain_text(tree, main_content=True, comments=False, post_meta=False,
                                   skip_elements=_ALWAYS_SKIP), title, lang)
    return extract_plain_text(tree, main_content=True, comments=False, post_meta=False), title, lang
