"""Built-in sample corpora the project makes itself (no network, no ../shared), so the
quickstart runs anywhere. Deterministic: the same call writes the same bytes."""
from __future__ import annotations

import gzip
import json
import os
import random

SENTENCES = {
    "en": ["The river runs slowly past the old mill, turning the wheel that grinds the grain.",
           "Farmers bring their harvest to the village every autumn and wait for the flour.",
           "Good bread needs patience, clean water and flour that was milled with care.",
           "The library opens at nine in the morning and closes late on Thursdays.",
           "Scientists measured the temperature of the lake for more than twenty years.",
           "Most of the town's children walk to school along the path by the water.",
           "A new bridge was built last year so that trucks no longer cross the square.",
           "She wrote a short guide explaining how to repair a bicycle chain at home.",
           "The museum keeps tools that were used by the millers two centuries ago.",
           "Heavy rain in the spring raised the river and flooded the lower fields."],
    "de": ["Der Fluss fließt langsam an der alten Mühle vorbei und treibt das Mühlrad an.",
           "Jeden Herbst bringen die Bauern ihre Ernte ins Dorf und warten auf das Mehl.",
           "Gutes Brot braucht Geduld, sauberes Wasser und sorgfältig gemahlenes Mehl.",
           "Die Bibliothek öffnet um neun Uhr morgens und schließt donnerstags spät.",
           "Die Forscher haben die Temperatur des Sees mehr als zwanzig Jahre lang gemessen.",
           "Die meisten Kinder der Stadt gehen auf dem Weg am Wasser zur Schule.",
           "Im letzten Jahr wurde eine neue Brücke gebaut, damit keine Lastwagen mehr über den Platz fahren.",
           "Sie schrieb eine kurze Anleitung, wie man eine Fahrradkette zu Hause repariert.",
           "Das Museum bewahrt Werkzeuge auf, die vor zweihundert Jahren von Müllern benutzt wurden.",
           "Starker Regen im Frühling ließ den Fluss steigen und überflutete die unteren Felder."],
    "fr": ["La rivière coule lentement devant le vieux moulin et fait tourner la roue.",
           "Chaque automne, les paysans apportent leur récolte au village et attendent la farine.",
           "Un bon pain demande de la patience, de l'eau propre et une farine moulue avec soin.",
           "La bibliothèque ouvre à neuf heures du matin et ferme tard le jeudi.",
           "Les chercheurs ont mesuré la température du lac pendant plus de vingt ans.",
           "La plupart des enfants de la ville vont à l'école par le chemin au bord de l'eau.",
           "Un nouveau pont a été construit l'année dernière pour que les camions évitent la place.",
           "Elle a écrit un petit guide qui explique comment réparer une chaîne de vélo chez soi.",
           "Le musée conserve des outils utilisés par les meuniers il y a deux siècles.",
           "De fortes pluies au printemps ont fait monter la rivière et inondé les champs."],
    "es": ["El río pasa despacio junto al viejo molino y hace girar la rueda.",
           "Cada otoño los campesinos llevan su cosecha al pueblo y esperan la harina.",
           "Un buen pan necesita paciencia, agua limpia y harina molida con cuidado.",
           "La biblioteca abre a las nueve de la mañana y cierra tarde los jueves.",
           "Los científicos midieron la temperatura del lago durante más de veinte años.",
           "La mayoría de los niños de la ciudad van a la escuela por el camino junto al agua.",
           "El año pasado se construyó un puente nuevo para que los camiones no crucen la plaza.",
           "Ella escribió una guía breve que explica cómo reparar la cadena de una bicicleta en casa.",
           "El museo guarda herramientas que usaban los molineros hace dos siglos.",
           "Las fuertes lluvias de la primavera hicieron crecer el río e inundaron los campos."],
    "it": ["Il fiume scorre lentamente accanto al vecchio mulino e fa girare la ruota.",
           "Ogni autunno i contadini portano il raccolto in paese e aspettano la farina.",
           "Un buon pane richiede pazienza, acqua pulita e farina macinata con cura.",
           "La biblioteca apre alle nove del mattino e chiude tardi il giovedì.",
           "Gli scienziati hanno misurato la temperatura del lago per più di vent'anni.",
           "La maggior parte dei bambini della città va a scuola lungo il sentiero vicino all'acqua.",
           "L'anno scorso è stato costruito un nuovo ponte perché i camion non attraversino la piazza.",
           "Ha scritto una breve guida che spiega come riparare la catena della bicicletta a casa.",
           "Il museo conserva gli attrezzi usati dai mugnai due secoli fa.",
           "Le forti piogge di primavera hanno alzato il fiume e allagato i campi più bassi."],
    "ru": ["Река медленно течёт мимо старой мельницы и вращает её колесо.",
           "Каждую осень крестьяне привозят урожай в деревню и ждут муку.",
           "Хорошему хлебу нужны терпение, чистая вода и аккуратно смолотая мука.",
           "Библиотека открывается в девять утра и по четвергам закрывается поздно.",
           "Учёные измеряли температуру озера больше двадцати лет.",
           "Большинство детей города ходят в школу по тропинке вдоль воды.",
           "В прошлом году построили новый мост, чтобы грузовики больше не ездили через площадь.",
           "Она написала короткое руководство о том, как починить велосипедную цепь дома.",
           "В музее хранятся инструменты, которыми мельники пользовались два века назад.",
           "Сильные весенние дожди подняли уровень реки и затопили нижние поля."],
    "zh": ["河水缓缓流过古老的磨坊，推动着水车不停地转动。",
           "每年秋天，农民们把收获的粮食运到村里，等待磨好的面粉。",
           "好面包需要耐心、干净的水和精心磨制的面粉。",
           "图书馆每天早上九点开门，星期四很晚才关门。",
           "科学家们对这个湖的水温进行了二十多年的测量。",
           "城里的大多数孩子沿着河边的小路步行去上学。",
           "去年新建了一座桥，卡车不再从广场上穿过。",
           "她写了一份简短的指南，介绍如何在家修理自行车链条。",
           "博物馆里保存着两百年前磨坊工人使用过的工具。",
           "春天的大雨使河水上涨，淹没了低处的田地。"],
    "ar": ["يجري النهر ببطء بجوار الطاحونة القديمة ويدير عجلتها.",
           "في كل خريف يحمل المزارعون محصولهم إلى القرية وينتظرون الدقيق.",
           "يحتاج الخبز الجيد إلى الصبر والماء النظيف والدقيق المطحون بعناية.",
           "تفتح المكتبة في الساعة التاسعة صباحا وتغلق متأخرة يوم الخميس.",
           "قاس العلماء درجة حرارة البحيرة لأكثر من عشرين عاما.",
           "يذهب معظم أطفال المدينة إلى المدرسة سيرا على الطريق بجانب الماء.",
           "بني جسر جديد في العام الماضي حتى لا تعبر الشاحنات الساحة.",
           "كتبت دليلا قصيرا يشرح كيفية إصلاح سلسلة الدراجة في المنزل.",
           "يحتفظ المتحف بأدوات استخدمها الطحانون قبل قرنين.",
           "رفعت الأمطار الغزيرة في الربيع منسوب النهر وأغرقت الحقول المنخفضة."],
}
# share of documents per language: uneven on purpose, like a real crawl
WEIGHTS = {"en": 0.40, "de": 0.14, "fr": 0.12, "es": 0.10, "it": 0.07, "ru": 0.07, "zh": 0.05, "ar": 0.05}
JUNK = ["Click here to subscribe!", "Home | About | Contact", "404 Not Found", "Loading...",
        "© 2024 All rights reserved", "Accept cookies"]


