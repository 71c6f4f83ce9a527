"""One implementation of each text helper the stages share: word counting, code-fence splitting, markdown and
HTML to readable text.

Why one module: the stages used to carry their own regex converters, and the backtracking ones took time
that grew with the cube of the input (a 20 KB page of one repeated Hugo shortcode took 48 s). Here markdown is
parsed by markdown-it-py (a CommonMark parser built for linear time), HTML by lxml (libxml2) or trafilatura for
whole pages, and the template syntax markdown parsers do not know (Hugo shortcodes, MDX imports and comments,
Docusaurus admonitions) is removed by single forward scans. Every function here runs in time linear in its
input: `benchmarks/pathological_markup.py` measures it.
"""

from __future__ import annotations

import bisect
import html
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
# What a word is, per use; `words(text, kind)` is the one tokenizer over them (BM25 keeps its own in retrieval).
WORD_KINDS = {
    "space": re.compile(rf"[{CJK}]|[^\s{CJK}]+"),  # whitespace-separated, each CJK character one: sizes budgets
    "word": re.compile(r"\w+"),  # letter/digit/underscore runs: word matching, dedup shingles, n-grams
    "identifier": re.compile(r"[A-Za-z0-9][A-Za-z0-9_./:+-]*[A-Za-z0-9]|[A-Za-z0-9]"),  # `kube-proxy`, `v1.2` whole
}
WORD_RE = WORD_KINDS["space"]
BLANKS_RE = re.compile(r"\n{3,}")
# Tags that are markup, not content; anything else in angle brackets (`<pod-name>`) is a placeholder and stays.
HTML_TAGS = frozenset(
    ["a", "abbr", "b", "blockquote", "br", "button", "center", "code", "dd", "del", "details", "div", "dl", "dt", "em", "figcaption", "figure", "font", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "iframe", "img", "input", "ins", "kbd", "label", "li", "mark", "nav", "ol", "p", "pre", "s", "section", "small", "source", "span", "strong", "sub", "summary", "sup", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "tt", "u", "ul", "video", "var", "script", "style", "svg", "path", "picture", "html", "body", "head"])
DROP_CONTENT_TAGS = frozenset({"script", "style", "svg"})
BREAK_TAGS = frozenset({"br", "p", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre",
                        "details", "summary", "section", "table", "ul", "ol", "dl", "dt", "dd", "figure", "hr"})
TAG_NAME_RE = re.compile(r"</?\s*([A-Za-z][\w.:-]*)")
SHORTCODE_DELIM_RE = re.compile(r"\{\{[<%]|[>%]\}\}")
SHORTCODE_ARG_RE = re.compile(r"(?<![\w])(\w+)\s*=\s*\"([^\"]*)\"")
DROP_INNER_SHORTCODES = frozenset({"mermaid", "comment"})
HEADING_SHORTCODES = {"whatsnext": "What's next", "prerequisites": "Before you begin", "objectives": "Objectives",
                      "cleanup": "Clean up", "synopsis": "Synopsis", "options": "Options", "seealso": "See also",
                      "lessoncontent": "Lesson content"}
ADMONITION_RE = re.compile(r"[ \t]*:::[ \t]*(\w+)?")
FENCE_RE = re.compile(r"^[ \t]{0,3}(`{3,}|~{3,})(.*)$")  # one fence line (re-fencing a cut code block)


def words(text: str, kind: str = "word", *, lower: bool = False, min_len: int = 1,
          stopwords: frozenset[str] = frozenset()) -> list[str]:
    """The word tokens of `text` (see WORD_KINDS); `lower` lowercases the text first, and `min_len`/`stopwords`
    keep content words only (applied to the tokens as returned)."""
    tokens = WORD_KINDS[kind].findall(text.lower() if lower else text)
    if min_len > 1 or stopwords:
        return [t for t in tokens if len(t) >= min_len and t not in stopwords]
    return tokens


def count_words(text: str) -> int:
    """Whitespace words, with each CJK character counted as one word (Chinese/Japanese text stays bounded)."""
    return len(words(text, "space"))


@lru_cache(maxsize=1)
def _markdown() -> Any:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": True}).enable("table").enable("strikethrough")


