"""The landscape.yml items (members included) with their category paths, and the category names."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from stages.common.cli import StageError
from stages.ner.vocab import CORP_SUFFIX, MEMBERS_CATEGORY, NAME_QUALIFIER, ORG_SUBCATEGORIES


@dataclass
class LandscapeItem:
    """One landscape entry, with the path that places it (an item may sit in several subcategories)."""

    name: str
    canonical: str
    category: str
    subcategory: str
    maturity: str
    repo_url: str
    is_org: bool


def canonical_name(raw: str) -> str:
    """The landscape name without its listing qualifier: "Harbor (Wasm)" -> "Harbor", "IBM (member)" -> "IBM"."""
    name = NAME_QUALIFIER.sub("", raw.strip())
    return CORP_SUFFIX.sub("", name).strip()


def load_landscape(path: str | Path) -> list[LandscapeItem]:
    """Every item of landscape.yml (members included) with its category path; second paths count too."""
    try:
        with Path(path).open(encoding="utf-8") as fh:
            data = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError) as exc:
        raise StageError(f"cannot read landscape file {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("landscape"), list):
        raise StageError(f"{path} is not a landscape.yml (no top-level 'landscape' list)")
    items: list[LandscapeItem] = []
    for cat in data["landscape"]:
        for sub in cat.get("subcategories") or []:
            for raw in sub.get("items") or []:
                if not isinstance(raw, dict) or not raw.get("name"):
                    continue
                is_org = cat.get("name") == MEMBERS_CATEGORY or sub.get("name") in ORG_SUBCATEGORIES
                paths = [(cat.get("name", ""), sub.get("name", ""))]
                for second in raw.get("second_path") or []:
                    if isinstance(second, str) and " / " in second:
                        paths.append(tuple(part.strip() for part in second.split(" / ", 1)))  # type: ignore[arg-type]
                for category, subcategory in paths:
                    items.append(LandscapeItem(
                        name=raw["name"], canonical=canonical_name(raw["name"]), category=category,
                        subcategory=subcategory, maturity=str(raw.get("project") or ""),
                        repo_url=str(raw.get("repo_url") or ""), is_org=is_org))
    return items


def load_categories(items: Iterable[LandscapeItem]) -> list[str]:
    """Category and subcategory names of the software part of the landscape."""
    names = {it.category for it in items if not it.is_org} | {it.subcategory for it in items if not it.is_org}
    return sorted(n for n in names if n and not n.startswith("Certified"))
