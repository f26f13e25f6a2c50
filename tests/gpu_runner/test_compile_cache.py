"""The compile cache of load_inline builds, and the compile-error verdict's message.

The real compile (40 s of g++) is exercised by ``lab check`` on cuda_matmul, whose wrong
solutions share the correct one's sources and so must hit the cache; these tests cover the key,
the round trip of a build folder through a real job folder, and what is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gpu_runner import compile_cache, sandbox, settings
from gpu_runner.grading import compiler_errors
from gpu_runner.jobfolder import JobFolder

SOURCE = 'from torch.utils.cpp_extension import load_inline\nCPP_SRC = "int f() { return 1; }"\n'


def test_the_key_follows_the_sources_and_the_owner_not_the_python_around_them():
    key = compile_cache.source_key({"ext.py": SOURCE}, owner="user-1", device="cpu")
    assert key and len(key) == 64
    same_sources = SOURCE + "\ndef matmul(a, b):\n    return None  # Python changes keep the build\n"
    assert compile_cache.source_key({"ext.py": same_sources}, owner="user-1", device="cpu") == key
    assert compile_cache.source_key({"ext.py": SOURCE.replace("1;", "2;")}, owner="user-1", device="cpu") != key
    assert compile_cache.source_key({"ext.py": SOURCE}, owner="user-2", device="cpu") != key
    assert compile_cache.source_key({"ext.py": SOURCE}, owner="user-1", device="cuda") != key
    assert compile_cache.source_key({"ext.py": SOURCE + "def (:\n"}, owner="user-1", device="cpu") is None


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    settings.current.cache_clear()
    monkeypatch.setenv("AISYS_COMPILE_CACHE", str(tmp_path / "cache"))
    yield tmp_path / "cache"
    monkeypatch.undo()
    settings.current.cache_clear()


def _job_folder(name: str) -> JobFolder:
    return sandbox.create_job_folder(name, config=sandbox.config(), disk_mb=64)


def _build(folder: JobFolder, name: str = "my_ext") -> Path:
    """What torch leaves after a build: sources, objects, ninja's log, the library, its lock."""
    ext = folder.box / compile_cache.EXTENSIONS_DIR / name
    ext.mkdir(parents=True)
    for item, data in (("main.cpp", b"int f();"), ("main.o", b"\x7fELF-object"), (".ninja_log", b"# ninja log v5")):
        (ext / item).write_bytes(data)
    (ext / f"{name}.so").write_bytes(b"\x7fELF-library")
    (ext / "lock").write_bytes(b"")
    os.utime(ext / "main.cpp", ns=(1_795_285_098_622_148_961,) * 2)  # ninja compares nanoseconds
    return ext


def test_a_build_is_saved_and_restored_with_its_times_and_without_its_lock(cache_root):
    first = _job_folder("cc1")
    try:
        _build(first)
        assert compile_cache.save(first, "k" * 64, owner="alice")
        assert not compile_cache.save(first, "k" * 64, owner="alice")  # unchanged: nothing new to write
    finally:
        first.remove()
    second = _job_folder("cc2")
    try:
        assert compile_cache.restore(second, "k" * 64)
        ext = second.box / compile_cache.EXTENSIONS_DIR / "my_ext"
        assert (ext / "my_ext.so").read_bytes() == b"\x7fELF-library"
        assert (ext / "main.cpp").stat().st_mtime_ns == 1_795_285_098_622_148_961  # ninja sees it up to date
        assert not (ext / "lock").exists()  # a stale lock would make the next build wait forever
        if second.owner:
            assert (ext / "main.o").stat().st_uid == second.owner[0]  # the job may rebuild over it
        assert not compile_cache.restore(second, "m" * 64)  # a miss leaves nothing
    finally:
        second.remove()


def test_a_folder_without_a_library_or_with_links_is_not_cached(cache_root, tmp_path):
    folder = _job_folder("cc3")
    try:
        ext = _build(folder)
        (ext / "my_ext.so").unlink()
        assert not compile_cache.save(folder, "a" * 64, owner="alice")  # a failed build: nothing to keep
        (ext / "my_ext.so").symlink_to("/etc/passwd")
        assert not compile_cache.save(folder, "a" * 64, owner="alice")  # the link is skipped: still no library
        assert not (cache_root / ("a" * 64)).exists()
    finally:
        folder.remove()


