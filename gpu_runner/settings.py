"""The grading worker's settings: every environment variable the worker side reads, read here once.

A grading node is configured by its environment (docker-compose.yml, a systemd unit). Reading it
in one place means one list of knobs (README's configuration table), one set of defaults and one
error message per bad value, instead of ``os.environ.get`` scattered over a dozen modules.
``current()`` is read on first use and cached; tests that change the environment call
``current.cache_clear()``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ALLOW_UNSANDBOXED = "AISYS_ALLOW_UNSANDBOXED"
CGROUP_MODES = ("auto", "v2", "v1", "none")


class SettingsError(ValueError):
    """An environment variable of the worker has a value it cannot use; the message names it."""


@dataclass(frozen=True)
class WorkerSettings:
    redis_url: str
    portal_queue: str  # where results and self-check reports go
    sandbox_uid: int  # the uid (and gid) a job runs as, outside its namespaces too when root
    sandbox_gid: int
    cgroups: str  # auto | v2 | v1 | none
    cgroup_parent: Path | None  # a delegated cgroup v2 directory for the jobs' cgroups
    bwrap: str  # the bubblewrap binary, a name on PATH or a path
    allow_unsandboxed: bool  # development only: run jobs without bubblewrap
    gpu: int | None  # this worker's GPU index, when it has several
    compile_cache_dir: Path
    compile_cache_bytes: int  # the whole cache
    compile_cache_owner_bytes: int  # one student's builds (their oldest are evicted first)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> WorkerSettings:
        def integer(name: str, default: int, *, low: int = 0) -> int:
            raw = environ.get(name, "")
            if raw == "":
                return default
            try:
                value = int(raw)
            except ValueError:
                raise SettingsError(f"{name}={raw!r} is not a whole number") from None
            if value < low:
                raise SettingsError(f"{name}={value} must be at least {low}")
            return value

        uid = integer("AISYS_SANDBOX_UID", 65534, low=1)
        cgroups = environ.get("AISYS_CGROUPS", "auto") or "auto"
        if cgroups not in CGROUP_MODES:
            raise SettingsError(f"AISYS_CGROUPS={cgroups!r} must be one of {', '.join(CGROUP_MODES)}")
        gpu = environ.get("AISYS_GPU", "")
        return cls(
            redis_url=environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
            portal_queue=environ.get("AISYS_PORTAL_QUEUE", "portal") or "portal",
            sandbox_uid=uid,
            sandbox_gid=integer("AISYS_SANDBOX_GID", uid, low=1),
            cgroups=cgroups,
            cgroup_parent=Path(environ["AISYS_CGROUP_PARENT"]) if environ.get("AISYS_CGROUP_PARENT") else None,
            bwrap=environ.get("AISYS_BWRAP", "bwrap") or "bwrap",
            allow_unsandboxed=environ.get(ALLOW_UNSANDBOXED) == "1",
            gpu=integer("AISYS_GPU", 0) if gpu else None,
            compile_cache_dir=Path(
                environ.get("AISYS_COMPILE_CACHE") or Path(tempfile.gettempdir()) / "aisys-compile-cache"
            ),
            compile_cache_bytes=integer("AISYS_COMPILE_CACHE_MB", 2048, low=1) << 20,
            compile_cache_owner_bytes=integer("AISYS_COMPILE_CACHE_STUDENT_MB", 256, low=1) << 20,
        )


@cache
def current() -> WorkerSettings:
    return WorkerSettings.from_environ(os.environ)