@lru_cache(maxsize=1)
def _block_markdown() -> Any:
    """Block structure only (no inline pass): enough to find the code fences, at a fraction of the cost."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": True}).disable(["inline", "text_join"], ignoreInvalid=True)


def split_fences(text: str) -> list[tuple[bool, str]]:
    """(is_code, segment) parts of markdown; a fenced block keeps its fence lines, an unclosed one runs to the
    end of its container. Joining the segments with "\\n" gives back the text (line ends normalized to \\n, as
    the parser sees them)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "```" not in text and "~~~" not in text:  # no fence marker at all: skip the parse (most chunks)
        return [(False, text)]
    lines = text.split("\n")
    spans: list[tuple[int, int]] = []
    for token in _block_markdown().parse(text):
        if token.type == "fence" and token.map:
            start, end = token.map
            if not spans or start >= spans[-1][1]:
                spans.append((start, min(end, len(lines))))
    parts: list[tuple[bool, str]] = []
    pos = 0
    for start, end in spans:
        if start > pos:
            parts.append((False, "\n".join(lines[pos:start])))
        parts.append((True, "\n".join(lines[start:end])))
        pos = end
    if pos < len(lines):
        parts.append((False, "\n".join(lines[pos:])))
    return parts


ANY_FENCE_RE = re.compile(r"^\s*(`{3,}|~{3,})(.*)$")


def fenced_lines(segment: str, trim_fences: bool = True) -> list[str]:
    """A code segment from `split_fences` as lines (fence lines trimmed unless told not to), closed when it was
    not (a chunk cut mid-block): downstream text never leaves a fence open."""
    lines = segment.split("\n")
    opener = ANY_FENCE_RE.match(lines[0])
    if opener is None:
        return lines
    if trim_fences:
        lines[0] = lines[0].strip()
    closer = ANY_FENCE_RE.match(lines[-1]) if len(lines) > 1 else None
    if closer and closer.group(1)[0] == opener.group(1)[0] and len(closer.group(1)) >= len(opener.group(1)) \
            and not closer.group(2).strip():
        lines[-1] = lines[-1].strip() if trim_fences else lines[-1]
    else:
        lines.append(opener.group(1))
    return lines


# ------------------------------------------------------------------------------------ template syntax
def _drop_between(text: str, opener: str, closer: str) -> str:
    """Remove every opener...closer span (an unclosed opener runs to the end), one forward scan."""
    out: list[str] = []
    pos = 0
    while True:
        start = text.find(opener, pos)
        if start < 0:
            out.append(text[pos:])
            break
        out.append(text[pos:start])
        end = text.find(closer, start + len(opener))
        if end < 0:
            break
        pos = end + len(closer)
    return "".join(out)


def drop_html_comments(text: str, replacement: str = "") -> str:
    """`<!-- ... -->` removed in one forward scan; an unclosed `<!--` and what follows it are kept as text."""
    out: list[str] = []
    pos = 0
    while True:
        start = text.find("<!--", pos)
        end = text.find("-->", start + 4) if start >= 0 else -1
        if start < 0 or end < 0:
            out.append(text[pos:])
            return "".join(out)
        out.append(text[pos:start])
        out.append(replacement)
        pos = end + 3


def _parse_shortcode(inner: str) -> tuple[bool, str, str]:
    """(closing, lowercased name, args) of the text between `{{<` and `>}}`."""
    body = inner.strip()
    if body.endswith("/"):
        body = body[:-1].rstrip()
    closing = body.startswith("/")
    if closing:
        body = body[1:].lstrip()
    parts = body.split(None, 1)
    name = parts[0] if parts else ""
    return closing, name.lower(), parts[1] if len(parts) > 1 else ""


def _render_shortcode(closing: bool, name: str, args: str) -> str:
    """Keep the visible text of inline shortcodes (tooltips, headings, feature state); drop the rest."""
    if closing:
        return ""
    kwargs = dict(SHORTCODE_ARG_RE.findall(args))
    if name == "heading":
        key = args.strip().strip('"')
        return HEADING_SHORTCODES.get(key, key.replace("-", " ").capitalize())
    if name == "feature-state" and "state" in kwargs:
        version = kwargs.get("for_k8s_version", "")
        return f"Feature state: Kubernetes {version} [{kwargs['state']}]".replace("  ", " ")
    return kwargs.get("text", "")


def _shortcode_spans(text: str) -> list[tuple[int, int, bool, str, str]]:
    """(start, end, closing, name, args) of each complete shortcode, found with one scan of the delimiters."""
    spans = []
    opener: int | None = None
    for m in SHORTCODE_DELIM_RE.finditer(text):
        if m.group().startswith("{{"):
            if opener is None:
                opener = m.start()
        elif opener is not None:
            closing, name, args = _parse_shortcode(text[opener + 3:m.start()])
            spans.append((opener, m.end(), closing, name, args))
            opener = None
    return spans


