"""The sandbox's configuration and its fallbacks, on this machine's real bubblewrap and cgroups.

The attacks themselves are in tests/security/; this file checks how the worker chooses and sets
up the confinement: refusing without bubblewrap, the development escape hatch, cgroups versus
rlimits, the bwrap command line, GPU device nodes and the job folder's link-proof file access.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from gpu_runner import cgroups as cgroups_module
from gpu_runner import sandbox, settings
from gpu_runner.cgroups import detect_cgroups
from gpu_runner.jobfolder import UnsafeFile, remove_tree
from tests.gpu_runner.conftest import grade_source

REPO = Path(__file__).resolve().parents[2]
CORRECT = """
    def double(x):
        return x * 2
"""


@pytest.fixture
def fresh_config(monkeypatch):
    """Let a test change the worker's environment before the sandbox configuration is read."""
    sandbox.config.cache_clear()
    settings.current.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    sandbox.config.cache_clear()
    settings.current.cache_clear()


def test_worker_refuses_untrusted_code_without_bubblewrap_and_says_how_to_install_it(fresh_config):
    fresh_config.setenv("AISYS_BWRAP", "/nonexistent/bwrap")
    fresh_config.delenv(sandbox.ALLOW_UNSANDBOXED, raising=False)
    result, _ = grade_source(CORRECT)
    assert (result["verdict"], result["reason"]) == ("error", "infrastructure")
    assert "refuses to run untrusted code" in result["detail"]
    assert "apt-get install bubblewrap" in result["detail"]


def test_development_setting_runs_unsandboxed_and_logs_it_loudly(fresh_config, caplog):
    fresh_config.setenv("AISYS_BWRAP", "/nonexistent/bwrap")
    fresh_config.setenv(sandbox.ALLOW_UNSANDBOXED, "1")
    with caplog.at_level(logging.WARNING, logger="gpu_runner.sandbox"):
        result, _ = grade_source(CORRECT)
    assert result["verdict"] == "succeeded"
    assert "UNSANDBOXED" in caplog.text and "Never run real students' code" in caplog.text


def test_this_worker_limits_memory_and_processes_with_cgroups():
    cgroups = detect_cgroups()
    assert cgroups.version in (1, 2), cgroups.note
    assert cgroups.memory_parent is not None and cgroups.pids_parent is not None, cgroups.note


def test_job_cgroups_are_removed_after_the_job():
    cgroups = sandbox.config().cgroups
    result, _ = grade_source(CORRECT)
    assert result["verdict"] == "succeeded"
    mine = f"-p{os.getpid()}-"  # this process's jobs: other workers on the machine have their own
    for parent in {cgroups.memory_parent, cgroups.pids_parent}:
        assert not [p.name for p in parent.iterdir() if p.name.startswith("aisys-") and mine in p.name]


def test_rlimits_alone_still_stop_a_memory_bomb(fresh_config):
    fresh_config.setenv("AISYS_CGROUPS", "none")
    assert sandbox.config().cgroups.version == 0
    result, _ = grade_source(
        """
        hog = []
        def double(x):
            while True:
                hog.append(b"x" * (64 << 20))
        """,
        limits={"memory_mb": 1024},
    )
    assert (result["verdict"], result["reason"]) == ("failed", "memory_limit"), result["summary"]
    assert "more than 1024 MiB" in result["summary"]


def test_rlimits_alone_still_stop_a_fork_bomb(fresh_config):
    fresh_config.setenv("AISYS_CGROUPS", "none")
    result, _ = grade_source(
        """
        import os
        def double(x):
            children = 0
            while True:
                if os.fork() == 0:
                    import time
                    time.sleep(30)
                children += 1
        """,
        limits={"processes": 16},
    )
    assert result["verdict"] == "failed"
    assert "Resource temporarily unavailable" in result["tests"][0]["message"]


