"""Text side of WRAP rephrasing: prompt templates, chunking, preamble stripping and the guards
that quarantine bad generations. Pure functions over strings (no model), so every rule is
tested on constructed outputs."""
from __future__ import annotations

import re
from typing import Callable

# Our own wording of the four styles of "Rephrasing the Web" (Maini et al. 2024, sec. 3):
# easy (toddler vocabulary), medium (diverse high-quality paraphrase as on Wikipedia), hard
# (terse, abstruse, for an erudite scholar), qa (a conversation of Question:/Answer: turns).
TEMPLATES: dict[str, str] = {
    "easy": ("Rewrite the text below so that a small child could understand it. Use only very "
             "simple, common words and short sentences. Keep every fact. Write only the rewritten "
             "text.\n\nText:\n{text}"),
    "medium": ("Paraphrase the text below in varied, high-quality English, in the style of a "
               "Wikipedia article. Keep every fact and do not add new ones. Write only the "
               "paraphrase.\n\nText:\n{text}"),
    "hard": ("Rewrite the text below in terse, abstruse and erudite language, as a scholar would "
             "write for other scholars. Keep every fact. Write only the rewritten text.\n\n"
             "Text:\n{text}"),
    "qa": ("Turn the information in the text below into a conversation of questions and answers. "
           "Write each turn on its own line, starting with \"Question:\" or \"Answer:\". Use only "
           "facts from the text.\n\nText:\n{text}"),
}

WORD = re.compile(r"\w+", re.UNICODE)
# a rough BPE-size token count for backends whose tokenizer is not local (openai): words and
# punctuation marks; English BPE vocabularies give about as many tokens.
ROUGH_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)
PARAGRAPH = re.compile(r"\n\s*\n")
SENTENCE = re.compile(r"(?<=[.!?…])[\"')\]]*\s+(?=\S)")


def rough_token_count(text: str) -> int:
    return len(ROUGH_TOKEN.findall(text))


# -- chunking ------------------------------------------------------------------------------
def _split_long(unit: str, max_tokens: int, count: Callable[[str], int]) -> list[str]:
    """A unit over the limit: sentences, then (one sentence still too long) runs of words."""
    if count(unit) <= max_tokens:
        return [unit]
    sentences = [s for s in SENTENCE.split(unit) if s.strip()]
    if len(sentences) > 1:
        return _pack(sentences, " ", max_tokens, count)
    out, cur, n = [], [], 0
    for w in unit.split():
        k = count(w)
        if cur and n + k > max_tokens:
            out.append(" ".join(cur))
            cur, n = [], 0
        cur.append(w)
        n += k
    if cur:
        out.append(" ".join(cur))
    return out


def _pack(units: list[str], sep: str, max_tokens: int, count: Callable[[str], int]) -> list[str]:
    """Greedy packing of consecutive units up to the limit. Sizes are summed per piece (one
    tokenizer call per piece, not per candidate chunk), with one token per separator as margin."""
    pieces: list[str] = []
    for u in units:
        pieces.extend(_split_long(u.strip(), max_tokens, count))
    chunks, cur, n = [], [], 0
    for p in pieces:
        k = count(p)
        if cur and n + 1 + k > max_tokens:
            chunks.append(sep.join(cur))
            cur, n = [], 0
        n += k + (1 if cur else 0)
        cur.append(p)
    if cur:
        chunks.append(sep.join(cur))
    return chunks


def chunk_text(text: str, max_tokens: int, count: Callable[[str], int] = rough_token_count) -> list[str]:
    """Split a document into chunks of at most `max_tokens` (WRAP rephrases at most ~300 tokens
    at a time: longer ones lose information): paragraphs first, then sentences, then words;
    consecutive small units are packed together up to the limit."""
    text = text.strip()
    if not text:
        return []
    paragraphs = [p for p in PARAGRAPH.split(text) if p.strip()]
    return _pack(paragraphs, "\n\n", max_tokens, count)


# -- cleaning -------------------------------------------------------------------------------
# A first line that talks about the answer instead of being it: "Here is a paraphrase:",
# "Sure! Here's the text rewritten for a child:", "Adequate rephrasing:", "In this sentence from
# Wikipedia, I've provided ...". Stripped when it is short and names the task.
_TASK_WORDS = (r"paraphras|rephras|rewrit|re-writ|rewording|reworded|simplif|version|summary|conversation|"
               r"questions? and answers?|q\s*&\s*a|translation|text|passage|wikipedia|scholar|child")
