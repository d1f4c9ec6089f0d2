"""Reply text -> a ranking of the presented candidates, with a parse status.

The prompts ask for candidate numbers (letters for ``choice``, a JSON array for
``topk-json``).  Replies are read in that order of preference: the asked format, then
numbered lists and separated segments, each segment read as a whole candidate title
(exact or case-folded), else as an index, else as a title (label stripped, then fuzzy).
A number is an index only where it stands as one (``12``, ``12.``, ``12)``, ``[12]``,
``#12``, ``12 - ...``): ``12 Angry Men``, ``2001: A Space Odyssey`` and ``8 1/2`` are
titles, and a piece that is exactly a candidate's title is that candidate even when it
is also a candidate number.  Duplicates are dropped, items that are not candidates
(out-of-range numbers, titles from the history, invented titles) are ignored and
counted.  A reply that copies the prompt back (its instruction and history lines, or the candidate
lines in their presented order) is an echo, not a ranking; the candidate lines in a new order are a
ranking.  A ``choice`` reply that is a candidate's title ("Few Good Men, A", "I would recommend 2001: A
Space Odyssey") names that candidate: a capital inside a title is not an option letter.

Reasoning models write a ``<think>...</think>`` block before the answer; only the text
after the last closing tag is read.  A reply that is nothing but reasoning (the block
never closed, or nothing after it) is failed: its mentions of candidates are deliberation,
not a ranking.

Status: ``valid`` (the full answer the protocol asks for: every candidate for ``rank``,
one for ``choice``, k for ``topk-json``), ``partial`` (some candidates recognised) or
``failed`` (none).
"""

from __future__ import annotations

import difflib
import json
import re
import unicodedata
from dataclasses import dataclass, field

from tcf.zeroshot.prompts import LETTERS

FUZZY_CUTOFF = 0.85
# a number stands as an index: in brackets or after "#", or bare and followed by the end, punctuation that is
# not part of a longer number (12. 12) 12: 12, but not 1.5 or 20,000), a dash separator, or a bracket
INDEX = re.compile(r"^(?:\[(\d{1,4})\]|\((\d{1,4})\)|#(\d{1,4})(?!\d)"
                   r"|\(?(\d{1,4})(?=$|[.):,;\]](?!\d)|\s*[-–—]+(?:\s|$)|\s+[(\[]))")
THINK_OPEN = re.compile(r"^\s*<(think|thinking|reasoning)>", re.IGNORECASE)
THINK_CLOSE = re.compile(r"</(?:think|thinking|reasoning)>", re.IGNORECASE)
MASK = "\u2588"  # stands for a candidate title in the text a choice reply's letters are read from


@dataclass
class Parsed:
    ranking: list[int]  # 0-based positions into the presented candidates, best first, no duplicates
    status: str  # valid | partial | failed
    method: str  # json | letters | indices | titles | mixed | echo | reasoning | empty | none
    n_invalid: int = 0  # entries that named no candidate (hallucinated or out of range)
    n_duplicates: int = 0
    notes: list[str] = field(default_factory=list)

    def full(self, n: int) -> list[int]:
        """The ranking with unranked candidates appended in presented order."""
        seen = set(self.ranking)
        return self.ranking + [i for i in range(n) if i not in seen]


