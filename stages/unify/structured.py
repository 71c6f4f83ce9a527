"""YAML/JSON files -> a one-line description + the original text as a fenced code block.

Why keep the source instead of re-dumping it: the original is what users copy-paste, comments included. Loading
is only for the description, and it is safe-only with an alias-expansion budget, so a billion-laughs file is
refused before anything walks the expanded tree.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

MAX_KEYS_IN_DESCRIPTION = 12
DOC_SEPARATOR_RE = re.compile(r"^---(?:[ \t].*)?$", re.M)


class AliasBombError(ValueError):
    """A YAML document whose aliases expand far beyond its own size (billion laughs)."""


class StructuredError(ValueError):
    """Malformed YAML/JSON."""


class EmptyDocumentError(StructuredError):
    """A YAML file with comments only, or only empty documents."""


def _expanded_size(node: yaml.Node, memo: dict[int, int], budget: int) -> int:
    """Node count of the tree as a consumer would see it, aliases expanded; stops early past the budget."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = 1  # cycles (recursive aliases) count once instead of looping
    if isinstance(node, yaml.SequenceNode):
        children: list[yaml.Node] = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    else:
        children = []
    total = 1
    for child in children:
        total += _expanded_size(child, memo, budget)
        if total > budget:
            break
    memo[key] = total
    return total


def _distinct_nodes(node: yaml.Node, seen: set[int]) -> None:
    stack = [node]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if isinstance(n, yaml.SequenceNode):
            stack.extend(n.value)
        elif isinstance(n, yaml.MappingNode):
            stack.extend(x for pair in n.value for x in pair)


def safe_load_all(text: str, max_expansion: int = 10) -> list[Any]:
    """yaml.safe_load_all with an alias budget: a document may expand to at most max_expansion x its node count
    (+1000). Raises AliasBombError or StructuredError."""
    try:
        loader = yaml.SafeLoader(text)  # its reader rejects control characters at once
    except yaml.YAMLError as exc:
        raise StructuredError(f"malformed YAML: {str(exc).splitlines()[0]}") from None
    docs: list[Any] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            seen: set[int] = set()
            _distinct_nodes(node, seen)
            budget = max_expansion * len(seen) + 1000
            if _expanded_size(node, {}, budget) > budget:
                raise AliasBombError(f"YAML aliases expand past {budget} nodes ({len(seen)} distinct)")
            docs.append(loader.construct_document(node))
    except yaml.YAMLError as exc:
        raise StructuredError(f"malformed YAML: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise AliasBombError("YAML nesting too deep") from None
    finally:
        loader.dispose()
    return docs


def safe_load_one(text: str) -> Any:
    """First document of a YAML string (front matter); alias-guarded."""
    docs = safe_load_all(text)
    return docs[0] if docs else None


def describe(obj: Any, fmt: str) -> str:
    """One line saying what a YAML/JSON document is: a Kubernetes object, a config with keys, a list, a value."""
    label = fmt.upper()
    if isinstance(obj, dict) and isinstance(obj.get("kind"), str) and isinstance(obj.get("apiVersion"), str):
        meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
        name = meta.get("name") or meta.get("generateName") or ""
        named = f" `{name}`" if name else ""
        items = obj.get("items")
        extra = f" with {len(items)} items" if isinstance(items, list) else ""
        return f"Kubernetes {obj['kind']}{named} ({obj['apiVersion']}){extra}"
    if isinstance(obj, dict):
        keys = [str(k) for k in obj][:MAX_KEYS_IN_DESCRIPTION]
        more = ", ..." if len(obj) > MAX_KEYS_IN_DESCRIPTION else ""
        return f"{label} configuration with top-level keys: {', '.join(keys)}{more}" if keys else f"Empty {label} mapping"
    if isinstance(obj, list):
        return f"{label} list of {len(obj)} items"
    if obj is None:
        return f"Empty {label} document"
    return f"{label} value"


def split_yaml_documents(text: str) -> list[str]:
    """Raw text of each YAML document (split at `---` lines), so chunks can quote one document at a time."""
    pieces = DOC_SEPARATOR_RE.split(text)
    return [p.strip("\n") for p in pieces if p.strip() and not all(
        ln.strip().startswith("#") or not ln.strip() for ln in p.split("\n"))]


def structured_sections(text: str, fmt: str) -> tuple[list[tuple[str, str]], str]:
    """Parse a YAML/JSON file into [(description, raw text)] per document, plus a summary line for the file.

    Raises AliasBombError / StructuredError for files to skip."""
    if fmt == "json":
        try:
            docs = [json.loads(text)]
        except ValueError as exc:
            raise StructuredError(f"malformed JSON: {exc}") from None
        except RecursionError:
            raise StructuredError("malformed JSON: nesting too deep") from None
        raws = [text.strip("\n")]
    else:
        docs = [d for d in safe_load_all(text) if d is not None]
        raws = split_yaml_documents(text)
        if len(raws) != len(docs):  # separators inside strings, or empty docs: quote the file whole
            raws = [text.strip("\n")]
    if not docs:
        raise EmptyDocumentError(f"no {fmt.upper()} content (comments or empty documents only)")
    descriptions = [describe(d, fmt) for d in docs]
    if len(raws) == 1 and len(descriptions) > 1:
        summary = f"{fmt.upper()} with {len(docs)} documents: " + "; ".join(descriptions)
        return [(summary, raws[0])], summary
    sections = list(zip(descriptions, raws, strict=True))
    summary = descriptions[0] if len(descriptions) == 1 else (
        f"{fmt.upper()} with {len(docs)} documents: " + "; ".join(descriptions))
    return sections, summary
