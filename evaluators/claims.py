"""Split text into claims and sentences; tokenise for lexical support checks.

A claim is a sentence or an independent clause. A bare-phrase answer ("Delhi") is not a claim on
its own: it only asserts something together with the question, so the claim builder prefixes the
question (the question's words then count as given, not as new content to verify).
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from dataclasses import dataclass

# Sentence ends: punctuation followed by space+capital/digit/quote, or glued ("century.First").
_SENT_SPLIT = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(\[]?[A-Z0-9])|(?<=[a-z0-9][.!?])(?=[A-Z][a-z])|\n+")
_ABBREV = re.compile(r"\b(?:Mr|Mrs|Ms|Dr|Prof|Sr|Jr|St|vs|etc|Inc|Ltd|Co|No|Gen|Col|Lt|Mt|Ft|Rev|Gov|Sen|Rep|Capt|Sgt|Maj|Adm|Hon|U\.S|e\.g|i\.e|approx)\.$", re.I)
# Clause boundaries inside a sentence: semicolons and contrastive conjunctions after a comma.
_CLAUSE_SPLIT = re.compile(
    r";\s+|,\s+(?=(?:and|but|while|whereas|although|though|however|yet)\b)"
    r"|\s+(?:and|but)\s+(?=(?:it|he|she|they|we|i|this|that|there|its|his|her|their)\s)",
    re.I,
)
_LEADING_CONJ = re.compile(r"^(?:and|but)\s+", re.I)
# Letters of any script (a CJK run without spaces stays one token); numbers keep their inner
# separators ("1,000", "3.5", "10:30") and ordinal suffixes.
_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)?|\d+(?:[.,:]\d+)*(?:st|nd|rd|th|s)?\b")
_SPEAKER = re.compile(r"^\s*[A-Z][\w ]{0,20}:\s+")  # "User: ..." dialogue turn prefixes

STOPWORDS = frozenset(
    """a an the and or but if then else of to in on at by for with from as into onto over under about
    is are was were be been being am do does did done have has had having will would shall should can could
    may might must it its it's this that these those there here which who whom whose what when where why how
    he she they we you i me him her them us my your his their our also than so such very just only
    not no nor any all some each both either neither more most other another same own too s t
    up down out off again further once because while during before after above below between through
    until against among per via yes ok okay sure well actually really""".split()
)
# Framing, not facts: reporting verbs ("..., officials said") and discourse adverbs. A summary or
# an answer attributes and hedges in its own words; the source need not contain them.
FRAMING = frozenset(
    """say said saying tell told telling report reported reporting according reportedly allegedly
    apparently perhaps now still even already recently currently""".split()
)
STOPWORDS = STOPWORDS | FRAMING
NEGATIONS = frozenset("not no never none nobody nothing neither nor without cannot can't won't isn't aren't wasn't weren't doesn't don't didn't hasn't haven't hadn't n't".split())
# Cues that an answer corrects or contrasts with the source rather than restating it.
CONTRAST_CUES = frozenset("actually instead rather contrary although though however whereas but incorrect false wrong".split())


@dataclass
class Claim:
    text: str  # the claim as written in the answer
    check_text: str  # what is compared to the context (may include the question)
    given_text: str  # text whose words count as given (the conversation or question), not as claims


def split_sentences(text: str) -> list[str]:
    parts: list[str] = []
    for piece in _SENT_SPLIT.split(text or ""):
        piece = piece.strip()
        if not piece:
            continue
        if parts and _ABBREV.search(parts[-1]):
            parts[-1] = f"{parts[-1]} {piece}"
        else:
            parts.append(piece)
    return parts


def split_clauses(sentence: str) -> list[str]:
    clauses = [_LEADING_CONJ.sub("", c.strip(" ,")) for c in _CLAUSE_SPLIT.split(sentence)]
    # Keep a fragment too short to stand alone attached to its neighbour.
    out: list[str] = []
    for c in clauses:
        if not c:
            continue
        if out and len(content_words(c)) < 2:
            out[-1] = f"{out[-1]}, {c}"
        else:
            out.append(c)
    return out


def words(text: str) -> list[str]:
    return _WORD.findall(text or "")


@lru_cache(maxsize=200_000)
def norm(token: str) -> str:
    """Lower case, possessive and plural stripped: a cheap stemmer that keeps names intact."""
    t = _strip_accents(token.lower().replace("’", "'"))
    if t.endswith("'s"):
        t = t[:-2]
    if len(t) > 4 and t.endswith("ies"):
        t = t[:-3] + "y"
    elif len(t) > 3 and t.endswith("s") and not t.endswith("ss") and not t.isdigit():
        t = t[:-1]
    return t.replace(",", "")


def _strip_accents(t: str) -> str:
    if t.isascii():
        return t
    return "".join(c for c in unicodedata.normalize("NFKD", t) if not unicodedata.combining(c))


# Tokens are compared after norm(), which strips a final "s": "perhaps" -> "perhap", "this" ->
# "thi", "does" -> "doe". The word lists hold both spellings so such words stay function words.
FRAMING = FRAMING | frozenset(norm(w) for w in FRAMING)
STOPWORDS = STOPWORDS | frozenset(norm(w) for w in STOPWORDS)


def content_words(text: str) -> list[str]:
    return [n for n in (norm(w) for w in words(text)) if n not in STOPWORDS and len(n) > 1 or n.isdigit()]


def is_bare_phrase(answer: str) -> bool:
    """An answer without a clause of its own: short and no finite-verb-looking word."""
    toks = [w.lower() for w in words(answer)]
    if len(toks) > 8:
        return False
    verbs = {"is", "are", "was", "were", "be", "been", "has", "have", "had", "does", "did", "do", "will", "would", "can", "could"}
    return not any(t in verbs or (t.endswith("ed") and len(t) > 4) for t in toks)


_PERSONAL = re.compile(
    r"^(?:i|i'm|i’m|im|i've|i'd|i'll|we|we're|you|you're|do you|did you|have you|are you|would you|"
    r"can you|let's|me too|thanks|thank you|sounds|that's (?:great|cool|nice|interesting|awesome)|oh|wow|haha)\b",
    re.I,
)


def has_key_term(text: str) -> bool:
    """A name or a number: something a source can confirm or contradict."""
    for pos, w in enumerate(words(text)):
        if w[:1].isdigit() or (w[:1].isupper() and (pos > 0 or w.lower() not in STOPWORDS) and w.lower() != "i"):
            return True
    return False


def is_checkable(piece: str) -> bool:
    """Questions and first-person remarks ("I love that film!") assert nothing a source could
    support, unless they name something (a name or a number), which is then checked."""
    if not content_words(piece):
        return False
    if has_key_term(piece):
        return True
    return not (piece.rstrip().endswith("?") or _PERSONAL.match(piece.strip(" \"'")))


def build_claims(answer: str, question: str | None = None, conversation: str | None = None) -> list[Claim]:
    """Claims of an answer. Fillers ("Sure!"), questions and personal remarks without names or
    numbers are not claims. Words of the conversation so far (`conversation`, all turns) count as
    given: repeating what the user said is not a hallucination."""
    question = (question or "").strip()
    conversation = (conversation or "").strip()
    sentences = [_SPEAKER.sub("", s) for s in split_sentences(answer)]
    pieces = [c for s in sentences for c in split_clauses(s)]
    kept = [p for p in pieces if is_checkable(p)]
    if not kept and question and words(answer) and not any(content_words(p) for p in pieces):
        # "yes", "no", "F.E.A.R.": no content word of its own, but an answer to the question.
        kept = [answer.strip()]
    pieces = kept
    if not pieces:
        return []
    single = len(pieces) == 1
    claims = []
    for p in pieces:
        use_q = bool(question) and (single or is_bare_phrase(p))
        check = f"{question} {p}" if use_q else p
        claims.append(Claim(text=p, check_text=check, given_text=conversation or (question if use_q else "")))
    return claims
