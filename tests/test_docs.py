"""The docs name real things: every path, link, module and function they point at exists.

The README is the front door (at most ~300 lines) and links every page of docs/; the pages name
modules and functions of a package whose files move. These tests fail when a move leaves a page
pointing at nothing. (That docs/configs.md lists every config key with its default is
tests/test_config.py's job.)
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
IDS = [str(p.relative_to(REPO)) for p in PAGES]

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
# A path into the repository, as pages write it (`configs/best.yaml`, `fmnist_mlp/nn/layers.py`).
REPO_PATH = re.compile(r"(?<![\w/.-])((?:fmnist_mlp|configs|sweeps|scripts|benchmarks|tests|docs)/[\w./-]*\w)")
PLACEHOLDER = re.compile(r"[A-Z]{3,}")        # configs/NAME.yaml
FILE_NAME = re.compile(r"\.(?:ya?ml|jsonl?|npz|png|md|log|onnx|safetensors|txt|sh|lock)$")   # config.yaml
IDENTIFIER = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*(?:\(\))?$")


def _prose(text: str) -> str:
    return FENCE.sub("", text)


def _links(text: str) -> list[str]:
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", _prose(text))
            if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces become hyphens."""
    slugs = set()
    for heading in re.findall(r"^#+ (.+)$", _prose(page.read_text(encoding="utf-8")), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        slugs.add(slug)
    return slugs


def test_the_readme_is_a_front_door_not_a_manual():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= 320, f"README.md has {lines} lines: move reference material into docs/"


def test_the_readme_links_every_docs_page():
    linked = {(README.parent / t.split("#")[0]).resolve() for t in _links(README.read_text(encoding="utf-8"))}
    missing = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert missing == []


def test_the_readme_keeps_the_two_commands_ci_runs():
    text = README.read_text(encoding="utf-8")
    assert "make train" in text and "make test" in text
    assert "make test" in (REPO / ".ci" / "run").read_text(encoding="utf-8")


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_every_relative_link_resolves(page):
    broken = []
    for target in _links(page.read_text(encoding="utf-8")):
        path, _, anchor = target.partition("#")
        resolved = page.parent / path
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(target)
    assert broken == []


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_every_repository_path_named_exists(page):
    text = page.read_text(encoding="utf-8")
    named = {m for m in REPO_PATH.findall(text) if not PLACEHOLDER.search(m)}
    # A module named by its path inside the package (`nn/layers.py`, `cli.py`).
    named |= {f"fmnist_mlp/{t}" for t in re.findall(r"`([\w/]+\.py)`", _prose(text))
              if not (REPO / t).exists()}
    missing = sorted(p for p in named if not (REPO / p).exists())
    assert missing == []


def _blocks(text: str) -> list[str]:
    """A page's table rows, list items and paragraphs, each as one string."""
    blocks, current = [], []
    for line in text.splitlines():
        starts_one = line.startswith("|") or re.match(r"\s*(?:\d+\.|[-*]) ", line)
        if not line.strip() or starts_one:
            blocks.append(" ".join(current))
            current = []
        if line.strip():
            current.append(line)
        if line.startswith("|"):
            blocks.append(line)
            current = []
    blocks.append(" ".join(current))
    return [b for b in blocks if b]


def _named_definitions(page: Path):
    """(module path, name) for each "`path.py`: `name`, `name`" a page writes, in prose or tables."""
    for block in _blocks(_prose(page.read_text(encoding="utf-8"))):
        for segment in re.split(r"[;|]", block):
            module = None               # names after a `path.py` in a segment belong to it
            for token in re.findall(r"`([^`]+)`", segment):
                if token.endswith(".py"):
                    module = token if (REPO / token).exists() else f"fmnist_mlp/{token}"
                    if module.startswith(("tests/", "benchmarks/")):
                        module = None
                elif module and IDENTIFIER.match(token) and not FILE_NAME.search(token):
                    yield module, token.removesuffix("()").rsplit(".", 1)[-1]


@pytest.mark.parametrize("name", ["reading-path.md", "package-map.md"])
def test_every_function_the_reading_paths_name_is_defined_where_they_say(name):
    page = REPO / "docs" / name
    pairs = list(_named_definitions(page))
    assert pairs, f"{name} names no `module.py`: `function`"
    missing = []
    for module, ident in pairs:
        source = (REPO / module).read_text(encoding="utf-8") if (REPO / module).exists() else ""
        if not re.search(rf"^\s*(?:def|class)\s+{ident}\b|^{ident}\s*[:=]", source, re.M):
            missing.append(f"{module}: {ident}")
    assert missing == []


def _python_names(text: str):
    """Dotted `fmnist_mlp.…` names, and `from fmnist_mlp.… import a, b` in code blocks."""
    yield from re.findall(r"`(fmnist_mlp(?:\.\w+)+)", text)
    for module, names in re.findall(r"^from (fmnist_mlp[\w.]*) import ([\w, ]+)$", text, re.M):
        yield from (f"{module}.{n.strip()}" for n in names.split(","))


def _resolve(dotted: str):
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_every_python_name_the_docs_use_imports(page):
    missing = []
    for dotted in sorted(set(_python_names(page.read_text(encoding="utf-8")))):
        try:
            _resolve(dotted)
        except (ImportError, AttributeError):
            missing.append(dotted)
    assert missing == []
