"""Keep what a submission's C++/CUDA extension compiled to, so the same sources never compile twice.

Labs like ``cuda_matmul`` build an extension with ``torch.utils.cpp_extension.load_inline`` when
the student's module is imported: 40 s of g++ on two cores for one small file, because it parses
all of ``torch/extension.h``. Every job points ``TORCH_EXTENSIONS_DIR`` at ``.torch_extensions``
in its job folder. Before the job, the worker restores that folder from the cache entry for the
submission's *sources*; after it, if the job built something, the folder is stored back under
that key. torch's own up-to-date check (ninja, over unchanged files with their original times)
then finds nothing to rebuild, and the import takes about a second.

The key is a hash of every module-level string constant in the submission (``CPP_SRC = "..."``,
``CUDA_SRC = "..."``: the sources ``load_inline`` receives), the worker's torch and Python
versions, whether the job has a GPU, and the submission's *owner* (the student). The owner is
there because the cached folder was written by a job in which the student's code ran: it could
plant a different library for those sources, and it must only ever be loaded by that student's
own later jobs. A change to Python code alone keeps the key; a change to any string constant
compiles again.

Trusted code, in the worker. Entries are plain folders under ``AISYS_COMPILE_CACHE``; the least
recently used are removed past ``AISYS_COMPILE_CACHE_MB`` in all.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path

import torch

from gpu_runner import sandbox

EXTENSIONS_DIR = ".torch_extensions"  # in the job folder; TORCH_EXTENSIONS_DIR points here
CACHE_ROOT = Path(os.environ.get("AISYS_COMPILE_CACHE", Path(tempfile.gettempdir()) / "aisys-compile-cache"))
CACHE_LIMIT_BYTES = int(os.environ.get("AISYS_COMPILE_CACHE_MB", "2048")) << 20
MAX_ENTRY_BYTES = 256 << 20
MAX_ENTRY_FILES = 500
# ninja's lock, and anything a killed build left half-written, must not travel to the next job.
SKIPPED_NAMES = {"lock"}
BUILD_MARKERS = ("load_inline", "cpp_extension")


def source_key(files: dict[str, str], *, owner: str, device: str) -> str | None:
    """The cache key of a submission, or None when it builds no extension (or does not parse)."""
    if not any(marker in text for text in files.values() for marker in BUILD_MARKERS):
        return None
    constants = []
    for name in sorted(files):
        try:
            tree = ast.parse(files[name])
        except SyntaxError:
            return None  # the import fails anyway, with Python's own message
        for node in tree.body:
            targets, value = _assignment(node)
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                constants += [[name, target, value.value] for target in targets]
    material = {
        "owner": owner,
        "device": device,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "constants": constants,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def _assignment(node: ast.stmt) -> tuple[list[str], ast.expr | None]:
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)], node.value
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id], node.value
    return [], None


def restore(folder: sandbox.JobFolder, key: str) -> bool:
    """Fill the job's extension folder from the cache entry ``key``; True on a hit."""
    entry = CACHE_ROOT / key
    manifest_path = entry / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    files = []
    for item in manifest.get("files", []):
        relative = Path(str(item.get("path", "")))
        if relative.is_absolute() or ".." in relative.parts:
            return False
        try:
            files.append((relative, (entry / "files" / relative).read_bytes(), int(item["mtime_ns"])))
        except (OSError, KeyError, TypeError, ValueError):  # gone, or written by an older worker
            return False
    folder.write_box_tree(EXTENSIONS_DIR, files)
    os.utime(manifest_path)  # recently used
    return True


def save(folder: sandbox.JobFolder, key: str) -> bool:
    """Store what the job built under ``key``; True if a new entry was written.

    Only a folder holding a built library is kept; links, devices and oversized trees are refused.
    """
    files = _collect(folder)
    if files is None or not any(path.suffix == ".so" for path, _, _ in files):
        return False
    entry = CACHE_ROOT / key
    if (entry / "manifest.json").exists() and _unchanged(entry, files):
        return False
    CACHE_ROOT.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging = Path(tempfile.mkdtemp(prefix=f".{key[:16]}-", dir=CACHE_ROOT))
    try:
        for relative, data, _ in files:
            target = staging / "files" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        # Nanoseconds: ninja compares them with what .ninja_deps recorded, and a time restored even
        # a few ns later than recorded makes it rebuild.
        manifest = {"files": [{"path": str(p), "mtime_ns": m} for p, _, m in files], "saved_at": time.time()}
        (staging / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
        if entry.exists():
            shutil.rmtree(entry, ignore_errors=True)
        staging.rename(entry)  # atomic: another worker process sees all of an entry or none
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        return False
    _evict()
    return True


def _collect(folder: sandbox.JobFolder) -> list[tuple[Path, bytes, int]] | None:
    root = folder.box / EXTENSIONS_DIR
    if not root.is_dir() or root.is_symlink():
        return None
    found, total = [], 0
    for directory, subdirs, names in os.walk(root, followlinks=False):
        subdirs[:] = [d for d in subdirs if not (Path(directory) / d).is_symlink()]
        for name in names:
            path = Path(directory) / name
            info = path.lstat()
            if name in SKIPPED_NAMES or not stat.S_ISREG(info.st_mode):
                continue
            relative = path.relative_to(root)
            total += info.st_size
            if total > MAX_ENTRY_BYTES or len(found) >= MAX_ENTRY_FILES:
                return None
            try:
                data = folder.read_box_file(EXTENSIONS_DIR, *relative.parts, max_bytes=MAX_ENTRY_BYTES)
            except (OSError, sandbox.UnsafeFile):
                return None
            found.append((relative, data, info.st_mtime_ns))
    return found


def _unchanged(entry: Path, files: list[tuple[Path, bytes, int]]) -> bool:
    for relative, data, _ in files:
        try:
            if (entry / "files" / relative).read_bytes() != data:
                return False
        except OSError:
            return False
    return True


def _evict() -> None:
    """Remove the least recently used entries until the cache fits its limit."""
    entries = []
    for entry in CACHE_ROOT.iterdir():
        manifest = entry / "manifest.json"
        if entry.name.startswith(".") or not manifest.exists():
            continue
        size = sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
        entries.append((manifest.stat().st_mtime, size, entry))
    total = sum(size for _, size, _ in entries)
    for _, size, entry in sorted(entries):
        if total <= CACHE_LIMIT_BYTES:
            break
        shutil.rmtree(entry, ignore_errors=True)
        total -= size
