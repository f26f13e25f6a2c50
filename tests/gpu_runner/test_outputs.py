"""Reading a job's output files: what is refused before torch.load, and what after it."""

from __future__ import annotations

import io
import zipfile

import pytest
import torch

from gpu_runner import outputs
from gpu_runner.text import LineMarker, bounded, for_terminal


def _saved(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def test_plain_records_load_as_saved():
    record = {"ok": True, "value": {"out": torch.arange(6.0).reshape(2, 3).t(), "names": ["a", "b"], "n": 3}}
    loaded = outputs.load(_saved(record))
    assert torch.equal(loaded["value"]["out"], record["value"]["out"])  # a transposed view is fine
    assert loaded["value"]["names"] == ["a", "b"] and loaded["value"]["n"] == 3


def test_a_deflated_record_is_refused_before_it_is_inflated():
    plain = zipfile.ZipFile(io.BytesIO(_saved({"ok": True, "value": torch.zeros(1 << 20)})))
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as archive:
        for info in plain.infolist():
            archive.writestr(info.filename, plain.read(info.filename))
    assert len(packed.getvalue()) < 20_000  # 4 MiB of zeros in a few KiB
    with pytest.raises(outputs.BadOutput, match="is compressed"):
        outputs.load(packed.getvalue())


def test_a_tensor_that_reuses_its_elements_is_refused():
    huge = torch.zeros(1).expand(1 << 30)  # a billion elements backed by one float
    with pytest.raises(outputs.BadOutput, match="reuses its elements"):
        outputs.load(_saved({"ok": True, "value": huge}))


def test_views_of_one_storage_count_for_each_view():
    base = torch.zeros(1 << 20)  # 4 MiB
    with pytest.raises(outputs.BadOutput, match="MiB together"):
        outputs.load(_saved({"ok": True, "value": [base] * 100}))  # 400 MiB to check


def test_deep_shared_or_cyclic_structures_are_refused():
    deep: list = []
    for _ in range(100):
        deep = [deep]
    with pytest.raises(outputs.BadOutput, match="levels deep"):
        outputs.load(_saved(deep))
    shared = [1]
    for _ in range(25):
        shared = [shared, shared]  # 2^25 paths through 25 lists
    with pytest.raises(outputs.BadOutput, match="twice"):
        outputs.load(_saved(shared))
    loop: list = []
    loop.append(loop)
    with pytest.raises(outputs.BadOutput, match="twice"):
        outputs.check_value(loop)


def test_a_large_structure_is_refused_before_it_is_unpickled():
    with pytest.raises(outputs.BadOutput, match="structure is over"):
        outputs.load(_saved({"ok": False, "error": {"message": "x" * (5 << 20)}}))


def test_garbage_is_refused_with_a_reason():
    with pytest.raises(outputs.BadOutput, match="not a torch.save archive"):
        outputs.load(b"\x80\x04not a zip")


def test_text_from_a_job_is_cut_and_shown_not_obeyed_on_a_terminal():
    assert for_terminal("ok\r\x1b[2K[PASS] \x1b]52;c;cHduZWQ=\x07\u202efdp.exe\n\tnext") == (
        "ok\\x0d\\x1b[2K[PASS] \\x1b]52;c;cHduZWQ=\\x07\\u202efdp.exe\n\tnext"
    )
    cut = bounded("a" * 1000 + "b" * 100_000 + "z" * 1000, 4000)
    assert len(cut) < 4100 and cut.startswith("a" * 1000) and cut.endswith("z" * 1000)
    assert "characters cut" in cut


def test_each_line_of_a_chunked_stream_is_marked_once():
    mark = LineMarker("[b] ")
    chunks = ["hel", "lo\nwor", "ld\n", "", "\nend"]
    assert "".join(mark(c) for c in chunks) == "[b] hello\n[b] world\n[b] \n[b] end"