def test_only_declared_products_two_levels_down_are_kept(cache_root):
    folder = _job_folder("cc-junk")
    try:
        ext = _build(folder)
        (ext / "payload.bin").write_bytes(b"x" * 1000)  # not a build product
        deep = ext
        for _ in range(50):
            deep = deep / "d"
        deep.mkdir(parents=True)
        (deep / "hidden.so").write_bytes(b"deep")  # a library, but not where torch puts one
        (folder.box / compile_cache.EXTENSIONS_DIR / "stray.so").write_bytes(b"top level")
        assert compile_cache.save(folder, "j" * 64, owner="alice")
        manifest = json.loads((cache_root / ("j" * 64) / "manifest.json").read_text())
        assert sorted(item["path"] for item in manifest["files"]) == [
            "my_ext/.ninja_log",
            "my_ext/main.cpp",
            "my_ext/main.o",
            "my_ext/my_ext.so",
        ]
    finally:
        folder.remove()


def _save_entry(key: str, *, owner: str, size: int, used_at: float) -> None:
    folder = _job_folder(f"cc-{key[:4]}")
    try:
        ext = _build(folder)
        (ext / "my_ext.so").write_bytes(b"x" * size)
        assert compile_cache.save(folder, key, owner=owner)
        os.utime(compile_cache.cache_root() / key / "manifest.json", (used_at, used_at))
    finally:
        folder.remove()


def test_least_recently_used_entries_go_first_past_the_limit(cache_root, monkeypatch):
    monkeypatch.setenv("AISYS_COMPILE_CACHE_MB", "1")
    settings.current.cache_clear()
    _save_entry("old" * 21 + "k", owner="alice", size=600_000, used_at=1)
    _save_entry("new" * 21 + "k", owner="bob", size=600_000, used_at=2)  # 1.2 MB > 1 MiB: the older goes
    assert not (cache_root / ("old" * 21 + "k")).exists() and (cache_root / ("new" * 21 + "k")).exists()


def test_one_student_cannot_evict_everyone_elses_builds(cache_root, monkeypatch):
    monkeypatch.setenv("AISYS_COMPILE_CACHE_STUDENT_MB", "1")
    settings.current.cache_clear()
    _save_entry("bob" * 21 + "k", owner="bob", size=400_000, used_at=1)  # oldest of all
    for index in range(4):  # mallory fills 1.6 MB, over her 1 MiB share
        _save_entry(f"m{index}" * 32, owner="mallory", size=400_000, used_at=10 + index)
    kept = sorted(p.name for p in cache_root.iterdir())
    assert "bob" * 21 + "k" in kept  # bob's build survives, although it is the least recently used
    assert [k for k in kept if k.startswith("m")] == ["m2" * 32, "m3" * 32]  # mallory's oldest went


TORCH_BUILD_ERROR = (
    "Error building extension 'bad_ext': [1/2] c++ -MMD -MF main.o.d -DTORCH_EXTENSION_NAME=bad_ext "
    "-isystem /venv/torch/include -fPIC -std=c++20 -c /job/.torch_extensions/bad_ext/main.cpp -o main.o \n"
    "FAILED: main.o \n"
    "c++ -MMD -MF main.o.d -DTORCH_EXTENSION_NAME=bad_ext -fPIC -std=c++20 -c "
    "/job/.torch_extensions/bad_ext/main.cpp -o main.o \n"
    "/job/.torch_extensions/bad_ext/main.cpp: In function 'at::Tensor f(at::Tensor)':\n"
    "/job/.torch_extensions/bad_ext/main.cpp:2:47: error: 'undefined_name' was not declared in this scope\n"
    "    2 | torch::Tensor f(torch::Tensor a) { return a + undefined_name; }\n"
    "      |                                               ^~~~~~~~~~~~~~\n"
    "ninja: build stopped: subcommand failed.\n"
)


def test_compiler_errors_keep_the_error_lines_and_drop_commands_and_paths():
    text = compiler_errors(TORCH_BUILD_ERROR)
    assert text.splitlines()[1] == "main.cpp:2:47: error: 'undefined_name' was not declared in this scope"
    assert "return a + undefined_name" in text and "^~~~" in text
    assert "-MMD" not in text and "/job/" not in text and "ninja" not in text
    assert compiler_errors("ModuleNotFoundError: No module named 'x'") == ""
