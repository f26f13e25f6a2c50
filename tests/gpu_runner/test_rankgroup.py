"""Distributed cases on rank groups (gpu_runner/rankgroup.py): each rank in its own sandbox, on a
loopback network the worker meters, under the rank seccomp filter. With the ring_lab fixture lab.

The attacks are those of a rank that wants its peer's data without sending it over the network,
where the worker counts it (docs/security.md, invariant 4).
"""

from __future__ import annotations

import re

import pytest

from gpu_runner import seccomp
from tests.conftest import FIXTURE_LABS
from tests.gpu_runner.conftest import grade_source

CORRECT = (FIXTURE_LABS / "ring_lab" / "solutions" / "correct" / "sol.py").read_text()
LIMITS = {"wall_seconds": 40}


def _allsum(result) -> dict:
    return next(t for t in result["tests"] if t["name"] == "allsum")


def _grade(body: str):
    """A submission whose allsum runs ``body`` (with rank, size, t) before the honest exchange."""
    source = CORRECT.replace("    total = t.clone()\n", "    total = t.clone()\n" + body)
    result, _ = grade_source(source, lab="ring_lab", limits=LIMITS)
    return result, _allsum(result)


def test_an_honest_group_passes_and_the_worker_counts_what_the_ranks_sent():
    result, _ = grade_source(CORRECT, lab="ring_lab", limits=LIMITS)
    assert (result["verdict"], result["score"]) == ("succeeded", 100.0), result["summary"]
    sent = int(_allsum(result)["message"].split()[-2])
    # Each rank sends its 1000 float32 once; TCP/IP headers and gloo's own messages come on top.
    assert 8_000 <= sent < 64_000, sent


def test_a_rank_that_sends_more_is_counted_by_the_worker_whatever_it_reports():
    result, test = _grade(
        "    if t.numel() == 1000:\n"
        "        extra = torch.zeros(250_000)\n"
        "        if rank == 0:\n            dist.send(extra, 1)\n"
        "        else:\n            dist.recv(extra, 0)\n"
    )
    assert test["outcome"] == "passed", test["message"]
    assert int(test["message"].split()[-2]) > 1_000_000


def test_ranks_share_no_files_and_no_shared_memory():
    result, test = _grade(
        "    if rank == 0:\n"
        "        torch.save(t, '/dev/shm/peer.pt')\n        torch.save(t, '/tmp/peer.pt')\n"
        "        torch.save(t, '/job/peer.pt')\n"
        "    dist.barrier()\n"
        "    if rank == 1:\n"
        "        import os\n"
        "        found = [p for p in ('/dev/shm/peer.pt', '/tmp/peer.pt', '/job/peer.pt') if os.path.exists(p)]\n"
        "        assert not found, found\n"
        "        raise RuntimeError('rank 1 sees nothing of rank 0')\n"
    )
    assert test["outcome"] == "failed"
    assert "rank 1 of 2: raised RuntimeError: rank 1 sees nothing of rank 0" in test["message"], test["message"]


def test_ranks_share_no_port_table_and_no_proc_net():
    # A port bound in one rank is invisible to its peer: no covert channel through which ports are taken.
    result, test = _grade(
        "    import socket\n"
        "    held = socket.socket()\n"
        "    if rank == 0:\n"
        "        held.bind(('0.0.0.0', 45678))\n        held.listen()\n"
        "    dist.barrier()\n"
        "    if rank == 1:\n"
        "        held.bind(('0.0.0.0', 45678))\n"
        "        listening = [line.split()[1] for line in open('/proc/net/tcp').readlines()[1:]]\n"
        "        raise RuntimeError(f'rank 1 bound the port too; listening here: {sorted(listening)}')\n"
    )
    assert "raised RuntimeError: rank 1 bound the port too" in test["message"], test["message"]
    assert "B26E" not in test["message"]  # 45678 in /proc/net/tcp's hex: rank 0's socket is not listed


def test_abstract_unix_sockets_and_other_netlink_families_are_refused_in_a_rank():
    result, test = _grade(
        "    import socket\n"
        "    refused = []\n"
        "    for family, kind, proto in ((socket.AF_UNIX, socket.SOCK_STREAM, 0),"
        " (socket.AF_UNIX, socket.SOCK_DGRAM, 0), (socket.AF_NETLINK, socket.SOCK_DGRAM, 4)):\n"
        "        try:\n"
        "            socket.socket(family, kind, proto).close()\n"
        "        except OSError as exc:\n"
        "            refused.append(exc.errno)\n"
        "    raise RuntimeError(f'refused {refused}')\n"
    )
    assert "raised RuntimeError: refused [97, 97, 97]" in test["message"], test["message"]  # EAFNOSUPPORT