PREAMBLE_LINE = re.compile(
    rf"^\s*(?:\**\s*)(?:(?:sure|certainly|okay|ok|of course|absolutely|great)\b[!,.]?\s*)?"
    rf"(?:(?:here(?:'s| is| are)|below is|the following is|in this|i(?:'ve| have)|this is)\b[^\n]{{0,160}}?"
    rf"(?:{_TASK_WORDS})[^\n]{{0,160}}|[^\n]{{0,60}}(?:{_TASK_WORDS})[^\n]{{0,30}}:)\s*\**\s*(?:\n|$)",
    re.IGNORECASE)
_SURE = re.compile(r"^\s*(?:sure|certainly|okay|of course|absolutely)[!,.]\s*(?:\n|$)", re.IGNORECASE)


def strip_preamble(text: str) -> str:
    """Remove meta-text lines before the rephrase itself (at most two: "Sure!" then "Here is...:")."""
    out = text.strip()
    for _ in range(2):
        m = _SURE.match(out) or PREAMBLE_LINE.match(out)
        if not m or m.end() >= len(out):
            break  # nothing after it: leave it, the empty/short guards judge the whole output
        out = out[m.end():].lstrip()
    return out


# -- guards ---------------------------------------------------------------------------------
REFUSAL = re.compile(
    r"^\W*(?:i'?m sorry|i am sorry|sorry,|i apologi[sz]e|i can(?:no|')t|i am (?:unable|not able)|"
    r"i'm (?:unable|not able)|as an ai|as a language model|i won'?t be able)", re.IGNORECASE)

STOPWORDS = frozenset("""a about above after again against all also am an and any are as at be because been
before being below between both but by can could did do does doing down during each few for from further
had has have having he her here hers herself him himself his how i if in into is it its itself just
like may me might more most must my myself no nor not now of off on once one only or other our ours
ourselves out over own same she should so some such than that the their theirs them themselves then
there these they this those through to too under until up very was we were what when where which while
who whom why will with would you your yours yourself yourselves said says also many much well even
still new two three first last year years""".split())


def content_words(text: str) -> list[str]:
    """Lower-cased words of 4+ letters that are not stopwords, cut to a 5-letter stem so that
    'elections' and 'elected' meet."""
    return [w[:5] for w in (m.lower() for m in WORD.findall(text))
            if len(w) >= 4 and not w.isdigit() and w not in STOPWORDS]


def topic_overlap(source: str, output: str, top: int = 30) -> float:
    """Share of the source's most frequent content words (up to `top`) found in the output."""
    src = content_words(source)
    if not src:
        return 1.0
    counts: dict[str, int] = {}
    for w in src:
        counts[w] = counts.get(w, 0) + 1
    key = sorted(counts, key=lambda w: (-counts[w], w))[:top]
    out = set(content_words(output))
    return sum(1 for w in key if w in out) / len(key)


def repetition(text: str, n: int = 4) -> float:
    """Share of word n-grams that repeat an earlier one (0: none; a loop of one phrase: near 1)."""
    words = [w.lower() for w in WORD.findall(text)]
    if len(words) < n + 1:
        return 0.0
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams)


def _echo(output: str, prompt_instruction: str, source: str) -> bool:
    """The instruction written back, or the source copied back nearly word for word."""
    low = " ".join(output.lower().split())
    for line in prompt_instruction.splitlines():
        line = " ".join(line.lower().split())
        if len(line) >= 30 and line in low:
            return True
    src = [w.lower() for w in WORD.findall(source)]
    out = [w.lower() for w in WORD.findall(output)]
    if len(src) >= 16 and len(out) >= 16:
        grams = {tuple(src[i:i + 8]) for i in range(len(src) - 7)}
        out_grams = [tuple(out[i:i + 8]) for i in range(len(out) - 7)]
        copied = sum(g in grams for g in out_grams) / len(out_grams)
        if copied >= 0.9:
            return True
    return False


def check_output(output: str, source: str, instruction: str, *, min_length_ratio: float,
                 max_repetition: float, min_topic_overlap: float) -> str | None:
    """The first rule an already preamble-stripped output fails, or None when it is kept.
    Rules in order: empty, refusal, echo, repetition, too_short, off_topic."""
    if not output.strip() or not WORD.search(output):
        return "empty"
    if REFUSAL.match(output):
        return "refusal"
    if _echo(output, instruction, source):
        return "echo"
    if repetition(output) > max_repetition:
        return "repetition"
    n_src, n_out = len(WORD.findall(source)), len(WORD.findall(output))
    if n_out < min_length_ratio * n_src:
        return "too_short"
    if topic_overlap(source, output) < min_topic_overlap:
        return "off_topic"
    return None
