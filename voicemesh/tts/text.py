"""Text handling for synthesis: a small English normaliser and a sentence splitter.

Pure Python, no model library: the gateway and unit tests import it freely.

espeak-ng already reads plain numbers, ordinals, times and most punctuation well;
what it gets wrong (or splits a sentence on) is fixed here before phonemisation:
title abbreviations ("Dr." would end a sentence), currency ("$42.50" would be
"dollar forty-two point five zero"), percent signs and a few Latin abbreviations.
"""

from __future__ import annotations

import re
import unicodedata

_ABBREVIATIONS = {
    "dr": "Doctor",
    "mr": "Mister",
    "mrs": "Missus",
    "ms": "Miz",
    "prof": "Professor",
    "st": "Saint",
    "jr": "Junior",
    "sr": "Senior",
    "vs": "versus",
    "etc": "et cetera",
    "approx": "approximately",
    "no": "number",
}
# "No." is only "number" before a digit ("No. 5"); elsewhere it is the word "no".
_ABBREV_RE = re.compile(
    r"\b(Dr|Mr|Mrs|Ms|Prof|St|Jr|Sr|vs|etc|approx)\.(?=\s|$|[,;:])|\b(No)\.(?=\s*\d)",
    re.IGNORECASE,
)
_LATIN = (
    (re.compile(r"\be\.g\.", re.I), "for example"),
    (re.compile(r"\bi\.e\.", re.I), "that is"),
)
_CURRENCY = {
    "$": ("dollar", "dollars", "cent", "cents"),
    "€": ("euro", "euros", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
}
_MONEY_RE = re.compile(r"([$€£])\s?(\d[\d,]*)(?:\.(\d{1,2}))?\b")
_PERCENT_RE = re.compile(r"(\d)\s?%")
_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}\b)")
_SPACE_RE = re.compile(r"\s+")
_UNREADABLE = frozenset({"Cc", "Cs", "Co", "Cn"})
"""Unicode categories of characters no voice reads (control, surrogate, private, unassigned)."""
_WORD_RE = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
SHOUTED_SHARE = 0.7
"""Text whose letters are at least this share capitals is read as ordinary text..."""
SHOUTED_MIN_WORDS = 3
"""...when it has this many words (a lone "NASA" or "OK" keeps its spelling)."""

# A sentence ends at . ! ? (or their CJK forms) followed by space or the end, or at a
# CJK terminator directly; a clause at , ; : (and CJK forms).
_CJK_SENTENCE_END = "\u3002\uff01\uff1f"  # ideographic full stop, fullwidth ! and ?
_CJK_CLAUSE_END = "\uff0c\uff1b\uff1a\u3001"  # fullwidth , ; : and the ideographic comma
SENTENCE_END_CHARS = ".!?\u2026" + _CJK_SENTENCE_END
"""Characters that end a sentence (a pause follows them in joined audio)."""
_SENTENCE_END_RE = re.compile(
    rf"(?<=[.!?\u2026])\s+|(?<=[.!?\u2026][\"')\]\u201d])\s+|(?<=[{_CJK_SENTENCE_END}])"
)
_CLAUSE_END_RE = re.compile(rf"(?<=[,;:])\s+|(?<=[{_CJK_CLAUSE_END}])")

MAX_SENTENCE_CHARS = 400
"""A "sentence" longer than this is cut at clauses (then words) so one chunk stays short."""
FIRST_CLAUSE_MIN_CHARS = 24
"""Streaming sends the first clause alone only when it has at least this many characters."""


def _money(match: re.Match[str]) -> str:
    one, many, cent, cents = _CURRENCY[match.group(1)]
    whole = match.group(2).replace(",", "")
    words = f"{whole} {one if whole == '1' else many}"
    frac = match.group(3)
    if frac:
        value = int(frac.ljust(2, "0"))
        if value:
            words += f" and {value} {cent if value == 1 else cents}"
    return words


def _abbreviation(match: re.Match[str]) -> str:
    word = (match.group(1) or match.group(2)).lower()
    return _ABBREVIATIONS[word]


def _unshout(text: str) -> str:
    """All-caps text in ordinary case: espeak spells short capitalised words ("IT" = "I T")."""
    letters = [c for c in text if c.isalpha() and c.isascii()]
    words = _WORD_RE.findall(text)
    if len(words) < SHOUTED_MIN_WORDS or not letters:
        return text
    upper = sum(c.isupper() for c in letters)
    if upper / len(letters) < SHOUTED_SHARE:
        return text
    return _WORD_RE.sub(lambda m: "I" if m.group(0) == "I" else m.group(0).lower(), text)


def readable(text: str) -> str:
    """``text`` without what no voice can read: control characters (a NUL cuts espeak's
    C string short), lone surrogates, private-use and unassigned code points. Line
    breaks and tabs become spaces."""
    text = text.replace("\t", " ").replace("\n", " ").replace("\r", " ")
    return "".join(c for c in text if unicodedata.category(c) not in _UNREADABLE)