def norm(text: str) -> str:
    """Case-folded, accent-free, punctuation-light text for title matching."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).casefold()
    text = re.sub(r"\s*\(\d{4}\)\s*$", "", text.strip())
    m = re.match(r"^(.*?),\s*(the|a|an|les|la|le|l'|il|el|das|der|die|los|las)\s*$", text)
    if m:  # "Usual Suspects, The" is read as "the usual suspects" (the MovieLens style)
        text = f"{m.group(2)} {m.group(1)}"
    text = re.sub(r"[\"'`*_“”‘’]", "", text)
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text)).strip()


class Matcher:
    """Find candidates by index, letter or title in a piece of a reply."""

    def __init__(self, candidates: list[str], letters: bool):
        self.n = len(candidates)
        self.letters = letters
        self.exact = {t.strip(): i for i, t in reversed(list(enumerate(candidates)))}
        self.folded = {norm(t): i for i, t in reversed(list(enumerate(candidates))) if norm(t)}

    def index(self, piece: str) -> tuple[int | None, bool]:
        """-> (position or None, whether the piece looked like an index at all)."""
        s = piece.strip().strip("*_`\"' ")
        if self.letters:
            m = re.match(r"^[(\[]?([A-Z])[)\]]?(?:[.):\]]|\s+-|$)", s)
            if m:
                pos = LETTERS.index(m.group(1))
                return (pos if pos < self.n else None), True
        m = INDEX.match(s)
        if m:
            pos = int(next(g for g in m.groups() if g is not None)) - 1
            return (pos if 0 <= pos < self.n else None), True
        return None, False

    def whole_title(self, piece: str) -> int | None:
        """The candidate whose title is the whole piece (exact, or case-folded; a trailing year or period
        allowed): "187", "10" or "2001: A Space Odyssey" name that film even where they read as numbers."""
        s = piece.strip().strip("*_`\"' ").rstrip(" .,;")
        if piece.strip() in self.exact:  # "Enfer, L'": the quote that is stripped below is part of the title
            return self.exact[piece.strip()]
        if s in self.exact:
            return self.exact[s]
        if re.match(r"^(?:\[\d+\]|\(\d+\)|#\d)", s):  # "[10]" is the number the prompt showed, not "10"
            return None
        key = norm(s)
        return self.folded.get(key) if key else None

    def title(self, piece: str) -> int | None:
        """Whole, then label-stripped exact, case-folded and fuzzy match of one piece against the titles."""
        whole = self.whole_title(piece)
        if whole is not None:
            return whole
        # a label before the title: "[3] ", "(C) ", "3. ", "A) ", or a bare number ("5 Babe": not a whole title)
        s = re.sub(r"^(?:\[\w+\]|\(\w+\)|\w{1,3}[.):]|\d{1,4}\s+(?=\S))\s*", "", piece.strip().strip("*_`\"' "))
        s = s.strip()
        s = re.sub(r"\s*\((?:\d{4}|score[^)]*)\)\s*$", "", s).strip(" .,;*\"'")
        if not s:
            return None
        if s in self.exact:
            return self.exact[s]
        key = norm(s)
        if key in self.folded:
            return self.folded[key]
        close = difflib.get_close_matches(key, list(self.folded), n=1, cutoff=FUZZY_CUTOFF)
        return self.folded[close[0]] if close else None

    def find(self, piece: str) -> int | None:
        """A whole title wins, then an in-range index, then a title; None: the piece names no candidate."""
        whole = self.whole_title(piece)
        if whole is not None:
            return whole
        pos, _ = self.index(piece)
        return pos if pos is not None else self.title(piece)

    def titles_in(self, line: str) -> list[int]:
        """Candidate titles mentioned anywhere in a line of prose, in the order they appear (longest wins)."""
        text = norm(line)
        hits = []
        for title, pos in self.folded.items():
            m = re.search(r"(?<!\w)" + re.escape(title) + r"(?!\w)", text)
            if m:
                hits.append((m.start(), -len(title), m.end(), pos))
        out, covered = [], -1
        for start, _, end, pos in sorted(hits):
            if start >= covered:
                out.append(pos)
                covered = end
        return out

    def mask_titles(self, text: str) -> str:
        """``text`` with every candidate title in it (as presented, without its year, or with a trailing article
        moved to the front: "A Few Good Men") replaced by as many ``MASK`` characters."""
        spans = []
        for title in self.exact:
            base = re.sub(r"\s*\(\d{4}\)\s*$", "", title)
            forms = {title, base}
            m = re.match(r"^(.*?),\s*(the|an?|les|la|le|l'|il|el|das|der|die|los|las)$", base, re.IGNORECASE)
            if m:
                forms.add(m.group(2) + ("" if m.group(2).endswith("'") else " ") + m.group(1))
            for form in (f for f in forms if len(f) >= 3):
                spans += [x.span() for x in re.finditer(r"(?<!\w)" + re.escape(form) + r"(?!\w)", text, re.IGNORECASE)]
        chars = list(text)
        for start, end in spans:
            chars[start:end] = MASK * (end - start)
        return "".join(chars)


def after_reasoning(reply: str) -> tuple[str, str | None]:
    """(the answer, a note): the text after the last closing reasoning tag.  A block opened at the start
    and never closed leaves no answer (generation stopped while the model was still deliberating); a closing
    tag without an opening one is a block the chat template opened in the prompt."""
    closes = list(THINK_CLOSE.finditer(reply))
    if closes:
        return reply[closes[-1].end():], "reasoning block skipped; nothing after it" if not \
            reply[closes[-1].end():].strip() else "reasoning block skipped"
    if THINK_OPEN.match(reply):
        return "", "reasoning block never closed: no answer (cut off by max_new_tokens?)"
    return reply, None


CANDIDATE_LABEL = re.compile(r"^(?:\[\w{1,4}\]|\(\w{1,4}\)|\w{1,4}[.):])\s*")


def is_echo(reply: str, prompt: str | None, candidates: list[str], ranking: list[int]) -> bool:
    """The reply copies the prompt back instead of answering.  Copied prompt text is the prompt's own lines
    around the list (its two opening lines, or at least half of its instruction and history lines) or the
    presented candidate lines themselves in their presented order (``[3] Title``, at least three).  An echo is
    copied text with nothing of its own ranked (no candidate, or candidates in the presented order), a reply that
    is nothing but prompt lines (a copy cut off by max_new_tokens ends in a piece of one: "...\n10."), or the
    candidate list copied in order with the prompt text around it, whatever numbers that text holds (the
    prompt's example answer).  Candidate lines in a new order are a ranking, whatever else the reply repeats,
    and so is the presented order written as the asked numbers ("1, 2, 3, ..."): that is the model's answer
    (position bias), not a copy."""
    if not prompt:
        return False
    texts = {t.strip() for t in candidates}
    lines = [ln.strip() for ln in prompt.splitlines() if ln.strip()]
    shown = [ln for ln in lines if CANDIDATE_LABEL.match(ln) and CANDIDATE_LABEL.sub("", ln, 1).strip() in texts]
    context = [ln for ln in lines if ln not in shown]
    said = [ln.strip() for ln in reply.splitlines() if ln.strip()]
    repeated = sum(1 for ln in context if ln in said or (len(ln) > 12 and ln in reply))
    copied_context = (len(lines) >= 2 and said[:2] == lines[:2]) or (bool(context) and
                                                                     repeated >= max(2, len(context) / 2))
    at = [reply.find(ln) for ln in shown if ln in reply]
    copied_list = len(at) >= min(3, len(candidates)) and at == sorted(at)
    in_order = ranking == list(range(len(ranking)))
    only_copies = all(ln in lines for ln in said[:-1]) and any(ln.startswith(said[-1]) for ln in lines)
    return (copied_context and (copied_list or in_order or only_copies)) or (copied_list and in_order)


def json_entries(reply: str) -> list | None:
    """The entries of the first JSON-like array; a truncated array keeps its complete entries."""
    for m in re.finditer(r"\[", reply):
        end = reply.find("]", m.start())
        chunk = reply[m.start():end + 1] if end != -1 else reply[m.start():]
        if end != -1:
            try:
                value = json.loads(chunk)
                flat = isinstance(value, list) and value and not any(isinstance(v, (list, dict)) for v in value)
                if flat and (len(value) >= 2 or reply.strip() == chunk):  # "[3] Babe" is a label, not an answer
                    return value
                continue
            except ValueError:
                body = chunk[1:-1]
        else:  # cut off: the last entry counts only if a separator or a closing quote follows it
            body = chunk[1:]
            if not re.search(r"(,\s*|\"\s*)$", body):
                body = body.rsplit(",", 1)[0] if "," in body else ""
        entries = [int(num) if num else (dq or sq) for dq, sq, num in
                   re.findall(r"\"((?:[^\"\\]|\\.)*)\"|'([^']*)'|(-?\d+)", body)]
        if len(entries) >= 2:
            return entries
    return None


def segments(reply: str, matcher: Matcher) -> list[str | int]:
    """Pieces of a reply in answer order: numbered-list lines are one item each (the enumerator is a
    rank); other lines split on , ; > | (after a "label:" prefix) when they read as indices, else the
    candidate titles they mention.  Ints are positions already resolved."""
    out: list[str | int] = []
    for line in reply.splitlines():
        line = re.sub(r"\*\*|__", "", line).strip()  # markdown bold around enumerators and titles
        if not line:
            continue
        m = re.match(r"^(?:rank\s*)?\d{1,3}[.)]\s+(\S.*)$", line, re.IGNORECASE)
        if m and len(index_list(m.group(1), matcher)) < 2:
            out.append(m.group(1))
            continue
        if re.match(r'^"[^"]+"\s*:', line):  # a JSON field ("id": 10): only a candidate title in its value counts
            out.extend(matcher.titles_in(line.split(":", 1)[1]))
            continue
        if m:  # "20. 3, 1, 2, ...": a list of indices whose first entry reads like an enumerator
            line = re.sub(r"^(?:rank\s*)?(\d{1,3})[.)]", r"\1,", line, flags=re.IGNORECASE)
        for tail in (line, line.rsplit(":", 1)[-1]):
            pieces = index_list(tail, matcher) or mixed_list(tail, matcher)
            if pieces:
                out.extend(pieces)
                break
        else:
            brackets = re.findall(r"\[(\d{1,4}|[A-Z])\]", line)
            out.extend(f"[{b}]" for b in brackets) if brackets else out.extend(matcher.titles_in(line))
    return out


def list_pieces(text: str, words: bool = False) -> list[str]:
    """"3, 1, 2" / "[3] > [1]" / "3 1 2" -> its pieces (a run of bare numbers splits on spaces); ``words``:
    "and" / "then" separate too ("2, 1, 3 and 4"), which only a list of numbers can afford."""
    sep = r"\s*(?:[,;>|]|\s(?:and|then)\s)\s*" if words else r"\s*[,;>|]\s*"
    return [p for part in re.split(sep, text.strip(), flags=re.IGNORECASE) for p in
            (part.split() if re.fullmatch(r"[\d\s]+", part) else [part]) if p.strip(" .")]


def index_list(text: str, matcher: Matcher) -> list[str]:
    """The pieces of a list when every piece reads as an index; else []."""
    pieces = list_pieces(text, words=True)
    return pieces if pieces and all(matcher.index(p)[1] for p in pieces) else []


def mixed_list(text: str, matcher: Matcher) -> list[str]:
    """The pieces of "2, 12, Babe, 8 Seconds" (indices and whole titles) when every piece is one of the two and
    at least one is an index; else [] (a line of titles alone is read by ``titles_in``, which finds titles
    whose own commas would split them here)."""
    pieces = list_pieces(text)
    kinds = [("title" if matcher.whole_title(p) is not None else "index" if matcher.index(p)[1] else None)
             for p in pieces]
    return pieces if pieces and None not in kinds and "index" in kinds else []


# "Answer: ", "The answer is ", "I would recommend ", "My pick would be " before a choice reply's answer
ANSWER_PHRASE = re.compile(
    r"^\W*(?:(?:my|the)\s+)?(?:final\s+)?(?:answer|choice|option|pick|recommendation|selection)\s*"
    r"(?:is|would be|will be|:|-)[\s*:]*"
    r"|^\W*(?:i\s*(?:would|'d|will|'ll)?\s+)?(?:choose|pick|select|recommend|suggest|go with)\s+", re.IGNORECASE)
# a letter ends where it stands as the answer: the end, a closing mark or stop, a dash, a lowercase word ("B because"),
# or a candidate title ("B Star Wars"); before a capitalised word it begins a title ("A Bronx Tale", "A Space Odyssey")
LETTER_END = rf"(?=[*)\]]*(?:$|[.):,;!?]|\s+(?:[a-z]|-|[(\[{MASK}])))"


def choice_pieces(reply: str, matcher: Matcher) -> list[str | int]:
    """What a choice reply names: a candidate's title when that is the whole answer ("Few Good Men, A", "I would
    recommend 2001: A Space Odyssey": the capitals in them are not option letters), else the letter it gives
    ("B", "(B)", "Answer: B. Title", "I would choose **C**"), read with the candidates' titles masked, else
    the titles its lines mention."""
    allowed = LETTERS[:matcher.n]
    text = reply.strip()
    for answer in (text, ANSWER_PHRASE.sub("", text, count=1)):
        whole = matcher.whole_title(answer)
        if whole is not None:
            return [whole]
    masked = matcher.mask_titles(text)
    m = re.search(r"(?i:answer|choice|option|choose|pick|select|go with|recommend)\w*\s*(?i:is|would be|:)?\s*"
                  r"[*(\[]*([A-Z])" + LETTER_END, masked)
    if m and m.group(1) in allowed:
        return [m.group(1)]
    first = re.match(rf"^[*(\[]*([A-Z])[*)\]]*(?:[.):]|\s*$|\s+-|\s+[(\[{MASK}])", masked)
    if first and first.group(1) in allowed:
        return [first.group(1)]
    return [p for line, hidden in zip(text.splitlines(), masked.splitlines())
            for p in (choice_line(hidden, allowed) or matcher.titles_in(line))]


def choice_line(line: str, allowed: str) -> list[str] | None:
    """The first option letter standing as one in a line (titles masked); "A" before a lowercase word is the
    article, and a capital inside a name ("L.A.", "3-D", "M*A*S*H") is no letter."""
    letters = [m.group(1) for m in re.finditer(r"(?<![\w'./-])([A-Z])" + LETTER_END, line)
               if m.group(1) in allowed and not (m.group(1) == "A" and re.match(r"A\s+[a-z]", line[m.start():]))]
    return letters[:1] or None


def parse(reply: str | None, candidates: list[str], protocol: str, *, k: int | None = None,
          prompt: str | None = None) -> Parsed:
    """Read ``reply`` back into a ranking of ``candidates`` (the texts as presented)."""
    n = len(candidates)
    want = {"choice": 1, "topk-json": min(k or 10, n)}.get(protocol, n)
    if reply is None or not reply.strip():
        return Parsed([], "failed", "empty")
    reply, note = after_reasoning(reply)
    if not reply.strip():
        return Parsed([], "failed", "reasoning", notes=[note])
    parsed = read(reply, Matcher(candidates, letters=protocol == "choice"), protocol, want)
    if is_echo(reply, prompt, candidates, parsed.ranking):
        return Parsed([], "failed", "echo", notes=["the reply repeats the prompt"])
    parsed.notes += [note] if note else []
    return parsed


def read(reply: str, matcher: Matcher, protocol: str, want: int) -> Parsed:
    """The ranking a reply's text gives, in the protocol's format or else as lists, segments and titles."""
    if protocol == "choice":
        pieces, method = choice_pieces(reply, matcher), "letters"
    elif protocol == "topk-json" and (entries := json_entries(reply)) is not None:
        parsed = collect([e if isinstance(e, str) else str(e) for e in entries], matcher, want, "json")
        if parsed.ranking:
            return parsed
        pieces, method = segments(reply, matcher), None  # an array of something else (genres, code): read the text
    else:
        pieces, method = segments(reply, matcher), None
    return collect(pieces, matcher, want, method)


def collect(pieces: list, matcher: Matcher, want: int, method: str | None) -> Parsed:
    """Resolve pieces to positions, dropping duplicates and counting what named no candidate."""
    ranking, seen, hows = [], set(), set()
    invalid = dup = 0
    for piece in pieces:
        for pos, how in resolve(piece, matcher):
            if pos is None:
                invalid += 1
                continue
            hows.add(how)
            if pos in seen:
                dup += 1
                continue
            seen.add(pos)
            ranking.append(pos)
        if want == 1 and ranking:
            ranking = ranking[:1]
            break
    if method is None:
        method = "mixed" if len(hows) > 1 else {"index": "indices", "title": "titles"}.get(next(iter(hows), ""), "none")
    if not ranking:
        return Parsed([], "failed", method, invalid, dup)
    return Parsed(ranking, "valid" if len(ranking) >= want else "partial", method, invalid, dup)


def resolve(piece: str | int, matcher: Matcher) -> list[tuple[int | None, str]]:
    """One piece -> [(position or None, how)]: an index, a title, or the bracketed indices / titles inside it."""
    if isinstance(piece, int):
        return [(piece, "title")]
    whole = matcher.whole_title(piece)
    if whole is not None:
        return [(whole, "title")]
    idx, _ = matcher.index(piece)
    if idx is not None:
        return [(idx, "index")]
    title = matcher.title(piece)
    if title is not None:
        return [(title, "title")]
    inner = [(matcher.index(f"[{b}]")[0], "index") for b in re.findall(r"\[(\d{1,4})\]", piece)]
    inner = [x for x in inner if x[0] is not None] or [(t, "title") for t in matcher.titles_in(piece)]
    return inner or [(None, "invalid")]