def multilingual_docs(n_docs: int = 2000, seed: int = 0) -> list[dict]:
    """Documents of 3-10 distinct sentences in one of 8 languages, with planted exact duplicates (~5%, some
    differing only in case/whitespace) and boilerplate-only junk (~5%) for filters to catch."""
    rng = random.Random(seed)
    langs, weights = zip(*WEIGHTS.items())
    docs: list[dict] = []
    for i in range(n_docs):
        roll = rng.random()
        if roll < 0.05 and docs:
            src = docs[rng.randrange(len(docs))]
            text = src["text"] if rng.random() < 0.5 else "  " + src["text"].upper().replace(" ", "   ") + "\n"
            lang = src["lang"]
        elif roll < 0.10:
            text, lang = " ".join(rng.sample(JUNK, rng.randint(1, 2))), "und"
        else:
            lang = rng.choices(langs, weights)[0]
            chosen = rng.sample(SENTENCES[lang], rng.randint(3, len(SENTENCES[lang])))  # no repeats
            sep = "" if lang == "zh" else " "
            paras = []
            while chosen:
                m = min(len(chosen), rng.randint(1, 4))
                paras.append(sep.join(chosen[:m]))
                chosen = chosen[m:]
            text = "\n\n".join(paras)
        docs.append({"id": f"sample-{i:06d}", "text": text, "lang": lang,
                     "url": f"https://example.{lang}/page/{i}", "source": "sample"})
    return docs


