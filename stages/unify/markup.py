"""Markdown-family cleanup: front matter, rst and adoc light; markdown/MDX itself is cleaned by
stages.common.text (markdown-it-py, linear time).

Why: chunks feed language ID, NER and Q&A generation, which all choke on template syntax. The output stays
markdown-ish (ATX headings, fenced code, pipe tables) so the chunker can stay heading-aware.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import PurePosixPath
from typing import Any

import yaml

from stages.common.text import BLANKS_RE, FENCE_RE, clean_markdown, split_fences

__all__ = ["FENCE_RE", "clean_adoc", "clean_markdown", "clean_rst", "first_heading", "split_fences",
           "split_front_matter", "title_from_path"]

FRONT_YAML_RE = re.compile(r"\A---[ \t]*\n(.*?\n)?---[ \t]*(\n|\Z)", re.S)
FRONT_TOML_RE = re.compile(r"\A\+\+\+[ \t]*\n(.*?\n)?\+\+\+[ \t]*(\n|\Z)", re.S)


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


# Inline constructs are bounded in length: an unbounded `[^>]+` rescans the rest of the line from every opener
# (quadratic on a long line of `a <b`); no real link target or label is longer than these bounds.
RST_LINK_RE = re.compile(r"`([^`<]{1,500}?)\s*<[^>\n]{1,2000}>`_{1,2}")
RST_ROLE_RE = re.compile(r":\w{1,50}:`([^`<]{1,500}?)(?:\s*<[^>\n]{1,2000}>)?`")
RST_LITERAL_RE = re.compile(r"``([^`]{1,2000})``")
ADOC_LINK_RE = re.compile(r"(?:link:)?(?:https?://|mailto:)[^\s\[]{1,2000}\[([^\]]{0,500})\]")
ADOC_XREF_RE = re.compile(r"<<[^,>]{1,500},\s*([^>]{1,500})>>")
ADOC_IMAGE_RE = re.compile(r"image::?[^\[]{1,2000}\[[^\]]{0,500}\]")
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
    s = RST_LINK_RE.sub(r"\1", s)
    s = RST_ROLE_RE.sub(r"\1", s)
    return RST_LITERAL_RE.sub(r"`\1`", s)


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
            line = ADOC_LINK_RE.sub(r"\1", line)
            line = ADOC_XREF_RE.sub(r"\1", line)
            line = ADOC_IMAGE_RE.sub("", line)
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