def test_one_group_of_processes_runs_every_size_and_a_rank_outside_the_case_is_frozen():
    # ring_lab's cases run on 2 ranks, then 3: the same three processes, the third parked (frozen)
    # during the 2-rank case. It serves a port from a thread it started at import: while parked it
    # cannot answer, so it can neither work for its peers nor take their CPU.
    server = (
        "import os, socket, threading\n"
        "def _serve():\n"
        "    listener = socket.socket()\n"
        "    listener.bind(('0.0.0.0', 45000))\n"
        "    listener.listen()\n"
        "    while True:\n"
        "        peer, _ = listener.accept()\n"
        "        peer.sendall(b'awake')\n"
        "if os.environ.get('AISYS_RANK') == '2':\n"
        "    threading.Thread(target=_serve, daemon=True).start()\n"
    )
    probe = (
        "    if rank == 0:\n"
        "        with socket.create_connection(('10.77.2.2', 45000), timeout=5) as peer:\n"
        "            peer.settimeout(0.5)\n"
        "            try:\n"
        "                said = peer.recv(16)\n"
        "            except OSError:\n"
        "                said = b'nothing'\n"
        "        raise RuntimeError(f'rank 2 said {said!r} to a group of {size}')\n"
        "    raise RuntimeError('not rank 0')\n"
    )
    source = server + CORRECT.replace("    total = t.clone()\n", "    total = t.clone()\n" + probe)
    result, _ = grade_source(source, lab="ring_lab", limits=LIMITS)
    tests = {t["name"]: t["message"] for t in result["tests"]}
    assert tests["allsum"].startswith("rank 0 of 2: raised RuntimeError: rank 2 said b'nothing'"), tests
    assert tests["allsum_3_ranks"].startswith("rank 0 of 3: raised RuntimeError: rank 2 said b'awake'"), tests


def test_a_failing_rank_is_named_not_the_peer_that_lost_it():
    result, test = _grade("    if rank == 1:\n        raise ValueError('rank 1 gives up')\n")
    assert result["verdict"] == "failed" and result["reason"] == "wrong_answer"
    assert test["message"].startswith("rank 1 of 2: raised ValueError: rank 1 gives up"), test["message"]


def test_a_rank_that_dies_or_hangs_fails_its_case_and_the_job_still_ends():
    result, test = _grade("    if rank == 0:\n        import os\n        os._exit(7)\n")
    assert test["message"].startswith("rank 0 of 2: its process exited with code 7"), test["message"]
    result, test = _grade("    if rank == 0:\n        import time\n        time.sleep(3600)\n")
    assert result["verdict"] == "failed" and "did not finish in time" in test["message"], test["message"]


def test_a_forbidden_call_in_a_rank_is_one():
    result, test = _grade("    dist.all_reduce(t)\n")
    assert (result["verdict"], result["reason"]) == ("failed", "forbidden_call"), result["summary"]
    assert "all_reduce() is not allowed" in test["message"]


def test_the_rank_filter_is_built_for_the_machines_the_worker_runs_on():
    for machine in ("x86_64", "aarch64"):
        program = seccomp.rank_filter(machine)
        assert len(program) % 8 == 0 and len(program) // 8 == 19
    with pytest.raises(seccomp.SeccompUnavailable):
        seccomp.rank_filter("riscv64")


def test_a_module_that_does_not_import_gets_import_error_from_the_ranks_alone():
    # ring_lab has no case for the job's one process: the ranks are the first to import the module.
    result, events = grade_source("import torch\n\ndef allsum(t)\n    pass\n", lab="ring_lab", limits=LIMITS)
    assert (result["verdict"], result["reason"]) == ("failed", "import_error"), result["summary"]
    assert "SyntaxError" in result["summary"]
    # Whichever of the group's three ranks gets there first reports it: all fail the same way.
    message = _allsum(result)["message"]
    assert re.match(r"not run: the module could not be imported on rank [012]: raised SyntaxError", message), message
