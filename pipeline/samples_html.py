"""A small deterministic gzip WARC of realistic multilingual web pages, made by code (no network).

Each page has the usual boilerplate (navigation, cookie banner, share buttons, sidebar, comments,
footer) around one main article, in English, German, French, Spanish or Polish; one page per
language is declared in a legacy charset (windows-1252 / iso-8859-2) through the HTTP header, one
through <meta> only. Used by the quickstart sample builder and by tests::

    from pipeline.samples_html import make_sample_warc
    make_sample_warc("data/sample.warc.gz", n_pages=10)
"""
from __future__ import annotations

import gzip
import hashlib
import uuid
from html import escape

_ARTICLES = {
    "en": ("How rivers shape their valleys",
           ["Rivers carve their valleys slowly, grain by grain, over thousands of years. Where the current is "
            "fast, it lifts sand and gravel from the bed and carries them downstream.",
            "In the lowlands the water loses speed, drops its load and starts to meander. Each bend grows "
            "as the outer bank erodes while the inner bank collects new sediment.",
            "Floods reset this pattern from time to time: a single high-water event can move more material "
            "than a decade of ordinary flow, cutting new channels across the plain."]),
    "de": ("Warum Bienen im Winter zittern",
           ["Honigbienen überwintern als dichte Traube im Stock. Die Arbeiterinnen im Inneren erzeugen "
            "Wärme, indem sie ihre Flugmuskeln zittern lassen, ohne die Flügel zu bewegen.",
            "So halten sie die Königin auch bei strengem Frost bei rund fünfundzwanzig Grad. Die Bienen am "
            "Rand wechseln regelmäßig mit denen in der Mitte, damit keine auskühlt.",
            "Der Honigvorrat ist dabei der Brennstoff: Ein starkes Volk verbraucht über den Winter "
            "zwischen zehn und zwanzig Kilogramm davon."]),
    "fr": ("Le pain au levain, une affaire de patience",
           ["Le levain naturel est un mélange de farine et d'eau dans lequel vivent des levures sauvages et "
            "des bactéries lactiques. Il faut le nourrir chaque jour pendant près d'une semaine.",
            "La pâte lève lentement, souvent toute une nuit, ce qui développe des arômes acidulés et une mie "
            "alvéolée que la levure de boulanger ne donne pas.",
            "Une longue cuisson dans un four très chaud, idéalement avec de la vapeur, donne enfin la croûte "
            "épaisse et caramélisée qu'on attend d'un bon pain."]),
    "es": ("El regreso del lince ibérico",
           ["Hace veinte años quedaban menos de cien linces ibéricos en libertad, repartidos en dos "
            "pequeñas poblaciones del sur de la península.",
            "Los programas de cría en cautividad y la recuperación del conejo, su presa principal, han "
            "permitido liberar cientos de ejemplares en Andalucía, Extremadura, Castilla-La Mancha y Portugal.",
            "Hoy la especie supera los dos mil individuos, aunque los atropellos en las carreteras siguen "
            "siendo la primera causa de muerte no natural."]),
    "pl": ("Jak powstaje bursztyn",
           ["Bursztyn to skamieniała żywica drzew iglastych, które rosły nad dzisiejszym Bałtykiem około "
            "czterdziestu milionów lat temu.",
            "Żywica spływała po pniach, zatapiając owady, nasiona i pyłki, a potem przez miliony lat "
            "twardniała pod warstwami osadów.",
            "Sztormy wciąż wyrzucają jego bryłki na plaże, dlatego po jesiennych wichurach wybrzeże "
            "odwiedzają poszukiwacze z siatkami i latarkami."]),
}
_CHROME = {
    "en": ("Home", "News", "Science", "About us", "We use cookies to improve your experience.", "Share on Facebook",
           "Most read", "Leave a comment", "Great article, thanks!", "All rights reserved. Privacy policy"),
    "de": ("Startseite", "Nachrichten", "Wissen", "Über uns", "Wir verwenden Cookies.", "Auf Facebook teilen",
           "Meistgelesen", "Kommentar schreiben", "Toller Artikel, danke!", "Alle Rechte vorbehalten. Datenschutz"),
    "fr": ("Accueil", "Actualités", "Sciences", "À propos", "Nous utilisons des cookies.", "Partager sur Facebook",
           "Les plus lus", "Laisser un commentaire", "Super article, merci !", "Tous droits réservés. Confidentialité"),
    "es": ("Inicio", "Noticias", "Ciencia", "Quiénes somos", "Usamos cookies.", "Compartir en Facebook",
           "Lo más leído", "Deja un comentario", "¡Gran artículo, gracias!", "Todos los derechos reservados."),
    "pl": ("Strona główna", "Wiadomości", "Nauka", "O nas", "Używamy plików cookie.", "Udostępnij na Facebooku",
           "Najczęściej czytane", "Zostaw komentarz", "Świetny artykuł, dzięki!", "Wszelkie prawa zastrzeżone."),
}
_LEGACY = {"en": "windows-1252", "de": "windows-1252", "fr": "windows-1252", "es": "windows-1252",
           "pl": "iso-8859-2"}
