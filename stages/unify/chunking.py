"""Heading-aware, size-bounded chunking of markdown-ish text.

Rules: a chunk never spans two top-level sections; `heading_path` is the document title plus the headings above
the chunk; a chunk holds at most `max_words` words (split at paragraphs, then sentences, then word windows; a
code block stays whole when it fits, else it is cut at line boundaries and re-fenced); small neighbouring pieces
inside one top-level section are merged (up to max) when one of them is under `min_words`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from stages.common.text import FENCE_RE, WORD_RE, count_words, split_fences

__all__ = ["chunk_markdown", "chunk_structured", "count_words"]

HEADING_RE = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
SENTENCE_SPLIT_RE = re.compile(r"(?<=[.!?])\s+(?=\S)|(?<=[。！？])")


@dataclass
class Piece:
    path: list[str]
    group: int
    units: list[str] = field(default_factory=list)
    words: int = 0
    heading_only: bool = False  # a heading with no text before the next heading

    @property
    def text(self) -> str:
        return "\n\n".join(self.units)


def word_windows(text: str, max_words: int) -> list[str]:
    """Cut text into pieces of at most max_words words, at word boundaries, keeping the original characters."""
    spans = [m.span() for m in WORD_RE.finditer(text)]
    out = []
    for i in range(0, len(spans), max_words):
        window = spans[i:i + max_words]
        out.append(text[window[0][0]:window[-1][1]])
    return out


LIST_ITEM_RE = re.compile(r"^[ \t]{0,3}(?:[-*+]|\d+[.)])[ \t]+")


def split_lines(para: str, max_words: int) -> list[str] | None:
    """Tables and lists over the bound are cut between rows/items (each table part keeps the header rows)."""
    lines = para.split("\n")
    if all(ln.lstrip().startswith("|") for ln in lines if ln.strip()):
        header = lines[:2] if len(lines) > 2 and set(lines[1].replace(" ", "")) <= set("|:-") else []
        body = lines[len(header):]
        head_words = count_words("\n".join(header))
        if head_words * 2 > max_words:
            header, body, head_words = [], lines, 0
        rows = [r if count_words(r) <= max_words - head_words else word_windows(r, max_words - head_words)[0]
                for r in body]
        return ["\n".join(header + [part]) if header else part
                for part in pack(rows, max_words - head_words, sep="\n")]
    if LIST_ITEM_RE.match(lines[0]):
        items: list[str] = []
        for ln in lines:
            if LIST_ITEM_RE.match(ln) or not items:
                items.append(ln)
            else:
                items[-1] += "\n" + ln
        if len(items) > 1:
            units: list[str] = []
            for item in items:
                units.extend(split_paragraph(item, max_words) if count_words(item) > max_words else [item])
            return pack(units, max_words, sep="\n")
    return None


def split_paragraph(para: str, max_words: int) -> list[str]:
    """A paragraph over the bound -> table rows / list items, else sentences, packed up to the bound (over-long
    sentences -> word windows)."""
    by_lines = split_lines(para, max_words)
    if by_lines is not None:
        return by_lines
    units: list[str] = []
    for sentence in SENTENCE_SPLIT_RE.split(para):
        sentence = sentence.strip()
        if not sentence:
            continue
        if count_words(sentence) > max_words:
            units.extend(word_windows(sentence, max_words))
        else:
            units.append(sentence)
    return pack(units, max_words, sep=" ")


def split_code(block: str, max_words: int) -> list[str]:
    """A fenced block over the bound -> parts cut at line boundaries, each re-fenced so it stays a code block."""
    lines = block.split("\n")
    opener = lines[0] if FENCE_RE.match(lines[0]) else "```"
    fence = FENCE_RE.match(opener).group(1) if FENCE_RE.match(opener) else "```"
    body = lines[1:-1] if len(lines) > 1 and FENCE_RE.match(lines[-1]) else lines[1:]
    budget = max(1, max_words - count_words(opener) - count_words(fence))
    parts: list[list[str]] = [[]]
    words = 0
    for line in body:
        # one monster line (minified JSON) is cut by words
        pieces = word_windows(line, budget) if count_words(line) > budget else [line]
        for piece in pieces:
            n = count_words(piece)
            if words + n > budget and parts[-1]:
                parts.append([])
                words = 0
            parts[-1].append(piece)
            words += n
    return [f"{opener}\n" + "\n".join(p) + f"\n{fence}" for p in parts if p]


def pack(units: list[str], max_words: int, sep: str = "\n\n") -> list[str]:
    """Greedy: join consecutive units while the sum stays within max_words."""
    out: list[str] = []
    cur: list[str] = []
    words = 0
    for unit in units:
        n = count_words(unit)
        if cur and words + n > max_words:
            out.append(sep.join(cur))
            cur, words = [], 0
        cur.append(unit)
        words += n
    if cur:
        out.append(sep.join(cur))
    return out


def parse_items(text: str) -> list[tuple[str, int, str]]:
    """Flatten text into ("heading", level, title) and ("block", 0, text) items; headings in code are not headings."""
    items: list[tuple[str, int, str]] = []
    for is_code, seg in split_fences(text):
        if is_code:
            items.append(("block", 0, seg))
            continue
        para: list[str] = []
        for line in seg.split("\n") + [""]:
            m = HEADING_RE.match(line)
            if m or not line.strip():
                if para:
                    items.append(("block", 0, "\n".join(para).strip("\n")))
                    para = []
                if m:
                    items.append(("heading", len(m.group(1)), m.group(2).strip()))
            else:
                para.append(line)
    return [it for it in items if it[0] == "heading" or it[2].strip()]


def _title_heading_index(items: list[tuple[str, int, str]]) -> int | None:
    """The document's own H1 (the single top-most heading, first of all headings) is its title, not a section."""
    headings = [(i, lvl) for i, (kind, lvl, _) in enumerate(items) if kind == "heading"]
    if not headings:
        return None
    top = min(lvl for _, lvl in headings)
    firsts = [i for i, lvl in headings if lvl == top]
    return firsts[0] if top == 1 and len(firsts) == 1 and firsts[0] == headings[0][0] else None