def test_bwrap_command_line_isolates_everything_and_hides_the_project():
    cfg = sandbox.config()
    folder = sandbox.create_job_folder("argv", config=cfg, disk_mb=8)
    try:
        argv = sandbox.bwrap_argv(cfg, folder, ["python"], gpus=())
    finally:
        folder.remove()
    pairs = list(zip(argv, argv[1:], strict=False))
    for flag in ("--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session"):
        assert flag in argv
    assert ("--cap-drop", "ALL") in pairs and ("--remount-ro", "/") in pairs and ("--chdir", "/job") in pairs
    assert argv[argv.index("--bind") + 1 : argv.index("--bind") + 3] == [str(folder.box), "/job"]
    binds = [argv[i + 1 : i + 3] for i, arg in enumerate(argv) if arg in ("--bind", "--ro-bind", "--dev-bind")]
    for source, destination in binds:
        assert not destination.startswith(str(REPO)), f"{source} is visible at {destination}"
        if source.startswith(str(REPO)):
            assert source == sys.prefix, f"{source} is bound into the sandbox"
    assert "/etc/shadow" not in argv and "--share-net" not in argv


def test_a_gpu_job_gets_only_its_own_device_nodes(tmp_path):
    for name in ("nvidia0", "nvidia1", "nvidia2", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"):
        (tmp_path / name).touch()
    nodes = sandbox.gpu_device_nodes((1,), dev=str(tmp_path))
    assert [Path(n).name for n in nodes] == ["nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"]
    assert sandbox.gpu_device_nodes((), dev=str(tmp_path)) == []


def test_a_gpu_worker_takes_its_configured_gpu_or_the_only_one_it_can_see(tmp_path, fresh_config):
    fresh_config.delenv("AISYS_GPU", raising=False)
    for name in ("nvidia3", "nvidiactl", "nvidia-uvm"):
        (tmp_path / name).touch()
    assert sandbox.assigned_gpus(dev=str(tmp_path)) == (3,)  # a container given host GPU 3
    (tmp_path / "nvidia5").touch()
    assert sandbox.assigned_gpus(dev=str(tmp_path)) == (0,)
    fresh_config.setenv("AISYS_GPU", "5")
    settings.current.cache_clear()
    assert sandbox.assigned_gpus(dev=str(tmp_path)) == (5,)


def test_job_folder_never_follows_what_the_submission_left_there():
    cfg = sandbox.config()
    folder = sandbox.create_job_folder("links", config=cfg, disk_mb=8)
    try:
        (folder.box / "_outputs").mkdir()
        (folder.box / "_outputs" / "0.pt").symlink_to("/etc/hostname")
        os.mkfifo(folder.box / "_outputs" / "1.pt")
        (folder.box / "_outputs" / "2.pt").write_bytes(b"x" * 2048)
        (folder.box / "_cases.pt").symlink_to(folder.root / "victim")
        with pytest.raises(UnsafeFile, match="is a link"):
            folder.read_box_file("_outputs", "0.pt", max_bytes=1024)
        with pytest.raises(UnsafeFile, match="not a regular file"):
            folder.read_box_file("_outputs", "1.pt", max_bytes=1024)
        with pytest.raises(UnsafeFile, match="over"):
            folder.read_box_file("_outputs", "2.pt", max_bytes=1024)
        with pytest.raises(FileExistsError):
            folder.write_box_file("_cases.pt", b"cases")
        name = folder.write_box_file("_cases.pt", b"cases", unique=True)
        assert name != "_cases.pt" and (folder.box / name).read_bytes() == b"cases"
        assert not (folder.root / "victim").exists()
    finally:
        folder.remove()
    assert not folder.root.exists()


def test_a_tree_thousands_deep_with_locked_folders_is_removed_without_following_links(tmp_path):
    root, outside = tmp_path / "job", tmp_path / "outside.txt"
    outside.write_text("not the job's")
    root.mkdir()
    fd = os.open(root, os.O_RDONLY)
    for depth in range(2500):  # deeper than the recursion limit, and than PATH_MAX in bytes
        os.mkdir("deep-level", dir_fd=fd)
        child = os.open("deep-level", os.O_RDONLY, dir_fd=fd)
        if depth % 500 == 0:
            os.symlink(outside, "link", dir_fd=child)
            os.close(os.open("locked.txt", os.O_CREAT | os.O_WRONLY, 0o000, dir_fd=child))
            os.chmod("deep-level", 0o500, dir_fd=fd)  # no write: its entries cannot be unlinked as is
        os.close(fd)
        fd = child
    os.close(fd)
    assert remove_tree(root)
    assert not root.exists() and outside.read_text() == "not the job's"


def test_a_restarted_worker_sweeps_up_what_a_killed_one_left():
    cfg = sandbox.config()
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive_folder = sandbox.create_job_folder("live", config=cfg, disk_mb=8)
    stale = Path(tempfile.gettempdir()) / f"aisys-job-42-p{dead.pid}-abc123"
    (stale / "box").mkdir(parents=True)
    (stale / "box" / "sol.py").write_text("left behind")
    stale_cgroup = cfg.cgroups.memory_parent / f"aisys-{stale.name}"
    stale_cgroup.mkdir()
    try:
        assert sandbox.sweep_stale(cfg) >= 2
        assert not stale.exists() and not stale_cgroup.exists()
        assert alive_folder.box.is_dir()  # this process's own job is left alone
    finally:
        alive_folder.remove()


@pytest.mark.gpu
def test_a_gpu_job_sees_exactly_one_gpu_and_uses_it():
    result, _ = grade_source(
        """
        def double(x):
            assert x.is_cuda
            return x * 2
        """,
        lab="cuda_echo",
    )
    assert result["verdict"] == "succeeded", (result["summary"], result["tests"], result["output_tail"])


def _counter(tmp_path: Path, cgroup) -> tuple[subprocess.Popen, Path]:
    counter = tmp_path / "count"
    code = f"import itertools\nfor i in itertools.count():\n    open({str(counter)!r}, 'w').write(str(i))\n"
    proc = subprocess.Popen([sys.executable, "-c", code], preexec_fn=cgroup.join_current_process)
    while not counter.exists() or not counter.read_text():
        assert proc.poll() is None
    return proc, counter


def test_a_job_cgroup_freezes_and_thaws_its_processes(tmp_path):
    cgroups = detect_cgroups()
    assert cgroups.freezer_parent is not None, cgroups.note  # v1 freezer here; cgroup.freeze on v2
    cgroup = cgroups.create(f"aisys-freeze-test-p{os.getpid()}", memory_bytes=1 << 30, processes=16)
    try:
        proc, counter = _counter(tmp_path, cgroup)
        assert cgroup.freeze()
        frozen_at = counter.read_text()
        for _ in range(50):  # a frozen process never runs, however long it is left
            subprocess.run(["true"], check=True)
            assert counter.read_text() == frozen_at
        assert cgroup.thaw()
        while counter.read_text() == frozen_at:
            assert proc.poll() is None  # it resumes (the test's timeout bounds the wait)
        assert cgroup.freeze()  # destroy() thaws a frozen job before it kills it
    finally:
        assert cgroup.destroy()
    assert proc.wait() == -9 and not any(d.exists() for d in cgroup.dirs)


def test_a_cgroup_that_cannot_be_removed_yet_is_retried_before_the_next_job():
    cgroups = detect_cgroups()
    cgroup = cgroups.create(f"aisys-leftover-test-p{os.getpid()}", memory_bytes=1 << 30, processes=16)
    blocker = cgroup.dirs[0] / "child"  # a cgroup with a child cannot be removed
    blocker.mkdir()
    try:
        assert not cgroup.destroy()
        assert cgroup in cgroups_module._leftovers and cgroup.dirs[0].exists()
    finally:
        blocker.rmdir()
    assert cgroups_module.retry_leftovers() == 0
    assert not any(d.exists() for d in cgroup.dirs)