def replace_shortcodes(text: str, render: Callable[[bool, str, str], str] = _render_shortcode) -> str:
    """Hugo shortcodes -> their visible text; `mermaid`/`comment` pairs drop what they enclose. Linear."""
    spans = _shortcode_spans(text)
    closers: dict[str, list[int]] = {}
    for i, (_, _, closing, name, _) in enumerate(spans):
        if closing:
            closers.setdefault(name, []).append(i)
    out: list[str] = []
    pos = 0
    i = 0
    while i < len(spans):
        start, end, closing, name, args = spans[i]
        if start < pos:
            i += 1
            continue
        out.append(text[pos:start])
        if not closing and name in DROP_INNER_SHORTCODES:
            later = closers.get(name, [])
            j = bisect.bisect_right(later, i)
            if j < len(later):
                pos = spans[later[j]][1]
                i = later[j] + 1
                continue
        out.append(render(closing, name, args))
        pos = end
        i += 1
    out.append(text[pos:])
    return "".join(out)


def highlight_to_fences(text: str) -> str:
    """`{{< highlight go >}}...{{< /highlight >}}` -> a fenced block (then treated as code, kept verbatim)."""
    if "highlight" not in text:
        return text
    spans = _shortcode_spans(text)
    closers = [k for k, span in enumerate(spans) if span[3] == "highlight" and span[2]]
    out: list[str] = []
    pos = 0
    i = 0
    while i < len(spans):
        start, end, closing, name, args = spans[i]
        if name == "highlight" and not closing and start >= pos:
            j = bisect.bisect_right(closers, i)
            close = closers[j] if j < len(closers) else None
            if close is not None:
                lang = args.split()[0] if args.split() else ""
                lang = lang if lang.isidentifier() else ""
                body = text[end + 1 if text[end:end + 1] == "\n" else end:spans[close][0]].rstrip()
                out.append(text[pos:start])
                out.append(f"```{lang}\n{body}\n```")
                pos = spans[close][1]
                i = close + 1
                continue
        i += 1
    out.append(text[pos:])
    return "".join(out)


def _strip_mdx_lines(text: str) -> str:
    """MDX `import`/`export` statements (one line each) are module syntax, not prose."""
    kept = []
    for line in text.split("\n"):
        head = line.lstrip()
        if line == head and (head.startswith("export ") or (head.startswith("import ") and (
                " from " in head or head[7:].lstrip()[:1] in ("'", '"')))):
            continue
        kept.append(line)
    return "\n".join(kept)


def _admonitions(text: str) -> str:
    """Docusaurus `:::note` lines become `Note:`; a closing `:::` disappears."""
    out = []
    for line in text.split("\n"):
        m = ADMONITION_RE.match(line)
        if m:
            out.append((m.group(1) or "").capitalize() + ":" if m.group(1) else "")
        else:
            out.append(line)
    return "\n".join(out)


# ------------------------------------------------------------------------------------ HTML
def html_fragment_text(fragment: str) -> str:
    """HTML inside markdown -> its text: markup tags dropped (script/style/svg with their content), block tags
    become line breaks, unknown tags (`<pod-name>` placeholders) stay as written. libxml2: linear, never raises."""
    if "<" not in fragment:
        return fragment
    import lxml.etree
    import lxml.html

    # lxml lowercases tag names: JSX components (`<DocCardList />`) are recognised by their spelling here
    components = {m.group(1).lower() for m in TAG_NAME_RE.finditer(fragment) if m.group(1)[:1].isupper()}
    try:
        root = lxml.html.fragment_fromstring(fragment, create_parent="div")
    except (lxml.etree.ParserError, ValueError):
        return ""
    out: list[str] = []

    def walk(el: Any) -> None:
        tag = el.tag if isinstance(el.tag, str) else ""
        if tag and tag not in DROP_CONTENT_TAGS:
            if tag not in HTML_TAGS and tag != "div" and tag not in components:
                out.append(f"<{tag}>")
            elif tag in BREAK_TAGS:
                out.append("\n")
            out.append(el.text or "")
            for child in el:
                walk(child)
            if tag in BREAK_TAGS:
                out.append("\n")
        out.append(el.tail or "")

    out.append(root.text or "")
    for child in root:
        walk(child)
    return re.sub(r"[ \t]*\n[ \t]*", "\n", "".join(out))


def html_page_to_markdown(html: str, url: str | None = None) -> tuple[str, str]:
    """(title, main content as markdown) of a whole web page, boilerplate removed, via trafilatura."""
    import trafilatura

    body = trafilatura.extract(html, url=url or None, output_format="markdown", include_tables=True,
                               include_comments=False, include_links=False, include_images=False) or ""
    meta = trafilatura.extract_metadata(html)
    return (meta.title if meta is not None and meta.title else ""), body.strip()