def normalize_text(text: str, language: str = "en") -> str:
    """Text made easier to read aloud: shouting, abbreviations, currency, percent."""
    text = _SPACE_RE.sub(" ", readable(text).replace("\u00a0", " ")).strip()
    if not language.lower().startswith("en"):
        return text
    text = _unshout(text)
    for pattern, words in _LATIN:
        text = pattern.sub(words, text)
    text = _ABBREV_RE.sub(_abbreviation, text)
    text = _THOUSANDS_RE.sub("", text)
    text = _MONEY_RE.sub(_money, text)
    return _PERCENT_RE.sub(r"\1 percent", text)


def _cut_long(piece: str, limit: int) -> list[str]:
    """Cut a piece longer than ``limit`` at clause boundaries, then at spaces."""
    if len(piece) <= limit:
        return [piece]
    out: list[str] = []
    current = ""
    for clause in _CLAUSE_END_RE.split(piece):
        if current and len(current) + 1 + len(clause) > limit:
            out.append(current)
            current = ""
        current = f"{current} {clause}".strip() if current else clause
    if current:
        out.append(current)
    final: list[str] = []
    for part in out:
        rest = part
        while len(rest) > limit:
            cut = rest.rfind(" ", 0, limit)
            cut = cut if cut > 0 else limit
            final.append(rest[:cut].strip())
            rest = rest[cut:].strip()
        if rest:
            final.append(rest)
    return final


def split_sentences(text: str, max_chars: int = MAX_SENTENCE_CHARS) -> list[str]:
    """Split text into sentences (none longer than ``max_chars``), dropping empty ones."""
    pieces = [p.strip() for p in _SENTENCE_END_RE.split(text)]
    out: list[str] = []
    for piece in pieces:
        if piece:
            out.extend(_cut_long(piece, max_chars))
    return out


def split_for_streaming(text: str, max_chars: int = MAX_SENTENCE_CHARS) -> list[str]:
    """Sentences, with a short first piece on its own so the first audio comes fast.

    The first piece is the first sentence's first clause when that is long enough
    to sound whole, and the words before an early phrase break when that sentence
    or clause has many words (see :func:`phrase_cut`).
    """
    sentences = split_sentences(text, max_chars)
    if not sentences:
        return sentences
    first, rest = sentences[0], sentences[1:]
    clauses = [c for c in _CLAUSE_END_RE.split(first) if c.strip()]
    pieces = [first]
    if len(clauses) > 1 and len(clauses[0]) >= FIRST_CLAUSE_MIN_CHARS:
        pieces = [clauses[0].strip(), first[len(clauses[0]) :].strip()]
    cut = phrase_cut(pieces[0])
    if cut is not None:
        head = pieces[0][:cut].strip()
        # Spoken as a clause, not as a sentence: a comma gives it the voice's
        # mid-sentence intonation and short pause, where a bare phrase would end
        # falling and drawn out, as if the sentence were over.
        head = head if head.endswith((",", ";", ":")) else f"{head},"
        pieces[:1] = [head, pieces[0][cut:].strip()]
    return [*pieces, *rest]


PHRASE_CUT_MIN_WORDS = 8
"""A first sentence is cut at a phrase break only when it has at least this many words..."""
PHRASE_HEAD_WORDS = (3, 6)
"""...after this many words (fewest, most), so the first piece is short but not a stub..."""
PHRASE_TAIL_MIN_WORDS = 4
"""...and the rest keeps at least this many words."""
_PHRASE_STARTERS = frozenset(
    {
        *("to", "at", "in", "on", "for", "with", "from", "into", "about", "by"),
        *("and", "but", "or", "so", "because", "that", "which", "who"),
        *("when", "while", "if", "before", "after", "until"),
    }
)
"""Words a new phrase starts with: a cut before one falls where a speaker may breathe."""


def phrase_cut(sentence: str) -> int | None:
    """Where to cut ``sentence`` (a character offset) at an early phrase break, or None.

    The cut falls after a comma, or before an English preposition or conjunction,
    between the 3rd and 6th word, and only in a sentence of 8 words or more (text
    without spaces between words, such as Chinese, is never cut this way).
    """
    words = list(re.finditer(r"\S+", sentence))
    if len(words) < PHRASE_CUT_MIN_WORDS:
        return None
    fewest, most = PHRASE_HEAD_WORDS
    for index in range(fewest, min(most, len(words) - PHRASE_TAIL_MIN_WORDS) + 1):
        before, word = words[index - 1].group(), words[index].group()
        starter = word.lower().strip("\"'(") in _PHRASE_STARTERS
        if before.endswith((",", ";", ":")) or starter:
            return words[index].start()
    return None