LANGS = tuple(_ARTICLES)


def sample_page(i: int) -> tuple[str, str, str, str]:
    """(url, language, html text, main-text snippet) of sample page ``i`` (deterministic)."""
    lang = LANGS[i % len(LANGS)]
    title, paras = _ARTICLES[lang]
    home, news, sci, about, cookie, share, most, leave, comment, legal = _CHROME[lang]
    k = i // len(LANGS)
    # vary the article a little per page so pages are not exact duplicates
    paras = paras[k % len(paras):] + paras[:k % len(paras)]
    url = f"https://{lang}.example.org/{sci.lower().replace(' ', '-')}/{i:04d}-{k}"
    body = "\n".join(f"<p>{escape(p)}</p>" for p in paras)
    related = "".join(f'<li><a href="/{j}">{escape(_ARTICLES[LANGS[j % len(LANGS)]][0])}</a></li>'
                      for j in range(i + 1, i + 4))
    html = f"""<!DOCTYPE html>
<html lang="{lang}"><head><meta charset="{{charset}}"><title>{escape(title)} | Example {lang.upper()}</title>
<meta name="viewport" content="width=device-width"><style>body{{font-family:sans-serif}}</style>
<script>window.dataLayer=[];</script></head>
<body><div id="cookie-banner" class="cookie-consent">{escape(cookie)} <button>OK</button></div>
<header class="site-header"><nav class="main-menu"><ul><li><a href="/">{escape(home)}</a></li>
<li><a href="/news">{escape(news)}</a></li><li><a href="/science">{escape(sci)}</a></li>
<li><a href="/about">{escape(about)}</a></li></ul></nav></header>
<div class="page-wrap"><main><article class="post">
<h1 class="entry-title">{escape(title)}</h1>
<div class="entry-meta"><span class="byline">Example Desk</span> <time>2024-0{1 + i % 9}-1{i % 10}</time></div>
<div class="entry-content">
{body}
</div>
<div class="share-buttons"><a href="#">{escape(share)}</a></div>
</article>
<section id="comments" class="comments-area"><h3>{escape(leave)}</h3>
<ol class="comment-list"><li class="comment"><p>{escape(comment)}</p></li></ol></section></main>
<aside class="sidebar"><h3>{escape(most)}</h3><ul>{related}</ul></aside></div>
<footer class="site-footer"><p>© 2024 Example. {escape(legal)}</p></footer></body></html>"""
    return url, lang, html, paras[0]


def _record(url: str, payload: bytes, content_type: str, date: str) -> bytes:
    rid = uuid.uuid5(uuid.NAMESPACE_URL, url)
    http = (f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(payload)}\r\n\r\n"
            ).encode() + payload
    digest = hashlib.sha1(http).hexdigest()
    head = (f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Record-ID: <urn:uuid:{rid}>\r\n"
            f"WARC-Date: {date}\r\nWARC-Target-URI: {url}\r\n"
            f"Content-Type: application/http; msgtype=response\r\nWARC-Block-Digest: sha1:{digest}\r\n"
            f"Content-Length: {len(http)}\r\n\r\n").encode()
    return head + http + b"\r\n\r\n"


def make_sample_warc(path: str, n_pages: int = 10, date: str = "2024-01-01T00:00:00Z") -> list[dict]:
    """Write ``n_pages`` sample pages as a gzip WARC (one gzip member per record) at ``path``.

    Returns one dict per page (url, language, charset, snippet of its main text) so callers can
    check what extraction should find. Same arguments give byte-identical files.
    """
    info = []
    members = []
    warcinfo = b"software: gristmill sample builder\r\nformat: WARC File Format 1.0\r\n"
    info_id = uuid.uuid5(uuid.NAMESPACE_URL, f"gristmill-sample-{n_pages}")
    members.append(gzip.compress(
        (f"WARC/1.0\r\nWARC-Type: warcinfo\r\nWARC-Record-ID: <urn:uuid:{info_id}>\r\n"
         f"WARC-Date: {date}\r\nContent-Type: application/warc-fields\r\nContent-Length: {len(warcinfo)}\r\n\r\n"
         ).encode() + warcinfo + b"\r\n\r\n", mtime=0))
    for i in range(n_pages):
        url, lang, html, snippet = sample_page(i)
        if i % 7 == 3:  # legacy charset declared in the HTTP header only
            charset = _LEGACY[lang]
            payload = html.replace("{charset}", charset).encode(charset)
            ctype = f"text/html; charset={charset}"
        elif i % 7 == 5:  # legacy charset declared in <meta> only
            charset = _LEGACY[lang]
            payload = html.replace("{charset}", charset).encode(charset)
            ctype = "text/html"
        else:
            charset = "utf-8"
            payload = html.replace("{charset}", charset).encode("utf-8")
            ctype = "text/html; charset=utf-8"
        members.append(gzip.compress(_record(url, payload, ctype, date), mtime=0))
        info.append({"url": url, "language": lang, "charset": charset, "snippet": snippet})
    with open(path, "wb") as f:
        for m in members:
            f.write(m)
    return info
