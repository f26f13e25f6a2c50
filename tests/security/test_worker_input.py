"""Whatever a job writes is hostile input to the worker (docs/security.md, invariant 5).

Each submission below attacks the trusted worker through what it sends back (its event channel,
its output records, its error messages, its job folder) rather than the sandbox. Each must get a
verdict of its own, quickly and with bounded text, and the ``worker`` fixture then checks that the
same worker process grades a correct submission normally.
"""

from __future__ import annotations

import json


def test_a_flood_of_timing_requests_that_never_reads_the_replies_ends_at_the_wall_time(worker):
    # The worker answers each bench_begin on the job's stdin. It used to write the answers with a
    # blocking write in the loop that enforces the wall time: this job hung the worker forever.
    graded = worker.grade(
        """
import json, os
fd = int(os.environ["AISYS_EVENT_FD"])
line = (json.dumps({"type": "bench_begin", "label": "flood"}) + "\\n").encode() * 1000

def double(x):
    while True:
        os.write(fd, line)
""",
        timeout=60,
    )
    assert (graded.verdict, graded.reason) == ("timed_out", "time_limit"), graded.summary


def test_compressed_and_self_repeating_outputs_are_refused_before_they_are_expanded(worker):
    graded = worker.grade(
        """
import io, os, zipfile, torch

def save(value, path):
    plain = io.BytesIO()
    original_save(value, plain)
    return plain.getvalue()

original_save = torch.save
bomb = zipfile.ZipFile(io.BytesIO(save({"ok": True, "value": torch.zeros(1 << 24)}, None)))
with zipfile.ZipFile("_outputs/0.pt", "w", zipfile.ZIP_DEFLATED) as packed:  # 64 MiB of zeros, deflated
    for info in bomb.infolist():
        packed.writestr(info.filename, bomb.read(info.filename))
with open("_outputs/1.pt", "wb") as f:  # a billion floats backed by one
    f.write(save({"ok": True, "value": torch.zeros(1).expand(1 << 30)}, None))
torch.save = lambda *args, **kwargs: None  # keep the harness from overwriting them

def double(x):
    return x * 2
"""
    )
    assert graded.verdict == "failed", graded.summary
    assert "is compressed" in graded.tests["double_0"]["message"]
    assert "reuses its elements" in graded.tests["double_1"]["message"]


def test_an_enormous_error_message_is_cut_before_it_is_stored_or_shown(worker):
    graded = worker.grade(
        """
import torch
original_save = torch.save

def save(record, path, *args, **kwargs):
    if not record.get("ok"):
        record = {"ok": False, "error": {"type": "X" * 100_000, "message": "m" * 1_500_000,
                                        "traceback": "t" * 1_500_000, "forbidden": "", "errno": None}}
    original_save(record, path, *args, **kwargs)

torch.save = save

def double(x):
    raise ValueError("wrong")
"""
    )
    assert graded.verdict == "failed", graded.summary
    for name in ("double_0", "double_1", "double_2"):
        assert 1000 < len(graded.tests[name]["message"]) < 5000, len(graded.tests[name]["message"])
    assert len(json.dumps([e["data"] for e in graded.events])) < 100_000


def test_a_compiler_error_of_slashes_is_parsed_in_linear_time(worker):
    # The compiler-message parser backtracked quadratically on a long run of slashes: 140 s of the
    # worker's CPU for this job. It now gets its verdict like any import error.
    graded = worker.grade(
        """
import torch
original_save = torch.save

def save(record, path, *args, **kwargs):  # the harness cuts messages to 8 KB: write past that
    record["error"]["message"] = "Error building extension 'x': " + "/" * 3_000_000 + "main.cpp:1:1: error: no"
    original_save(record, path, *args, **kwargs)

torch.save = save
raise RuntimeError("a failed build")
""",
        timeout=60,
    )
    assert (graded.verdict, graded.reason) == ("failed", "compile_error"), graded.summary
    assert len(graded.summary) < 10_000


def test_a_nested_event_line_and_a_deep_folder_chain_do_not_break_the_worker(worker):
    # A JSON line nested deeper than Python's recursion limit used to raise RecursionError in the
    # worker's event loop, and a 3,000-deep folder chain made removing the job folder raise it:
    # both ended a passing job as an infrastructure error, retried and never recorded.
    graded = worker.grade(
        """
import os
fd = int(os.environ["AISYS_EVENT_FD"])
os.write(fd, b"[" * 2000 + b"]" * 2000 + b"\\n")
os.write(fd, b"{" * 4000 + b"\\n")
top = os.open(".", os.O_RDONLY)
for _ in range(3000):
    os.mkdir("d", dir_fd=top)
    child = os.open("d", os.O_RDONLY, dir_fd=top)
    os.close(top)
    top = child

def double(x):
    return x * 2
"""
    )
    assert (graded.verdict, graded.score) == ("succeeded", 100.0), graded.summary


def test_the_sandbox_init_command_line_shows_no_host_path(worker):
    graded = worker.grade(
        """
import glob
seen = []
for path in glob.glob("/proc/[0-9]*/cmdline"):
    try:
        seen.append(open(path, "rb").read().replace(b"\\0", b" ").decode(errors="replace"))
    except OSError:
        pass

def double(x):
    raise ValueError(" | ".join(seen))
"""
    )
    message = graded.tests["double_0"]["message"]
    assert "bwrap --args" in message, message  # the sandbox's pid 1: bwrap, its options behind a descriptor
    assert "aisys-job-" not in message and "--ro-bind" not in message and "/.venv" not in message, message
