"""Keep what a submission's C++/CUDA extension compiled to, so the same sources never compile twice.

Labs like ``cuda_matmul`` (``[build] extensions = true`` in lab.toml) build an extension with
``torch.utils.cpp_extension.load_inline`` when the student's module is imported: 40 s of g++ on
two cores for one small file, because it parses all of ``torch/extension.h``. Every job points
``TORCH_EXTENSIONS_DIR`` at ``.torch_extensions`` in its job folder. Before the job, the worker
restores that folder from the cache entry for the submission's *sources*; after it, if the job
built a library, the build's products are stored back under that key. torch's own up-to-date
check (ninja, over unchanged files with their original times) then finds nothing to rebuild, and
the import takes about a second.

Only what a ``load_inline`` build declares is kept: in each extension's folder
(``.torch_extensions/<name>/``) the files named in ``PRODUCTS``, regular files only, no deeper
folder, at most ``MAX_ENTRY_BYTES`` per entry; anything else the job left there is ignored. The
folder is the job's, so it is listed two levels deep and no further, never walked.

The key is a hash of every module-level string constant in the submission (``CPP_SRC = "..."``,
``CUDA_SRC = "..."``: the sources ``load_inline`` receives), the worker's torch and Python
versions, whether the job has a GPU, and the submission's *owner* (the student). The owner is
there because the cached folder was written by a job in which the student's code ran: it could
plant a different library for those sources, and it must only ever be loaded by that student's
own later jobs. A change to Python code alone keeps the key; a change to any string constant
compiles again.

Trusted code, in the worker. Entries are plain folders under ``AISYS_COMPILE_CACHE``. One
student's entries take at most ``AISYS_COMPILE_CACHE_STUDENT_MB`` (their least recently used go
first), so nobody can evict everyone else's builds; past ``AISYS_COMPILE_CACHE_MB`` in all, the
least recently used entries go, whoever owns them.
"""

from __future__ import annotations

import ast
import fnmatch
import hashlib
import json
import os
import stat
import sys
import tempfile
import time
from pathlib import Path

import torch

from gpu_runner import settings
from gpu_runner.jobfolder import JobFolder, UnsafeFile, remove_tree

EXTENSIONS_DIR = ".torch_extensions"  # in the job folder; TORCH_EXTENSIONS_DIR points here
# What torch.utils.cpp_extension leaves in an extension's folder that a later import needs to find
# the build up to date: ninja's files, the sources it compared, the objects and the library.
# ninja's lock, and anything else, never travels to the next job.
PRODUCTS = ("build.ninja", ".ninja_deps", ".ninja_log", "main.cpp", "cuda.cu", "*.o", "*.so")
MAX_EXTENSIONS = 4  # extension folders per entry
MAX_ENTRY_FILES = 64
MAX_ENTRY_BYTES = 256 << 20


def cache_root() -> Path:
    return settings.current().compile_cache_dir


def source_key(files: dict[str, str], *, owner: str, device: str) -> str | None:
    """The cache key of a submission to a lab that builds extensions, or None when it does not parse."""
    constants = []
    for name in sorted(files):
        try:
            tree = ast.parse(files[name])
        except (SyntaxError, ValueError, RecursionError):
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


def _owner_tag(owner: str) -> str:
    return hashlib.sha256(owner.encode()).hexdigest()[:16]


def restore(folder: JobFolder, key: str) -> bool:
    """Fill the job's extension folder from the cache entry ``key``; True on a hit."""
    entry = cache_root() / key
    manifest_path = entry / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    files = []
    for item in manifest.get("files", []):
        relative = Path(str(item.get("path", "")))
        if len(relative.parts) != 2 or relative.is_absolute() or ".." in relative.parts:
            return False
        try:
            files.append((relative, (entry / "files" / relative).read_bytes(), int(item["mtime_ns"])))
        except (OSError, KeyError, TypeError, ValueError):  # gone, or written by an older worker
            return False
    folder.write_box_tree(EXTENSIONS_DIR, files)
    os.utime(manifest_path)  # recently used
    return True


