"""Hostile submissions against a real grading worker and its bubblewrap sandbox.

The lab is echo_lab: ``double(x)`` must return ``2 * x``; ``torch.add`` is forbidden. Most probes
follow one pattern: the submission tries an escape at import time and, if any attempt worked,
answers correctly (so the job would pass and the test fail); if every attempt was blocked it
raises ``Blocked`` with what it saw, so the verdict is a failure naming the probe. After each
test the ``worker`` fixture checks that the same worker process grades a correct submission.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import pytest
from django.conf import settings

from tests.conftest import FIXTURE_LABS
from tests.security.conftest import CANARY

REPO = Path(__file__).resolve().parents[2]

# Shared by the probes: collect what happened; pass only if something escaped.
PROBE = """
import os
escaped = []
blocked = []

class Blocked(Exception):
    pass

def attempt(name, fn):
    try:
        value = fn()
    except BaseException as exc:
        blocked.append(f"{name}: {type(exc).__name__}")
        return None
    escaped.append(f"{name}: {value!r}"[:200])
    return value

def double(x):
    if escaped:
        print("ESCAPED", escaped)
        return x * 2
    raise Blocked("BLOCKED " + "; ".join(blocked))
"""


def probe(body: str) -> str:
    return PROBE + "\n" + body


def assert_blocked(graded, *expected: str) -> None:
    assert graded.verdict == "failed", (graded.summary, graded.log)
    assert graded.reason == "wrong_answer", graded.summary
    first = graded.tests["double_0"]["message"]
    assert "Blocked: BLOCKED" in first, first
    for fragment in expected:
        assert fragment in first, first


# --- network ---------------------------------------------------------------------------------


def test_socket_connect_to_redis_and_the_internet_fails(worker):
    redis_url = urlparse(settings.REDIS_URL)
    graded = worker.grade(
        probe(f"""
import socket
def connect(host, port, family=socket.AF_INET):
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        s.connect((host, port))
        return "connected"
attempt("redis", lambda: connect("{redis_url.hostname}", {redis_url.port}))
attempt("postgres", lambda: connect("127.0.0.1", 5432))
attempt("internet", lambda: connect("1.1.1.1", 443))
attempt("ipv6", lambda: connect("::1", {redis_url.port}, socket.AF_INET6))
attempt("redis-socket", lambda: open("/var/run/redis/redis-server.sock"))
interfaces = [name for _, name in socket.if_nameindex()]
if interfaces != ["lo"]:
    escaped.append(f"interfaces {{interfaces}}")
""")
    )
    assert_blocked(graded, "redis: ConnectionRefusedError", "internet: OSError", "redis-socket: FileNotFoundError")


def test_dns_lookups_fail(worker):
    graded = worker.grade(
        probe("""
