"""Text helpers shared by the qa_gen generators: markdown cleaning, sentences, bounded answers, question checks.

Why here and not in stages/common: only qa_gen needs them, and each rule (what a sentence is, what makes a
question self-contained) is a qa_gen decision.
"""

from __future__ import annotations

import re

from stages.common.text import drop_html_comments, fenced_lines, split_fences, words


def wordset(text: str) -> frozenset[str]:
    """A set of words written as one readable block of text."""
    return frozenset(text.split())


STOPWORDS = wordset("""
a about above after again against all also am an and any are as at be because been before being below between
both but by can could did do does doing down during each few for from further had has have having he her here
hers him his how i if in into is it its itself just let may me might more most must my no nor not now of off on
once only or other our ours out over own same shall she should so some such than that the their theirs them then
there these they this those through to too under until up upon us very via was we were what when where which while
who whom why will with within without would you your yours e.g i.e etc
""")

# Repeats are bounded (no real shortcode, link or label is longer): unbounded ones rescanned the rest of the text
# from every unclosed opener, quadratic on hostile chunks (seconds per 40 KB).
_TOOLTIP = re.compile(r"\{\{[<%]\s*glossary_tooltip\s+[^}]{0,500}?text=\"([^\"]{0,500})\"[^}]{0,500}?[%>]\}\}")
_SHORTCODE = re.compile(r"\{\{[<%].{0,500}?[%>]\}\}", re.S)
_GITBOOK_TAG = re.compile(
    r"\{%-?\s*(?:end)?(?:hint|tabs|tab|code|content-ref|embed|raw|include)\b.{0,500}?-?%\}", re.S
)
_IMAGE = re.compile(r"!\[[^\]]{0,500}\]\([^)]{0,2000}\)")
_LINK = re.compile(r"\[([^\]]{0,500})\]\((?:[^()]|\([^()]{0,200}\)){0,2000}\)")
_REF_LINK = re.compile(r"\[([^\]]{1,500})\]\[[^\]]{0,200}\]")
_LINK_DEF = re.compile(r"^\s{0,200}\[[^\]]{1,500}\]:\s{0,200}\S+.*$", re.M)
_FOOTNOTE_REF = re.compile(r"\[\^[^\]\n]{1,200}\]")
_AUTOLINK = re.compile(r"<(https?://[^>\s]{1,2000})>")
_INLINE_CODE = re.compile(r"(`[^`\n]+`)")
_HTML_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>")
_BOLD = re.compile(r"(\*\*|__)(?=\S)(.{1,500}?)(?<=\S)\1")
_ITALIC = re.compile(r"(?<![\w*])([*_])(?=[^\s*_])([^*_\n]+?)(?<=[^\s*_])\1(?![\w*])")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_ADMONITION = re.compile(r"^\s*(?:!!!|\?\?\?\+?|:::)\s*\w*.*$")
_ABBREV = re.compile(r"\b(?:e\.g|i\.e|etc|vs|cf|approx|Dr|Mr|Ms|No|Fig)\.$", re.I)
_SENT_SPLIT = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[A-Z0-9`\"'(\[*_])")


def n_words(text: str) -> int:
    """Identifier words (`kube-proxy`, `v1.2` count once): the unit of qa_gen's answer lengths."""
    return len(words(text, "identifier"))


def content_words(text: str) -> list[str]:
    """Lowercased words that carry meaning: no stopwords, no single characters."""
    return words(text, "identifier", lower=True, min_len=2, stopwords=STOPWORDS)


def split_blocks(text: str) -> list[tuple[str, str]]:
    """Split markdown into ('code', block) and ('text', paragraph) blocks; fences stay whole."""
    blocks: list[tuple[str, str]] = []
    for is_code, segment in split_fences(text.replace("\r\n", "\n").replace("\r", "\n")):
        if is_code:  # an unclosed fence (chunk cut mid-block) is still code, never prose: it is closed
            blocks.append(("code", "\n".join(fenced_lines(segment, trim_fences=False)).strip("\n")))
            continue
        for paragraph in re.split(r"\n[ \t]*\n", segment):
            if paragraph.strip():
                blocks.append(("text", paragraph.strip("\n")))
    return blocks


def drop_headings(block: str) -> str:
    """Heading lines are structure (kept in heading_path), never part of an answer."""
    return "\n".join(ln for ln in block.splitlines() if not _HEADING.match(ln))


def clean_inline(text: str) -> str:
    """Markdown/HTML prose -> plain prose that keeps inline `code`, link text and list markers."""
    text = drop_html_comments(text, " ")
    text = re.sub(r"\[!(?:NOTE|TIP|IMPORTANT|WARNING|CAUTION)\]\s*", "", text)
    text = _TOOLTIP.sub(r"\1", text)
    text = _SHORTCODE.sub(" ", text)
    text = _GITBOOK_TAG.sub(" ", text)
    text = _IMAGE.sub(" ", text)
    text = _LINK.sub(r"\1", text)
    text = _REF_LINK.sub(r"\1", text)
    text = _LINK_DEF.sub(" ", text)
    text = _FOOTNOTE_REF.sub("", text)  # footnote references
    text = _AUTOLINK.sub(r"\1", text)  # autolinks keep their URL
    # Inline code keeps its text as written: `<pod-name>` is a placeholder, not an HTML tag.
    parts = _INLINE_CODE.split(text)
    for i in range(0, len(parts), 2):
        parts[i] = _ITALIC.sub(r"\2", _BOLD.sub(r"\2", _HTML_TAG.sub(" ", parts[i])))
    text = "".join(parts)
    lines = []
    for line in text.splitlines():
        if _ADMONITION.match(line):
            continue
        heading = _HEADING.match(line)
        line = heading.group(1) if heading else line
        line = re.sub(r"^\s*>\s?", "", line)  # block quotes
        line = re.sub(r"[ \t]+", " ", line).rstrip()
        if line.strip():
            lines.append(line)
    return "\n".join(lines).strip()


def prose_text(text: str) -> str:
    """The prose of a chunk: code blocks and tables removed, markup cleaned (for definitions and stats)."""
    parts = []
    for kind, block in split_blocks(text):
        if kind == "code" or is_table(block):
            continue
        cleaned = clean_inline(drop_headings(block))
        if cleaned:
            parts.append(cleaned)
    return "\n\n".join(parts)


def is_table(block: str) -> bool:
    lines = [ln for ln in block.splitlines() if ln.strip()]
    return len(lines) >= 2 and sum(ln.lstrip().startswith("|") for ln in lines) >= len(lines) - 1


def sentences(paragraph: str) -> list[str]:
    """Sentence split that keeps 'e.g.' and version numbers inside their sentence."""
    text = " ".join(paragraph.split())
    out: list[str] = []
    start = 0
    for m in _SENT_SPLIT.finditer(text):
        candidate = text[start : m.start()].strip()
        if _ABBREV.search(candidate):
            continue
        if candidate:
            out.append(candidate)
        start = m.end()
    tail = text[start:].strip()
    if tail:
        out.append(tail)
    return out


_META_SENTENCE = re.compile(
    r"^(?:this|the following|the next|below|in this)\s+(?:page|task|document|guide|tutorial|section|article|"
    r"example|chapter|doc)\b|^(?:see|refer to|read)\b|^for more information\b|^before you begin\b|"
    r"^(?:the\s+)?following\s+(?:sections?|steps|examples?|pages?|table)\b",
    re.I,
)


_BACK_REFERENCE = re.compile(
    r"\b(?:the|as) above\b|\bprevious(?:ly)?\b|\bearlier\b|^(?:this|that|these|it|they)\b", re.I
)


_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s")


def list_items(block: str) -> list[str]:
    """List lines with their wrapped continuation lines joined back to one line per item."""
    items: list[str] = []
    for line in block.splitlines():
        if _LIST_ITEM.match(line) or not items:
            items.append(line.rstrip())
        else:
            items[-1] += " " + line.strip()
    return items


def bounded_answer(text: str, max_words: int, min_words: int, keep_code: bool = True) -> str:
    """The section's own text, cleaned, cut at a sentence (or block) boundary under `max_words`.

    Sentences that talk about the page itself ("This page shows...") are dropped: the answer must stand alone
    just like the question.
    """
    pieces: list[str] = []
    used = 0
    for kind, block in split_blocks(text):
        if kind == "code":
            if not keep_code or not pieces:  # an answer never starts with a bare code block
                continue
            size = n_words(block)
            if used + size > max_words or "{{<" in block or "{{%" in block:
                break  # too long, or a Hugo shortcode whose rendered value is unknown: end the answer here
            pieces.append(block)
            used += size
            continue
        if is_table(block):
            continue
        cleaned = clean_inline(drop_headings(block))
        if not cleaned:
            continue
        if _LIST_ITEM.match(cleaned):
            items = list_items(cleaned)
            kept_lines = []
            for line in items:
                size = n_words(line)
                if used + size > max_words:
                    break
                kept_lines.append(line)
                used += size
            if kept_lines:
                pieces.append("\n".join(kept_lines))
            if len(kept_lines) < len(items):
                break
            continue
        kept: list[str] = []
        full = True
        for sent in sentences(cleaned):
            if _META_SENTENCE.search(sent) or (not pieces and not kept and _BACK_REFERENCE.search(sent)):
                continue
            size = n_words(sent)
            if used + size > max_words:
                full = False
                break
            kept.append(sent)
            used += size
        if kept:
            pieces.append(" ".join(kept))
        if not full:
            break
    while pieces and pieces[-1].rstrip().endswith(":"):  # "Create the Pod:" with its code cut off
        used -= n_words(pieces.pop())
    answer = "\n\n".join(pieces).strip()
    return answer if n_words(answer) >= min_words else ""


BANNED_PHRASES = re.compile(
    r"\b(?:this|the above|the following|following|above|below|previous|next)\s+"
    r"(?:page|section|document|example|guide|tutorial|step|steps|table|command|file|article|chapter|text|"
    r"paragraph|chunk|passage|context)\b|\bthe following\b|\bmentioned above\b|\bas shown\b|\bthis\s+(?:one|it)\b|"
    r"\b(?:the|this|given|provided)\s+(?:passage|chunk|context|excerpt|text)\b|\b(?:above|below|following)\b",
    re.I,
)


def is_self_contained(question: str, names: list[str]) -> bool:
    """A question a reader can answer without the page: ends with '?', names one of `names`, no deixis."""
    q = question.strip()
    is_instruction = q.startswith("Write ") and q.endswith(".")  # "Write a Kubernetes manifest that ..."
    if not (q.endswith("?") or is_instruction) or len(q) < 12 or BANNED_PHRASES.search(q):
        return False
    low = q.lower()
    return any(name and name.lower() in low for name in names)


def display_name(project: str) -> str:
    """'Fluent Bit (Fluentd sub-project)' -> 'Fluent Bit': the name people write in a question."""
    name = re.sub(r"\s*\([^)]*\)\s*$", "", project).strip()
    return name or project


def chunk_context(chunk: dict) -> str:
    """What a chunk tells a reader: its project, title and headings as well as its text (grounding source)."""
    head = [
        chunk.get("project") or "",
        display_name(chunk.get("project") or ""),
        chunk.get("title") or "",
        *(chunk.get("heading_path") or []),
    ]
    return "\n".join([*(h for h in head if h), chunk.get("text") or ""])


def normalize_question(question: str) -> str:
    """Key for duplicate detection: case, spacing, backticks and punctuation do not make a new question."""
    return " ".join(re.sub(r"[`*_\"'?.!,:;()]", " ", question.lower()).split())
