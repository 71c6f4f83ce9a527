"""Shared fixtures: where the shared corpus lives, a repo-root working directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("CNCF_CORPUS", REPO_ROOT.parent / "shared" / "corpus")).resolve()


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The real development corpus (../shared/corpus), read in place and never copied into the project."""
    if not (CORPUS / "repos").is_dir():
        message = f"shared corpus not found at {CORPUS} (set CNCF_CORPUS)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI always has it: a missing corpus there is a broken setup, not a skip
        pytest.skip(message)
    return CORPUS


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama + corpus-trained BPE tokenizer, built once per test session (~seconds)."""
    from tests.fakes.tiny_model import build_tiny_model, corpus_text

    corpus_repos = CORPUS / "repos" / "prometheus__docs"
    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"), corpus_text(corpus_repos))


@pytest.fixture(scope="module")
def gradio_safe_abc():
    """Importing scrapy (tests/test_scrape_web.py, collected in the same process) leaves a zope.interface
    `__provides__` descriptor on abc.ABC; gradio's Component.__init__ reads every attribute named by dir() of its
    class and trips over it. The app never imports scrapy; the tests that build it take this declaration away
    while they run and put it back."""
    import abc

    saved = abc.ABC.__dict__.get("__provides__")
    if saved is not None:
        delattr(abc.ABC, "__provides__")
    yield
    if saved is not None:
        abc.ABC.__provides__ = saved
