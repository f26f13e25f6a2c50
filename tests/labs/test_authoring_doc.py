"""The worked example of docs/authoring-labs.md, built from the page and checked like any lab:
the page and the runner cannot drift apart."""

from __future__ import annotations

import re
from pathlib import Path

from gpu_runner.selfcheck import self_check_lab
from labs.catalog import load_lab

DOC = Path(__file__).resolve().parents[2] / "docs" / "authoring-labs.md"
FILE_BLOCK = re.compile(r"^```(\w+) file=(\S+)\n(.*?)^```$", re.M | re.S)


def test_the_worked_example_builds_from_the_page_and_passes_lab_check(tmp_path):
    blocks = FILE_BLOCK.findall(DOC.read_text(encoding="utf-8"))
    written = set()
    for _, name, text in blocks:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.add(name)
    for required in ("lab.toml", "README.md", "grader.py", "run.py", "reference.py", "starter/rms_norm.py"):
        assert f"rms_norm/{required}" in written
    lab = load_lab(tmp_path / "rms_norm")
    assert lab.run_module is not None and lab.reference_module is not None  # the lab contract v2
    problems, reports = self_check_lab(lab)
    assert not problems, problems
    assert [r.as_dict() for r in reports if not r.ok] == []
    assert {r.solution.name: r.result["verdict"] for r in reports} == {
        "starter": "failed",
        "correct": "succeeded",
        "calls_torch": "failed",
        "crashes": "failed",
        "forgets_eps": "failed",
        "hangs": "timed_out",
        "skips_timed_work": "failed",
    }
    correct = next(r for r in reports if r.solution.name == "correct")
    assert correct.result["metric"] > 0 and "separate clean process" in correct.result["tests"][-1]["message"]