CHROME = {  # navigation, cookie banner and footer: boilerplate extraction should remove
    "nav": ["Home", "News", "Science", "About", "Contact"],
    "cookie": "We use cookies to improve your experience. Accept all",
    "footer": "© 2024 Example Media. All rights reserved. Privacy policy | Terms of use",
}


def html_page(doc: dict) -> str:
    from html import escape

    paras = "\n".join(f"<p>{escape(p)}</p>" for p in doc["text"].split("\n\n"))
    nav = "".join(f'<li><a href="/{n.lower()}">{n}</a></li>' for n in CHROME["nav"])
    return (f'<!DOCTYPE html><html lang="{doc["lang"]}"><head><meta charset="utf-8">'
            f'<title>{escape(doc["text"][:40])}</title></head><body>'
            f'<div class="cookie-banner">{CHROME["cookie"]}</div>'
            f'<header><nav class="menu"><ul>{nav}</ul></nav></header>'
            f'<main><article class="post"><div class="entry-content">\n{paras}\n</div></article></main>'
            f'<footer class="site-footer"><p>{CHROME["footer"]}</p></footer></body></html>')


def write_docs(docs: list[dict], path: str, fmt: str) -> None:
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(docs), path)
    elif fmt == "jsonl":
        with gzip.GzipFile(path, "wb", mtime=0) as f:
            for d in docs:
                f.write((json.dumps(d, ensure_ascii=False) + "\n").encode())
    elif fmt == "warc":  # one gzip member per record, as Common Crawl writes them
        from pipeline.samples_html import _record

        with open(path, "wb") as f:
            for d in docs:
                payload = html_page(d).encode("utf-8")
                f.write(gzip.compress(_record(d["url"], payload, "text/html; charset=utf-8",
                                              "2024-01-01T00:00:00Z"), mtime=0))
    else:
        raise ValueError(f"no sample writer for format {fmt!r}")


def build_sample(kind: str, target_dir: str, fmt: str = "jsonl", n_docs: int = 2000, files: int = 2) -> list[str]:
    """Write the sample corpus as `files` files of `fmt` (jsonl.gz, parquet or a gzip WARC of
    HTML pages wrapping each document in site boilerplate)."""
    if kind != "quickstart-sample":
        raise ValueError(f"unknown sample corpus {kind!r}")
    os.makedirs(target_dir, exist_ok=True)
    docs = multilingual_docs(n_docs)
    ext = {"jsonl": "jsonl.gz", "parquet": "parquet", "warc": "warc.gz"}[fmt]
    paths = []
    per = (len(docs) + files - 1) // files
    for k in range(files):
        chunk = docs[k * per:(k + 1) * per]
        if fmt != "warc":  # the language is for checking results, not an input the pipeline trusts
            chunk = [{**{x: v for x, v in d.items() if x != "lang"}, "meta_lang": d["lang"]} for d in chunk]
        p = os.path.join(target_dir, f"part-{k:05d}.{ext}")
        write_docs(chunk, p, fmt)
        paths.append(p)
    return paths