def _inline_html(content: str) -> str:
    m = TAG_NAME_RE.match(content)
    name = m.group(1) if m else ""
    if content.startswith("<!--"):
        return ""
    if name.lower() == "br":
        return "\n"
    if name.lower() in HTML_TAGS or (name[:1].isupper()):
        return ""  # markup or a JSX component
    return content  # `<pod-name>`: a placeholder in prose


# Stack Overflow post HTML: code must come out fenced (trafilatura drops <pre> layout, lxml text loses it).
LIST_ITEM_RE = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s")


def _lang_from_class(value: str) -> str:
    match = re.search(r"(?:lang|language)-([\w+#.-]+)", value)
    return match.group(1) if match and match.group(1) not in ("none", "default") else ""


def tidy_markdown(text: str, keep_indent: bool = False) -> str:
    """Trim line ends and blank runs outside code fences; code lines (and markdown indents) are kept."""
    lines, in_fence = [], False
    for line in text.split("\n"):
        if line.strip().startswith("```"):
            in_fence = not in_fence
            lines.append(line.strip())
        elif in_fence:
            lines.append(line.rstrip())
        else:
            keep = keep_indent or LIST_ITEM_RE.match(line)
            lines.append(line.rstrip() if keep else line.strip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _well_formed_html(body: str) -> str:
    """The body re-serialized by libxml2: html.parser rescans unclosed tags (quadratic on `<a ` x 10,000, about 15 s
    for 40 KB); after lxml every tag is complete and the walk below is linear."""
    if "<" not in body:
        return body
    import lxml.etree
    import lxml.html

    try:
        root = lxml.html.fragment_fromstring(body, create_parent="div")
    except (lxml.etree.ParserError, ValueError):
        return html.escape(body, quote=False)
    return lxml.html.tostring(root, encoding="unicode")


def _pre_language(pre: Any) -> str:
    """A code block's language from `<pre class="lang-yaml">` or its `<code class="language-yaml">`."""
    code = pre.find("code")
    classes = [*(pre.get("class") or []), *((code.get("class") or []) if code is not None else [])]
    return next((lang for lang in (_lang_from_class(c) for c in classes) if lang), "")


def html_to_markdown(body: str) -> str:
    """Stack Overflow post HTML -> markdown (markdownify) with fenced code, inline code, links, lists and quotes;
    text is left as written (no `\\_` or `\\*` escapes: it is training text, not markdown to re-render)."""
    from markdownify import markdownify

    converted = markdownify(_well_formed_html(body), heading_style="ATX", bullets="-", strong_em_symbol="*",
                            escape_asterisks=False, escape_underscores=False, escape_misc=False,
                            wrap=True, wrap_width=None,  # runs of white space (line breaks too) become one space
                            code_language_callback=_pre_language)
    return tidy_markdown(converted)


# ------------------------------------------------------------------------------------ markdown
def _inline(tokens: list[Any]) -> str:
    out: list[str] = []
    for t in tokens:
        kind = t.type
        if kind == "image":
            continue
        if kind in ("text", "text_special"):
            out.append(t.content)
        elif kind == "code_inline":
            out.append(f"{t.markup}{t.content}{t.markup}")
        elif kind in ("softbreak", "hardbreak"):
            out.append("\n")
        elif kind == "html_inline":
            out.append(_inline_html(t.content))
        elif kind in ("em_open", "em_close", "strong_open", "strong_close", "s_open", "s_close"):
            out.append(t.markup)
        elif kind in ("link_open", "link_close"):
            continue
        elif t.content:
            out.append(t.content)
    return "".join(out).replace("\xa0", " ")


def _prefix(block: str, first: str, rest: str) -> str:
    lines = block.split("\n")
    return "\n".join([first + lines[0]] + [(rest + ln) if ln else ln for ln in lines[1:]])


class _Renderer:
    """markdown-it tokens -> markdown-ish text: ATX headings, list markers, pipe tables, fences verbatim."""

    def __init__(self, tokens: list[Any], lines: list[str]) -> None:
        self.tokens = tokens
        self.lines = lines
        self.i = 0

    def source(self, token: Any) -> str:
        start, end = token.map
        return "\n".join(self.lines[start:end]).rstrip("\n")

    def blocks_until(self, close: str | None) -> list[tuple[str, bool]]:
        """Render blocks until the closing token type; (text, tight) per block."""
        out: list[tuple[str, bool]] = []
        while self.i < len(self.tokens):
            t = self.tokens[self.i]
            if close is not None and t.type == close:
                self.i += 1
                return out
            self.i += 1
            text = self.block(t)
            if text is not None:
                out.append((text, t.hidden))
        return out

    def block(self, t: Any) -> str | None:
        kind = t.type
        if kind == "heading_open":
            text = _inline(self.tokens[self.i].children or [])
            self.i += 2
            return "#" * int(t.tag[1]) + " " + " ".join(text.split("\n")).strip()
        if kind == "paragraph_open":
            text = _inline(self.tokens[self.i].children or [])
            self.i += 2
            return text
        if kind in ("fence", "code_block"):
            return self.source(t) if t.map else t.content
        if kind == "html_block":
            return html_fragment_text(t.content).strip("\n")
        if kind == "hr":
            return "---"
        if kind == "blockquote_open":
            inner = self.join(self.blocks_until("blockquote_close"))
            return "\n".join(("> " + ln) if ln else ">" for ln in inner.split("\n"))
        if kind in ("bullet_list_open", "ordered_list_open"):
            return self.list_block(t)
        if kind == "table_open":
            return self.table(t)
        return None

    @staticmethod
    def join(blocks: list[tuple[str, bool]]) -> str:
        out = ""
        for n, (text, tight) in enumerate(blocks):
            if not text.strip():
                continue
            out += ("" if not out else ("\n" if tight or blocks[n - 1][1] else "\n\n")) + text
        return out

    def list_block(self, t: Any) -> str:
        close = t.type.replace("_open", "_close")
        ordered = t.type == "ordered_list_open"
        number = int(t.attrGet("start") or 1) if ordered else 0
        items: list[str] = []
        while self.i < len(self.tokens) and self.tokens[self.i].type != close:
            item = self.tokens[self.i]
            self.i += 1
            if item.type != "list_item_open":
                continue
            blocks = self.blocks_until("list_item_close")
            marker = f"{number}{t.markup} " if ordered else f"{t.markup} "
            number += 1
            items.append(_prefix(self.join(blocks), marker, " " * len(marker)))
        self.i += 1
        return "\n".join(items)  # items on consecutive lines, loose or tight: one list stays one paragraph

    def table(self, opening: Any) -> str:
        rows: list[list[str]] = []
        header_rows = 0
        while self.i < len(self.tokens) and self.tokens[self.i].type != "table_close":
            t = self.tokens[self.i]
            self.i += 1
            if t.type == "tr_open":
                rows.append([])
            elif t.type == "inline" and rows:
                rows[-1].append(" ".join(_inline(t.children or []).split()).replace("|", "\\|"))
            elif t.type == "thead_close":
                header_rows = len(rows)
        self.i += 1
        out = []
        for n, row in enumerate(rows):
            out.append("| " + " | ".join(row) + " |")
            if n + 1 == header_rows:  # the delimiter row as written (alignment colons kept)
                delimiter = self.lines[opening.map[0] + 1].strip() if opening.map else ""
                out.append(delimiter or "|" + "|".join("---" for _ in row) + "|")
        return "\n".join(out)


def markdown_to_text(text: str) -> str:
    """Render markdown (no fences in it, or fences kept verbatim) to markdown-ish text without inline markup."""
    tokens = _markdown().parse(text)
    renderer = _Renderer(tokens, text.split("\n"))
    return renderer.join(renderer.blocks_until(None))


def clean_prose(segment: str, mdx: bool = False) -> str:
    """One non-code markdown segment -> readable markdown: template syntax, HTML, links and images removed."""
    s = _drop_between(segment, "<!--", "-->")
    s = replace_shortcodes(s)
    if mdx:
        s = _drop_between(_strip_mdx_lines(s), "{/*", "*/}")
    s = _admonitions(s)
    return markdown_to_text(s)


def _keep_edges(original: str, cleaned: str) -> str:
    """The cleaned segment with the original's blank lines before and after (they separate it from code)."""
    lead = len(original) - len(original.lstrip("\n"))
    trail = len(original) - len(original.rstrip("\n"))
    return "\n" * lead + cleaned + "\n" * trail if cleaned.strip() else "\n" * (lead + trail)


def clean_markdown(body: str, mdx: bool = False) -> str:
    """Markdown/MDX body -> readable markdown: prose cleaned, fenced code kept verbatim. Linear time."""
    body = highlight_to_fences(body)
    out = [seg if is_code else _keep_edges(seg, clean_prose(seg, mdx)) for is_code, seg in split_fences(body)]
    text = "\n".join(out)
    return BLANKS_RE.sub("\n\n", "\n".join(line.rstrip() for line in text.split("\n"))).strip()
