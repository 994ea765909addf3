"""Each figure is stated once: results live in docs/results.md, and the README's prose and the
config headers link there instead of restating them (restated figures drifted apart: three
times for fast.yaml, two PyTorch ratios, two scores for default.yaml)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# A result: a percentage, a time in seconds or minutes, or a speed ratio ("1.38×").
FIGURE = re.compile(r"\d+(?:\.\d+)?\s?(?:%|s\b|min\b|minutes\b|×(?!\d))|\d+\.\d+x\b")


def _prose(text: str) -> str:
    """Text outside fenced blocks (the tour's transcripts are outputs, not claims)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def test_the_readme_states_no_result_but_links_results_md():
    prose = _prose((REPO / "README.md").read_text(encoding="utf-8"))
    tour = prose.index("## A five-minute tour")
    claims = prose[:tour] + prose[prose.index("## Exit codes"):]
    assert FIGURE.findall(claims) == []
    assert "docs/results.md" in claims


@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_config_headers_link_to_the_results_instead_of_restating_them(config):
    header = "".join(line for line in config.read_text(encoding="utf-8").splitlines(True)
                     if line.startswith("#"))
    assert FIGURE.findall(header) == []


def test_results_md_states_the_disputed_figures_once_and_as_the_configs_hold_them():
    import yaml

    text = (REPO / "docs" / "results.md").read_text(encoding="utf-8")
    assert text.count("7.2–18.2 s") == 1 and "12–15 s" not in text
    assert text.count("**1.38×**") == 1
    weight = yaml.safe_load((REPO / "configs" / "distilled.yaml").read_text())["distill"]["weight"]
    assert weight == 0.3 and "`distilled.yaml` holds 0.3" in text
    assert "went into `configs/distilled.yaml`" not in text