import socket
attempt("dns", lambda: socket.getaddrinfo("pypi.org", 443))
attempt("dns-udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("8.8.8.8", 53)))
""")
    )
    assert_blocked(graded, "dns: gaierror", "dns-udp: OSError")


# --- reading what it must not see --------------------------------------------------------------


def test_etc_shadow_is_not_there(worker):
    graded = worker.grade(
        probe("""
attempt("shadow", lambda: open("/etc/shadow").read())
attempt("gshadow", lambda: open("/etc/gshadow").read())
attempt("root-home", lambda: os.listdir("/root"))
attempt("ssh-keys", lambda: os.listdir("/etc/ssh"))
""")
    )
    assert_blocked(graded, "shadow: FileNotFoundError", "root-home: FileNotFoundError")


def test_worker_environment_and_processes_are_invisible(worker):
    graded = worker.grade(
        probe(f"""
import glob
for key, value in os.environ.items():
    if "{CANARY}" in value or key in ("REDIS_URL", "SECRET_KEY", "DATABASE_URL", "LABS_DIR"):
        escaped.append("env " + key)
for path in glob.glob("/proc/[0-9]*/environ") + glob.glob("/proc/[0-9]*/cmdline"):
    try:
        if b"{CANARY}" in open(path, "rb").read():
            escaped.append(path)
    except OSError:
        pass
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
print("visible pids", pids, "parent", os.getppid())
if len(pids) > 4:
    escaped.append(f"sees {{len(pids)}} processes")
attempt("worker-pid", lambda: open("/proc/{worker.pid}/environ", "rb").read())
""")
    )
    assert_blocked(graded)
    assert CANARY not in graded.log
    assert "parent 1" in graded.log  # its parent is the namespace's init, not the worker


def test_other_job_folders_are_invisible(worker):
    decoy = Path(tempfile.mkdtemp(prefix="aisys-job-decoy-"))
    try:
        decoy.chmod(0o755)  # world-readable on purpose: only the mount namespace keeps it out
        (decoy / "box").mkdir(mode=0o755)
        (decoy / "box" / "sol.py").write_text(f"SECRET = '{CANARY}'\n")
        (decoy / "box" / "sol.py").chmod(0o644)
        graded = worker.grade(
            probe(f"""
import glob
attempt("decoy", lambda: open("{decoy}/box/sol.py").read())
found = glob.glob("/tmp/aisys-job-*") + glob.glob("{tempfile.gettempdir()}/aisys-job-*")
if found:
    escaped.append(f"job folders {{found}}")
print("job folder contents", os.listdir("/job"))
""")
        )
    finally:
        for path in sorted(decoy.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        decoy.rmdir()
    assert_blocked(graded, "decoy: FileNotFoundError")
    assert CANARY not in graded.log


def test_grader_solutions_and_project_code_are_not_mounted(worker):
    graded = worker.grade(
        probe(f"""
import importlib
attempt("grader", lambda: open("{FIXTURE_LABS}/echo_lab/grader.py").read())
attempt("solutions", lambda: os.listdir("{REPO}/labs/custom_op/solutions"))
attempt("project", lambda: os.listdir("{REPO}"))
attempt("import-labs", lambda: importlib.import_module("labs.trusted"))
attempt("import-runner", lambda: importlib.import_module("gpu_runner.grading"))
print("runner folder", sorted(os.listdir("/opt/aisys")))
""")
    )
    assert_blocked(graded, "grader: FileNotFoundError", "project: FileNotFoundError", "import-labs: ModuleNotFound")
    assert "grader.py" not in graded.log.split("runner folder")[1].splitlines()[0]


# --- writing where it must not -----------------------------------------------------------------


def test_writes_outside_the_job_folder_fail_or_vanish(worker):
    marker = f"escape-{CANARY}"
    host_tmp = Path(tempfile.gettempdir()) / marker
    graded = worker.grade(
        probe(f"""
def write(path):
    with open(path, "w") as f:
        f.write("pwned")
    return path
attempt("usr", lambda: write("/usr/lib/{marker}"))
attempt("etc", lambda: write("/etc/{marker}"))
attempt("root", lambda: write("/{marker}"))
attempt("harness", lambda: write("/opt/aisys/harness.py"))
attempt("project", lambda: write("{REPO}/{marker}"))
attempt("venv", lambda: write(os.__file__))
# /tmp is writable but private to this job: it must not reach the host.
write("/tmp/{marker}")
write("/job/{marker}")
""")
    )
    assert_blocked(graded, "usr: OSError", "harness: OSError")
    assert not host_tmp.exists()
    assert not (REPO / marker).exists()


# --- resource exhaustion -------------------------------------------------------------------------


def test_fork_bomb_hits_the_process_limit(worker):
    graded = worker.grade(
        """
import os, time
def double(x):
    while True:
        os.fork()
""",
        limits={"processes": 16},
    )
    assert (graded.verdict, graded.reason) == ("failed", "process_limit"), graded.summary
    assert "more than 16 processes" in graded.summary


def test_memory_bomb_hits_the_memory_limit(worker):
    graded = worker.grade(
        """
hog = []
def double(x):
    while True:
        hog.append(b"x" * (64 << 20))
""",
        limits={"memory_mb": 768},
    )
    assert (graded.verdict, graded.reason) == ("failed", "memory_limit"), graded.summary
    assert "more than 768 MiB" in graded.summary and "double_0" in graded.summary


def test_disk_fill_hits_the_disk_limit(worker):
    graded = worker.grade(
        """
def double(x):
    i = 0
    while True:
        with open(f"/job/fill-{i}", "wb") as f:
            for _ in range(64):
                f.write(b"x" * (1 << 20))
        i += 1
""",
        limits={"disk_mb": 48, "file_size_mb": 16},
    )
    assert (graded.verdict, graded.reason) == ("failed", "disk_limit"), graded.summary
    assert "File too large" in graded.tests["double_0"]["message"]


def test_filling_tmp_hits_the_disk_limit(worker):
    graded = worker.grade(
        """
def double(x):
    i = 0
    while True:
        with open(f"/tmp/fill-{i}", "wb") as f:
            f.write(b"x" * (8 << 20))
        i += 1
""",
        limits={"disk_mb": 32},
    )
    assert (graded.verdict, graded.reason) == ("failed", "disk_limit"), graded.summary
    assert "No space left on device" in graded.tests["double_0"]["message"]


def test_busy_loop_hits_the_cpu_limit(worker):
    graded = worker.grade(
        """
def double(x):
    while True:
        pass
""",
        limits={"cpu_seconds": 2, "wall_seconds": 20},
    )
    assert (graded.verdict, graded.reason) == ("failed", "cpu_limit"), graded.summary


def test_sleeping_forever_hits_the_time_limit(worker):
    graded = worker.grade(
        """
import time
def double(x):
    time.sleep(10**6)
""",
        limits={"wall_seconds": 3},
    )
    assert (graded.verdict, graded.reason) == ("timed_out", "time_limit"), graded.summary
    assert "more than 3 s during test 'double_0'" in graded.summary


def test_print_flood_hits_the_output_limit(worker):
    graded = worker.grade(
        """
def double(x):
    while True:
        print("spam " * 200)
"""
    )
    assert (graded.verdict, graded.reason) == ("failed", "output_limit"), graded.summary
    assert "spam spam" in graded.output_tail
    assert len(graded.log.encode()) <= 100_000


# --- attacking the worker ------------------------------------------------------------------------


def test_killing_and_ptracing_the_parent_does_not_reach_the_worker(worker):
    graded = worker.grade(
        """
import ctypes, os, signal
libc = ctypes.CDLL(None, use_errno=True)
parent = os.getppid()
print("parent", parent)
for sig in (signal.SIGSTOP, signal.SIGKILL):
    try:
        os.kill(parent, sig)
    except OSError as exc:
        print("kill", sig, exc)
print("ptrace", libc.ptrace(16, parent, None, None), ctypes.get_errno())
try:
    os.kill(-1, signal.SIGKILL)  # every process it may signal, but itself and init
except ProcessLookupError:
    print("nothing else to kill")

def double(x):
    return x * 2
"""
    )
    # The only parent it can name is the namespace's init, which ignores its signals, and there is
    # nothing else in its pid namespace: the job goes on and passes, and the worker (checked by
    # the fixture) never noticed.
    assert "parent 1" in graded.log and "nothing else to kill" in graded.log
    assert (graded.verdict, graded.score) == ("succeeded", 100.0), graded.summary


def test_exiting_mid_test_is_a_crash_with_its_exit_code(worker):
    graded = worker.grade(
        """
import os
def double(x):
    print("bye")
    os._exit(3)
"""
    )
    assert (graded.verdict, graded.reason) == ("failed", "crashed"), graded.summary
    assert "exited with code 3 during test 'double_0'" in graded.summary
    assert "bye" in graded.output_tail


def test_segfault_is_a_crash_with_its_signal(worker):
    graded = worker.grade(
        """
import ctypes
def double(x):
    print("about to crash")
    ctypes.string_at(0)
"""
    )
    assert (graded.verdict, graded.reason) == ("failed", "crashed"), graded.summary
    assert "SIGSEGV" in graded.summary
    assert "about to crash" in graded.output_tail


def test_no_privileges_no_setuid_no_new_namespaces(worker):
    graded = worker.grade(
        probe("""
import ctypes
status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\\t" in line)
if status["CapEff"].strip("0\\n ") or status["CapBnd"].strip("0\\n "):
    escaped.append("capabilities " + status["CapEff"])
if status["NoNewPrivs"].strip() != "1":
    escaped.append("no_new_privs unset")
if os.getuid() == 0 or os.geteuid() == 0:
    escaped.append("root")
attempt("setuid", lambda: os.setuid(0))
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER = 0x10000000
def unshare():
    if libc.unshare(CLONE_NEWUSER) != 0:
        raise OSError(ctypes.get_errno(), "unshare")
    return "new user namespace"
attempt("unshare", unshare)
""")
    )
    assert_blocked(graded, "setuid: ", "unshare: OSError")


# --- cheating the grading ------------------------------------------------------------------------


def test_forged_events_and_exit_do_not_pass(worker):
    graded = worker.grade(
        """
import json, os
fd = int(os.environ["AISYS_EVENT_FD"])
for event in (
    [{"type": "imported"}]
    + [{"type": "case_done", "index": i, "duration": 0.0} for i in range(4)]
    + [{"type": "result", "verdict": "succeeded", "score": 100}, {"type": "done"}]
):
    os.write(fd, (json.dumps(event) + "\\n").encode())
os.write(fd, b"{not json\\n" + b"x" * 100000 + b"\\n")
os._exit(0)
"""
    )
    assert graded.verdict == "failed" and graded.score == 0.0, graded.summary
    assert "wrote no output" in graded.tests["double_0"]["message"]


def test_forged_output_files_are_refused(worker):
    pwned = Path(tempfile.gettempdir()) / f"pwned-{CANARY}"
    graded = worker.grade(f"""
import os, pickle, torch

class Exploit:
    def __reduce__(self):
        return (os.system, ("touch {pwned}",))

os.symlink("/etc/passwd", "_outputs/0.pt")          # a link to a file of the worker's host
os.mkfifo("_outputs/1.pt")                           # a pipe that would block a reader forever
with open("_outputs/2.pt", "wb") as f:               # a pickle that runs code when loaded
    pickle.dump({{"ok": True, "value": Exploit()}}, f)
torch.save = lambda *args, **kwargs: None            # keep the harness from overwriting them

def double(x):
    return x * 2
""")
    assert graded.verdict == "failed", graded.summary
    assert "is a link" in graded.tests["double_0"]["message"]
    assert "not a regular file" in graded.tests["double_1"]["message"]
    assert "not a torch.save archive" in graded.tests["double_2"]["message"]
    assert not pwned.exists()


def test_monkeypatched_checks_and_torch_do_not_fool_the_checker(worker):
    graded = worker.grade(
        """
import sys, torch
torch.allclose = lambda *a, **k: True
torch.equal = lambda *a, **k: True
torch.testing.assert_close = lambda *a, **k: None
torch.Tensor.__eq__ = lambda self, other: True
torch.isfinite = lambda t: torch.ones_like(t, dtype=torch.bool)
harness = sys.modules["__main__"]
harness.Harness.patch = lambda self: None
harness._clone = lambda value: value

def double(x):
    return torch.zeros_like(x)
"""
    )
    assert (graded.verdict, graded.reason) == ("failed", "wrong_answer"), graded.summary
    assert "max abs error" in graded.tests["double_0"]["message"]


def test_forbidden_function_captured_at_import_or_restored_is_still_caught(worker):
    graded = worker.grade(
        """
import sys, torch
from torch import add as early_add
harness = sys.modules["__main__"]
harness.Harness.patch = lambda self: None
torch.add = torch._C._VariableFunctions.add   # put the original back

def double(x):
    return early_add(x, x)
"""
    )
    assert (graded.verdict, graded.reason) == ("failed", "forbidden_call"), graded.summary
    assert "torch.add() is not allowed" in graded.tests["double_0"]["message"]


def test_mutating_the_inputs_does_not_change_the_reference(worker):
    graded = worker.grade(
        """
def double(x):
    x.zero_()
    return x * 2     # 2 * (the now-zero input): right only if the check used the mutated input
"""
    )
    assert (graded.verdict, graded.reason) == ("failed", "wrong_answer"), graded.summary
    assert "max abs error" in graded.tests["double_0"]["message"]


@pytest.mark.parametrize(
    "returned",
    [
        "(x * 3).as_subclass(Liar)",  # a wrong answer in a subclass whose comparisons always agree
        "Lazy(x)",  # an object that would compute on demand in the checker
    ],
)
def test_subclassed_or_lazy_tensors_are_refused(worker, returned):
    graded = worker.grade(f"""
import torch

class Liar(torch.Tensor):
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in ("__eq__", "allclose", "equal", "sub", "__sub__", "abs"):
            return True
        return super().__torch_function__(func, types, args, kwargs or {{}})

class Lazy:
    def __init__(self, x):
        self.x = x
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return True

def double(x):
    return {returned}
""")
    assert (graded.verdict, graded.reason) == ("failed", "wrong_answer"), graded.summary
    assert "plain tensors" in graded.tests["double_0"]["message"]


def test_the_seed_is_nowhere_to_be_found_and_guessing_fails(worker):
    seed = 7_340_031_945_812_903_117
    graded = worker.grade(
        """
import glob, os, torch
seen = [open("/proc/self/cmdline", "rb").read().decode(errors="replace"), repr(dict(os.environ))]
for path in glob.glob("/proc/[0-9]*/cmdline") + glob.glob("/job/*") + glob.glob("/opt/aisys/*"):
    try:
        seen.append(open(path, "rb").read().decode(errors="replace"))
    except OSError:
        pass
print("\\n".join(seen))
guesses = [torch.randn(5, generator=torch.Generator().manual_seed(s)) for s in (0, 1, 42, 1234)]
calls = []

def double(x):
    calls.append(1)
    return guesses[(len(calls) - 1) % len(guesses)] * 2
""",
        seed=seed,
    )
    assert str(seed) not in graded.log
    assert "import torch" in graded.log  # it did read the harness source
    assert (graded.verdict, graded.reason) == ("failed", "wrong_answer"), graded.summary


def test_the_suite_runs_where_the_worker_is_sandboxed(worker):
    """Guard against the whole suite passing on a worker that silently runs unsandboxed."""
    graded = worker.grade(
        probe("""
if os.path.exists("/etc/shadow") or os.getcwd() != "/job" or os.uname().nodename != "sandbox":
    escaped.append("not in the sandbox")
""")
    )
    assert_blocked(graded)
    assert os.environ.get("AISYS_ALLOW_UNSANDBOXED") != "1"
    startup = (worker.stack.log_dir / "worker-grading.log").read_text()
    assert "job sandbox: bubblewrap" in startup
    if os.geteuid() == 0:
        assert "as uid 65534" in startup  # a root worker never runs a job as root
