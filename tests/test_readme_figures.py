"""The README's plugin-host figures come from one bench run (bench/reference/bench_host.json)."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_readme_block_is_the_reference_run_rendered():
    tool = runpy.run_path(str(REPO / "tools" / "readme_bench.py"))
    data = json.loads((REPO / "bench" / "reference" / "bench_host.json").read_text())
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert tool["readme_block"](readme) == tool["render"](data)


def test_missed_targets_are_said_to_be_missed():
    tool = runpy.run_path(str(REPO / "tools" / "readme_bench.py"))
    data = json.loads((REPO / "bench" / "reference" / "bench_host.json").read_text())
    data["targets"] = [dict(data["targets"][0], verdict="FAIL", measured=9.0)]
    assert "missed in this run: " + data["targets"][0]["target"] in tool["render"](data)