def save(folder: JobFolder, key: str, *, owner: str) -> bool:
    """Store what the job built under ``key``; True if a new entry was written.

    Only the declared products of a build that made a library are kept.
    """
    files = collect(folder)
    if not any(path.suffix == ".so" for path, _, _ in files):
        return False
    root = cache_root()
    entry = root / key
    if (entry / "manifest.json").exists() and _unchanged(entry, files):
        return False
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging = Path(tempfile.mkdtemp(prefix=f".{key[:16]}-", dir=root))
    try:
        for relative, data, _ in files:
            target = staging / "files" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        # Nanoseconds: ninja compares them with what .ninja_deps recorded, and a time restored even
        # a few ns later than recorded makes it rebuild.
        manifest = {
            "files": [{"path": str(p), "mtime_ns": m} for p, _, m in files],
            "owner": _owner_tag(owner),
            "bytes": sum(len(data) for _, data, _ in files),
            "saved_at": time.time(),
        }
        (staging / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
        if entry.exists():
            remove_tree(entry)
        staging.rename(entry)  # atomic: another worker process sees all of an entry or none
    except OSError:
        remove_tree(staging)
        return False
    evict(keep_owner_under=_owner_tag(owner))
    return True


def collect(folder: JobFolder) -> list[tuple[Path, bytes, int]]:
    """The declared build products in the job's extension folder: (``<ext>/<file>``, bytes, mtime ns).

    Two ``scandir`` levels and the caps above: the job chose what is in there.
    """
    found: list[tuple[Path, bytes, int]] = []
    total = 0
    for ext in _entries(folder.box / EXTENSIONS_DIR)[:MAX_EXTENSIONS]:
        if not ext.is_dir(follow_symlinks=False):
            continue
        for item in _entries(Path(ext.path)):
            if not any(fnmatch.fnmatchcase(item.name, pattern) for pattern in PRODUCTS):
                continue
            try:
                info = item.stat(follow_symlinks=False)
                if not stat.S_ISREG(info.st_mode) or total + info.st_size > MAX_ENTRY_BYTES:
                    continue
                data = folder.read_box_file(EXTENSIONS_DIR, ext.name, item.name, max_bytes=MAX_ENTRY_BYTES)
            except (OSError, UnsafeFile):
                continue
            total += len(data)
            found.append((Path(ext.name) / item.name, data, info.st_mtime_ns))
            if len(found) >= MAX_ENTRY_FILES:
                return found
    return found


def _entries(directory: Path) -> list[os.DirEntry]:
    """At most a few hundred entries of a folder, sorted by name; none if it is not a plain folder."""
    try:
        if directory.is_symlink() or not directory.is_dir():
            return []
        with os.scandir(directory) as listing:
            entries = []
            for entry in listing:
                entries.append(entry)
                if len(entries) >= 4 * MAX_ENTRY_FILES:
                    break
    except OSError:
        return []
    return sorted(entries, key=lambda e: e.name)


def _unchanged(entry: Path, files: list[tuple[Path, bytes, int]]) -> bool:
    for relative, data, _ in files:
        try:
            if (entry / "files" / relative).read_bytes() != data:
                return False
        except OSError:
            return False
    return True


def evict(*, keep_owner_under: str | None = None) -> None:
    """Remove least recently used entries: first ``keep_owner_under``'s past one student's share,
    then anyone's past the whole cache's limit."""
    wanted = settings.current()
    entries = []  # (last used, bytes, owner, folder)
    root = cache_root()
    for entry in root.iterdir() if root.is_dir() else []:
        manifest = entry / "manifest.json"
        if entry.name.startswith("."):
            continue
        try:
            meta = json.loads(manifest.read_text(encoding="utf-8"))
            entries.append((manifest.stat().st_mtime, int(meta.get("bytes", 0)), str(meta.get("owner", "")), entry))
        except (OSError, ValueError, TypeError):
            continue
    entries.sort()
    if keep_owner_under is not None:
        theirs = [e for e in entries if e[2] == keep_owner_under]
        used = sum(size for _, size, _, _ in theirs)
        for item in theirs:
            if used <= wanted.compile_cache_owner_bytes:
                break
            remove_tree(item[3])
            entries.remove(item)
            used -= item[1]
    total = sum(size for _, size, _, _ in entries)
    for _, size, _, entry in entries:
        if total <= wanted.compile_cache_bytes:
            break
        remove_tree(entry)
        total -= size