def section_pieces(text: str, title: str, max_words: int) -> list[Piece]:
    """Walk headings and blocks; each section's units packed into pieces tagged with their top-level group."""
    items = parse_items(text)
    title_idx = _title_heading_index(items)
    levels = [lvl for i, (k, lvl, _) in enumerate(items) if k == "heading" and i != title_idx]
    top_level = min(levels) if levels else 1
    stack: list[tuple[int, str]] = []
    group = 0
    pieces: list[Piece] = []
    units: list[str] = []
    path = [title]

    def flush() -> None:
        heading_only = all(HEADING_RE.match(u) for u in units)
        for chunk_text in pack(units, max_words):
            pieces.append(Piece(path=list(path), group=group, units=[chunk_text], words=count_words(chunk_text),
                                heading_only=heading_only))

    for i, (kind, level, value) in enumerate(items):
        if kind == "heading":
            flush()
            units = []
            if i == title_idx:
                if value.strip().lower() != title.strip().lower():
                    stack = [(0, value)]
                    units.append(_bounded_heading("# " + value, max_words))
                path = [title] + [h for _, h in stack]
                continue
            if level <= top_level:
                group += 1
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, value))
            path = [title] + [h for _, h in stack]
            units.append(_bounded_heading("#" * level + " " + value, max_words))
        elif value.lstrip().startswith(("```", "~~~")) and count_words(value) > max_words:
            units.extend(split_code(value, max_words))
        elif count_words(value) > max_words:
            units.extend(split_paragraph(value, max_words))
        else:
            units.append(value)
    flush()
    return pieces


def _bounded_heading(line: str, max_words: int) -> str:
    return line if count_words(line) <= max_words else word_windows(line, max_words)[0]


def merge_small(pieces: list[Piece], min_words: int, max_words: int) -> list[Piece]:
    """Merge neighbours inside one top-level group when either is under min_words and the sum fits."""
    out: list[Piece] = []
    for piece in pieces:
        prev = out[-1] if out else None
        if (prev is not None and prev.group == piece.group and (prev.words < min_words or piece.words < min_words)
                and prev.words + piece.words <= max_words):
            prev.units.extend(piece.units)
            prev.words += piece.words
            # a bare heading leads into the next section: the chunk belongs there; else the shared ancestors
            prev.path = list(piece.path) if prev.heading_only else _common_prefix(prev.path, piece.path)
            prev.heading_only = prev.heading_only and piece.heading_only
        else:
            out.append(Piece(path=list(piece.path), group=piece.group, units=list(piece.units), words=piece.words,
                             heading_only=piece.heading_only))
    return out


def _common_prefix(a: list[str], b: list[str]) -> list[str]:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def chunk_markdown(text: str, title: str, max_words: int, min_words: int) -> list[tuple[list[str], str]]:
    """Markdown-ish document text -> [(heading_path, chunk text)] in document order."""
    pieces = merge_small(section_pieces(text, title, max_words), min_words, max_words)
    return [(p.path, p.text) for p in pieces if p.text.strip()]


def chunk_structured(sections: list[tuple[str, str]], fmt: str, title: str,
                     max_words: int) -> list[tuple[list[str], str]]:
    """YAML/JSON: per document, the description line + a fenced block (cut at line boundaries when too big)."""
    out: list[tuple[list[str], str]] = []
    for description, raw in sections:
        desc = description if count_words(description) < max_words // 2 else word_windows(description, max_words // 2)[0]
        block = f"```{fmt}\n{raw}\n```"
        budget = max_words - count_words(desc)
        parts = [block] if count_words(block) <= budget else split_code(block, budget)
        out.extend(([title], f"{desc}\n\n{part}") for part in parts)
    return out
