"""Markdown-family cleanup: front matter, Hugo/Docusaurus shortcodes, MDX, HTML/JSX tags, links; rst/adoc light.

Why: chunks feed language ID, NER and Q&A generation, which all choke on template syntax. The output stays
markdown-ish (ATX headings, fenced code, pipe tables) so the chunker can stay heading-aware.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import PurePosixPath
from typing import Any

import yaml

FENCE_RE = re.compile(r"^[ \t]{0,3}(`{3,}|~{3,})(.*)$")
FRONT_YAML_RE = re.compile(r"\A---[ \t]*\n(.*?\n)?---[ \t]*(\n|\Z)", re.S)
FRONT_TOML_RE = re.compile(r"\A\+\+\+[ \t]*\n(.*?\n)?\+\+\+[ \t]*(\n|\Z)", re.S)
HTML_COMMENT_RE = re.compile(r"<!--.*?(-->|\Z)", re.S)
SHORTCODE_RE = re.compile(r"\{\{[<%]\s*(/?)\s*([\w./-]+)(.*?)\s*/?\s*[>%]\}\}", re.S)
SHORTCODE_ARG_RE = re.compile(r'(\w+)\s*=\s*"([^"]*)"')
DROP_INNER_SHORTCODES = ("mermaid", "comment")
HIGHLIGHT_RE = re.compile(r"\{\{<\s*highlight\s+(\w*)[^}]*>\}\}\n?(.*?)\{\{<\s*/highlight\s*>\}\}", re.S)
HEADING_SHORTCODES = {"whatsnext": "What's next", "prerequisites": "Before you begin", "objectives": "Objectives",
                      "cleanup": "Clean up", "synopsis": "Synopsis", "options": "Options", "seealso": "See also",
                      "lessoncontent": "Lesson content"}
MDX_IMPORT_RE = re.compile(r"^(import\s.+?from\s+['\"].+?['\"];?|import\s+['\"].+?['\"];?|export\s.+)$", re.M)
HTML_TAGS = ("a|abbr|b|blockquote|br|button|center|code|dd|del|details|div|dl|dt|em|figcaption|figure|font|h[1-6]|"
             "hr|i|iframe|img|input|ins|kbd|label|li|mark|nav|ol|p|pre|s|section|small|source|span|strong|sub|"
             "summary|sup|table|tbody|td|tfoot|th|thead|tr|tt|u|ul|video|var|script|style|svg|path|picture")
HTML_TAG_RE = re.compile(rf"</?(?:{HTML_TAGS})(?:\s[^<>]*)?/?>", re.I)
SCRIPT_STYLE_RE = re.compile(r"<(script|style|svg)\b.*?</\1\s*>", re.S | re.I)
JSX_TAG_RE = re.compile(r"</?[A-Z][a-z]\w*(?:\.\w+)?(?:\s+[\w:-]+(?:=(?:\"[^\"]*\"|'[^']*'|\{[^{}]*\}))?)*\s*/?>")
IMAGE_RE = re.compile(r"!\[[^\]]*\]\([^)]*\)|!\[[^\]]*\]\[[^\]]*\]")
LINK_RE = re.compile(r"\[([^\]]*)\]\((?:[^()]|\([^)]*\))*\)")
REF_LINK_RE = re.compile(r"\[([^\]]+)\]\[[^\]]*\]")
REF_DEF_RE = re.compile(r"^[ \t]{0,3}\[[^\]]+\]:\s+\S+.*$", re.M)
ADMONITION_RE = re.compile(r"^[ \t]*:::[ \t]*(\w+)?.*$", re.M)
SETEXT_RE = re.compile(r"^([^\n#>|\-=*][^\n]*)\n(=+|-+)[ \t]*$", re.M)
BLANKS_RE = re.compile(r"\n{3,}")


def split_fences(text: str) -> list[tuple[bool, str]]:
    """Split text into (is_code, segment) parts; a fenced block keeps its fences. Unclosed fences run to the end."""
    parts: list[tuple[bool, str]] = []
    buf: list[str] = []
    fence: str | None = None
    for line in text.split("\n"):
        m = FENCE_RE.match(line)
        if fence is None and m:
            if buf:
                parts.append((False, "\n".join(buf)))
            buf, fence = [line], m.group(1)
        elif fence is not None and m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) \
                and not m.group(2).strip():
            buf.append(line)
            parts.append((True, "\n".join(buf)))
            buf, fence = [], None
        else:
            buf.append(line)
    if buf:
        parts.append((fence is not None, "\n".join(buf)))
    return parts


def split_front_matter(text: str, load_yaml: Any) -> tuple[dict[str, Any], str]:
    """Return (front matter dict, body). YAML (---) or TOML (+++); unparsable front matter is just dropped."""
    for regex, fmt in ((FRONT_YAML_RE, "yaml"), (FRONT_TOML_RE, "toml")):
        m = regex.match(text)
        if not m:
            continue
        raw, body = m.group(1) or "", text[m.end():]
        try:
            meta = load_yaml(raw) if fmt == "yaml" else tomllib.loads(raw)
        except (yaml.YAMLError, tomllib.TOMLDecodeError, ValueError):
            meta = {}
        return (meta if isinstance(meta, dict) else {}), body
    return {}, text


def _shortcode(m: re.Match[str]) -> str:
    """Render one shortcode tag: keep the visible text of inline ones, drop the rest (paired tags keep inner text)."""
    closing, name, args = m.group(1), m.group(2).lower(), m.group(3)
    if closing:
        return ""
    kwargs = dict(SHORTCODE_ARG_RE.findall(args))
    if name == "heading":
        key = args.strip().strip('"')
        return HEADING_SHORTCODES.get(key, key.replace("-", " ").capitalize())
    if name == "feature-state" and "state" in kwargs:
        version = kwargs.get("for_k8s_version", "")
        return f"Feature state: Kubernetes {version} [{kwargs['state']}]".replace("  ", " ")
    if "text" in kwargs:  # glossary_tooltip, link-like shortcodes
        return kwargs["text"]
    return ""


def clean_prose(segment: str, mdx: bool = False) -> str:
    """Clean one non-code markdown segment (code blocks never reach here)."""
    s = HTML_COMMENT_RE.sub("", segment)
    for name in DROP_INNER_SHORTCODES:
        s = re.sub(rf"\{{\{{[<%]\s*{name}\b.*?[>%]\}}\}}.*?\{{\{{[<%]\s*/{name}\s*[>%]\}}\}}", "", s, flags=re.S)
    if mdx:
        s = MDX_IMPORT_RE.sub("", s)
    s = IMAGE_RE.sub("", s)
    s = LINK_RE.sub(lambda m: m.group(1), s)
    s = REF_LINK_RE.sub(lambda m: m.group(1), s)
    s = REF_DEF_RE.sub("", s)
    s = SHORTCODE_RE.sub(_shortcode, s)
    s = SCRIPT_STYLE_RE.sub("", s)
    s = re.sub(r"<br\s*/?>", "\n", s, flags=re.I)
    s = HTML_TAG_RE.sub("", s)
    s = JSX_TAG_RE.sub("", s)
    s = re.sub(r"^[ \t]*\{/\*.*?\*/\}[ \t]*$", "", s, flags=re.M | re.S)  # MDX comments
    s = ADMONITION_RE.sub(lambda m: (m.group(1) or "").capitalize() + ":" if m.group(1) else "", s)
    s = SETEXT_RE.sub(lambda m: ("# " if m.group(2)[0] == "=" else "## ") + m.group(1).strip(), s)
    s = re.sub(r"&nbsp;", " ", s)
    s = re.sub(r"[ \t]+$", "", s, flags=re.M)
    return s


def clean_markdown(body: str, mdx: bool = False) -> str:
    """Markdown/MDX body -> readable markdown: prose cleaned, fenced code kept verbatim."""
    body = HIGHLIGHT_RE.sub(lambda m: f"```{m.group(1)}\n{m.group(2).rstrip()}\n```", body)
    out = [seg if is_code else clean_prose(seg, mdx) for is_code, seg in split_fences(body)]
    return BLANKS_RE.sub("\n\n", "\n".join(out)).strip()


RST_UNDERLINE_RE = re.compile(r"^([^\n]+)\n([=\-~^\"'`#*+:.])\2{2,}[ \t]*$", re.M)
RST_OVERLINE_RE = re.compile(r"^([=\-~^\"'`#*+:.])\1{2,}\n([^\n]+)\n\1{3,}[ \t]*$", re.M)


def clean_rst(text: str) -> str:
    """reStructuredText -> markdown-ish: headings by underline order, code directives fenced, roles reduced."""
    levels: list[str] = []

    def heading(title: str, char: str) -> str:
        if char not in levels:
            levels.append(char)
        return "#" * min(levels.index(char) + 1, 6) + " " + title.strip()

    text = RST_OVERLINE_RE.sub(lambda m: heading(m.group(2), m.group(1) + "o"), text)
    text = RST_UNDERLINE_RE.sub(lambda m: heading(m.group(1), m.group(2)), text)
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^\.\.\s+(code-block|code|sourcecode)::\s*(\w*)", line) or (
            re.match(r"^(.*)::\s*$", line) if not line.lstrip().startswith("..") else None)
        if m:
            lang = m.group(2) if m.re.groups >= 2 else ""
            if m.re.groups == 1:  # "text::" introduces a literal block; keep the text with one colon
                out.append(m.group(1) + ":")
            j = i + 1
            block: list[str] = []
            while j < len(lines) and (not lines[j].strip() or lines[j].startswith((" ", "\t"))):
                block.append(lines[j])
                j += 1
            code = [b for b in block if not re.match(r"^\s+:\w+:", b)]
            if any(c.strip() for c in code):
                out += ["", f"```{lang}", _dedent(code).strip("\n"), "```", ""]
                i = j
                continue
        if re.match(r"^\.\.\s+\w[\w-]*::", line) or re.match(r"^\.\.\s+_", line) or re.match(r"^\.\.\s*$", line):
            i += 1
            continue
        out.append(line)
        i += 1
    text = "\n".join(seg if is_code else _rst_inline(seg) for is_code, seg in split_fences("\n".join(out)))
    return BLANKS_RE.sub("\n\n", text).strip()


def _rst_inline(s: str) -> str:
    s = re.sub(r"`([^`<]+?)\s*<[^>]+>`_{1,2}", r"\1", s)
    s = re.sub(r":\w+:`([^`<]+?)(?:\s*<[^>]+>)?`", r"\1", s)
    return re.sub(r"``([^`]+)``", r"`\1`", s)


def _dedent(lines: list[str]) -> str:
    indents = [len(x) - len(x.lstrip()) for x in lines if x.strip()]
    cut = min(indents) if indents else 0
    return "\n".join(x[cut:] for x in lines)


def clean_adoc(text: str) -> str:
    """AsciiDoc -> markdown-ish: `=` headings, ---- listing blocks fenced, attributes and macros reduced."""
    out: list[str] = []
    in_block = False
    for line in text.split("\n"):
        if re.match(r"^(-{4,}|\.{4,})\s*$", line):
            out.append("```")
            in_block = not in_block
            continue
        if in_block:
            out.append(line)
            continue
        m = re.match(r"^(={1,6})\s+(.+)$", line)
        if m:
            out.append("#" * len(m.group(1)) + " " + m.group(2))
        elif re.match(r"^:[\w-]+:.*$", line) or re.match(r"^\[[\w,. \"=-]*\]\s*$", line) or line.startswith("//"):
            continue
        else:
            line = re.sub(r"(?:link:)?(?:https?://|mailto:)[^\s\[]+\[([^\]]*)\]", r"\1", line)
            line = re.sub(r"<<[^,>]+,\s*([^>]+)>>", r"\1", line)
            line = re.sub(r"image::?[^\[]+\[[^\]]*\]", "", line)
            out.append(line)
    if in_block:
        out.append("```")
    return BLANKS_RE.sub("\n\n", "\n".join(out)).strip()


def first_heading(text: str) -> str:
    for is_code, seg in split_fences(text):
        if is_code:
            continue
        m = re.search(r"^#{1,6}\s+(.+?)\s*#*\s*$", seg, re.M)
        if m:
            return m.group(1).strip()
    return ""


def title_from_path(path: str) -> str:
    """File name as a last-resort title; index/README pages take their folder's name."""
    p = PurePosixPath(path)
    stem = p.stem
    if stem.lower() in {"_index", "index", "readme"} and p.parent.name:
        stem = p.parent.name
    return stem.replace("-", " ").replace("_", " ").strip() or path
