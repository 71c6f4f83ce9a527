"""The pinned params.yaml, for tests that need a complete (valid) section with a few values changed.

Every param is required by its stage's schema (stages/common/schema.py): a test writes the pinned values plus its
overrides instead of a partial section.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

REPO_PARAMS: dict[str, Any] = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text("utf-8"))
DECONTAM_NGRAM: int = REPO_PARAMS["merge"]["decontam_ngram"]  # eval marks items contaminated by merge's n-gram


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else copy.deepcopy(value)
    return out


def pinned(section: str, **overrides: Any) -> dict[str, Any]:
    """One section of params.yaml with `overrides` merged over it."""
    return deep_merge(REPO_PARAMS[section], overrides)


def params_file(**sections: dict[str, Any]) -> dict[str, Any]:
    """The whole params.yaml with each given section's values merged over the pinned ones."""
    return deep_merge(REPO_PARAMS, sections)


def inference_settings(**overrides: Any) -> Any:
    """The inference core's settings as the pinned params.yaml gives them, with `overrides` (field: value).
    fp32 unless a test asks for bf16: a tiny model's greedy tokens must not depend on the CPU's bf16 support."""
    import dataclasses

    from stages.common.inference import InferenceSettings

    return dataclasses.replace(InferenceSettings.from_params(REPO_PARAMS), **{"autocast": "none", **overrides})


def hpo_params(**values: Any) -> Any:
    """A validated `hpo:` section: the pinned one with `values` replacing whole keys (a test's own `space`)."""
    from stages.common.schema import HpoParams

    return HpoParams.model_validate({**REPO_PARAMS["hpo"], **values})


def broken(section: str, dotted: str, value: object) -> dict[str, Any]:
    """The pinned params with one value of `section` changed; `value` may be ("DELETE",), ("RENAME", new_key) or
    ("ADD", value). hpo.space keys hold dots (`space.train.lr` is one key under space), so they split once."""
    params = copy.deepcopy(REPO_PARAMS)
    if section == "hpo" and dotted.startswith("space."):
        parents, leaf = ["space"], dotted.removeprefix("space.")
    else:
        *parents, leaf = dotted.split(".")
    node = params[section]
    for part in parents:
        node = node[part]
    if isinstance(value, tuple) and value[0] == "DELETE":
        del node[leaf]
    elif isinstance(value, tuple) and value[0] == "RENAME":
        node[value[1]] = node.pop(leaf)
    elif isinstance(value, tuple) and value[0] == "ADD":
        node[leaf] = value[1]
    else:
        node[leaf] = value
    return params
