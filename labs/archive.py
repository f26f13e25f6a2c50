"""A lab uploaded as a zip: checked for what a zip can smuggle, then unpacked and loaded.

The portal calls this when an instructor uploads a lab (to refuse a bad zip with a message that
says what to fix, before anything is stored), the worker calls it again before it self-checks
the lab, and publishing unpacks it into the uploaded-labs folder. Nothing here imports Django,
and nothing here runs the lab's code (``grader.py`` is parsed, not imported).
"""

from __future__ import annotations

import ast
import io
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from labs.catalog import LabError, LabFolder, load_lab

MAX_ARCHIVE_BYTES = 5 << 20
MAX_UNPACKED_BYTES = 20 << 20
MAX_FILE_BYTES = 4 << 20
MAX_FILES = 300
MAX_DEPTH = 6


def check_archive(data: bytes) -> tuple[zipfile.ZipFile, str]:
    """Open the zip and vet every member; returns it and the folder prefix that holds lab.toml."""
    if len(data) > MAX_ARCHIVE_BYTES:
        raise LabError(f"the zip is {len(data) / 2**20:.1f} MiB; a lab may be at most {MAX_ARCHIVE_BYTES >> 20} MiB")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise LabError(
            f"this is not a readable zip file ({exc}); zip the lab folder, e.g. 'zip -r lab.zip my_lab'"
        ) from None
    files = [m for m in members if not m.is_dir()]
    if len(files) > MAX_FILES:
        raise LabError(f"the zip holds {len(files)} files; a lab may hold at most {MAX_FILES}")
    total = 0
    for member in members:
        name = member.filename
        path = PurePosixPath(name)
        if name.startswith("/") or "\\" in name or ".." in path.parts or (path.parts and ":" in path.parts[0]):
            raise LabError(f"'{name}': paths in the zip must be relative and stay inside the lab folder")
        if len(path.parts) > MAX_DEPTH:
            raise LabError(f"'{name}': folders nest deeper than {MAX_DEPTH} levels")
        mode = member.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise LabError(f"'{name}' is a symbolic link; a lab holds plain files only")
        if member.flag_bits & 0x1:
            raise LabError(f"'{name}' is encrypted; upload an unencrypted zip")
        if member.file_size > MAX_FILE_BYTES:
            raise LabError(
                f"'{name}' is {member.file_size / 2**20:.1f} MiB; files may be at most {MAX_FILE_BYTES >> 20} MiB"
            )
        total += member.file_size
    if total > MAX_UNPACKED_BYTES:
        raise LabError(
            f"the zip unpacks to {total / 2**20:.1f} MiB; a lab may be at most {MAX_UNPACKED_BYTES >> 20} MiB"
        )
    tomls = sorted(m.filename for m in files if PurePosixPath(m.filename).name == "lab.toml")
    top = [t for t in tomls if len(PurePosixPath(t).parts) <= 2]
    if len(top) != 1:
        found = f" (found {', '.join(tomls[:5])})" if tomls else ""
        raise LabError("the zip must hold exactly one lab: lab.toml at its top or in one folder at its top" + found)
    prefix = str(PurePosixPath(top[0]).parent)
    prefix = "" if prefix == "." else prefix + "/"
    outside = [m.filename for m in files if not m.filename.startswith(prefix)]
    if outside:
        raise LabError(f"'{outside[0]}' is outside the lab folder '{prefix.rstrip('/')}'; zip one lab folder only")
    return archive, prefix


def unpack(data: bytes, root: Path) -> LabFolder:
    """Unpack the zip into ``root/<slug>/`` (which must not exist) and load it as a lab."""
    archive, prefix = check_archive(data)
    staging = Path(tempfile.mkdtemp(prefix=".upload-", dir=root))
    try:
        written = 0
        for member in archive.infolist():
            if member.is_dir():
                continue
            relative = member.filename[len(prefix) :]
            target = staging / "lab" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as source, open(target, "wb") as sink:
                chunk = source.read(MAX_FILE_BYTES + 1)  # the sizes in the zip's directory may lie
                written += len(chunk)
                if len(chunk) > MAX_FILE_BYTES or written > MAX_UNPACKED_BYTES:
                    raise LabError(f"'{member.filename}' unpacks to more than its stated size; the zip is refused")
                sink.write(chunk)
        slug = _slug_of(staging / "lab")
        folder = staging / slug
        (staging / "lab").rename(folder)
        lab = load_lab(folder)
        _check_contents(lab)
        final = root / slug
        if final.exists():
            raise LabError(f"{final} already exists")
        folder.rename(final)
        return load_lab(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def validate(data: bytes) -> LabFolder:
    """Check a zip as ``unpack`` would, in a scratch folder that is removed again; returns the lab
    (whose ``path`` no longer exists: use its metadata only)."""
    with tempfile.TemporaryDirectory(prefix="aisys-lab-zip-") as scratch:
        return unpack(data, Path(scratch))


def _functions(lab: LabFolder, name: str) -> set[str]:
    """The names of the top-level functions of ``name`` in the lab folder, parsed, not imported."""
    try:
        tree = ast.parse((lab.path / name).read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError) as exc:
        raise LabError(f"{name} does not parse: {exc}") from None
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


def _slug_of(folder: Path) -> str:
    import tomllib

    try:
        meta = tomllib.loads((folder / "lab.toml").read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise LabError(f"lab.toml: invalid TOML: {exc}") from None
    slug = meta.get("slug")
    if not isinstance(slug, str):
        raise LabError("lab.toml: 'slug' must be a string")
    from labs.catalog import SLUG_RE

    if not SLUG_RE.match(slug):
        raise LabError(f"lab.toml: slug '{slug}' must be lower_snake_case, 2 to 49 characters")
    return slug


def _check_contents(lab: LabFolder) -> None:
    """What load_lab does not check because built-in labs are reviewed in git: the lab is on the lab
    contract v2 (grader.py defines cases() and check(), run.py defines run(), and timed(), with
    call_inputs() in grader.py, when either is there), read, not run; the starter and a correct
    solution are there."""
    grader = _functions(lab, "grader.py")
    if "run" in grader:
        raise LabError(
            "grader.py defines run(): move it into run.py as run(module, inputs, harness) "
            "(lab contract v2, see docs/authoring-labs.md)"
        )
    missing = [f"grader.py: {name}()" for name in ("cases", "check") if name not in grader]
    if not (lab.path / "run.py").is_file():
        missing.append("run.py: run(module, inputs, harness)")
    else:
        run = _functions(lab, "run.py")
        missing += [f"run.py: {name}()" for name in ("run",) if name not in run]
        if ("timed" in run) != ("call_inputs" in grader):
            missing.append("run.py: timed() and grader.py: call_inputs() (a timed case needs both)")
    if missing:
        raise LabError(f"the lab must define {', '.join(missing)} (see docs/authoring-labs.md)")
    if lab.entry not in lab.starter_files():
        raise LabError(f"starter/{lab.entry} is missing: students need a file to start from")
    solutions = lab.solutions()
    if not any(s.kind == "correct" for s in solutions):
        raise LabError("solutions/correct/ is missing: the lab must prove a correct solution gets full marks")
