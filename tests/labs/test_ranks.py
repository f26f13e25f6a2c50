"""labs/ranks.py: ranks of a gloo group in forked children; raising, dying and hanging ranks fail
the group with the root cause named, and no child outlives ``spawn``."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from labs import ranks


def _ring_sum(rank, world_size, value):
    """Pass a running sum once round the ring; every rank returns the total."""
    total = torch.tensor([value * (rank + 1)])
    if rank == 0:
        dist.send(total, 1)
        dist.recv(total, world_size - 1)
    else:
        incoming = torch.zeros(1, dtype=total.dtype)
        dist.recv(incoming, rank - 1)
        total += incoming
        dist.send(total, (rank + 1) % world_size)
    final = total if rank == world_size - 1 else torch.zeros(1, dtype=total.dtype)
    for peer in range(world_size - 1):  # rank world-1 sends the total to everyone else
        if rank == world_size - 1:
            dist.send(final, peer)
        elif rank == peer:
            dist.recv(final, world_size - 1)
    return {"rank": rank, "total": final}


def _children() -> set[int]:
    """This process's children, zombies included (a reaped child leaves no entry at all)."""
    me, found = str(os.getpid()), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields[1] == me:
            found.append(int(stat.parent.name))
    return set(found)


@pytest.fixture
def no_child_left():
    """Fails the test if spawn left a child of this process behind (earlier tests' are ignored)."""
    before = _children()
    yield
    assert not _children() - before


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_every_rank_runs_in_one_group_and_results_come_back_in_rank_order(world_size, no_child_left):
    results = ranks.spawn(_ring_sum, world_size, args=(2.0,), timeout=30)
    expected = 2.0 * world_size * (world_size + 1) / 2
    assert [r["rank"] for r in results] == list(range(world_size))
    assert all(r["total"].item() == expected for r in results)


def _one_raises(rank, world_size):
    if rank == 1:
        raise ValueError("rank one gave up")
    incoming = torch.zeros(1)
    dist.recv(incoming, 1)  # fails when rank 1's connection closes
    return incoming


def test_a_raising_rank_is_named_as_the_cause_not_its_peers(no_child_left):
    with pytest.raises(ranks.RankFailed) as caught:
        ranks.spawn(_one_raises, 3, timeout=30)
    message = str(caught.value)
    assert message.startswith("rank 1 of 3: raised ValueError: rank one gave up")
    assert "rank 0: lost its connection to a failed rank" in message
    assert set(caught.value.failures) == {0, 1, 2}


def _one_dies(rank, world_size):
    if rank == 0:
        os._exit(7)
    incoming = torch.zeros(1)
    dist.recv(incoming, 0)
    return incoming


def test_a_rank_that_dies_is_reported_with_its_exit_code(no_child_left):
    with pytest.raises(ranks.RankFailed, match=r"^rank 0 of 2: exited with code 7 without returning"):
        ranks.spawn(_one_dies, 2, timeout=30)


def _one_hangs(rank, world_size):
    if rank == 2:
        time.sleep(600)
    return rank


def test_a_hanging_rank_fails_the_group_at_the_deadline_and_is_killed(no_child_left):
    started = time.monotonic()
    with pytest.raises(ranks.RankFailed, match=r"^rank 2 of 3: did not finish in time \(a hang\?"):
        ranks.spawn(_one_hangs, 3, timeout=3)
    assert time.monotonic() - started < 30  # the deadline, not the sleep


def _returns_a_function(rank, world_size):
    return {"not data": _returns_a_function}


def test_results_that_are_not_plain_data_fail_with_a_message(no_child_left):
    with pytest.raises(ranks.RankFailed, match="returned data that cannot be sent back"):
        ranks.spawn(_returns_a_function, 2, timeout=30)


def _serve_sum(rank, world_size, message):
    """Each call: every rank adds its contribution to the message's value over the group."""
    total = torch.tensor([float(message["value"]) * (rank + 1)])
    dist.all_reduce(total)
    if message.get("fail_on") == rank:
        raise ValueError(f"rank {rank} refuses")
    return float(total.item())


def test_a_pool_serves_many_calls_on_one_group_and_closes_cleanly(no_child_left):
    with ranks.Pool(3, _serve_sum, collective_timeout=20) as pool:
        children = {child.pid for child in pool.children}
        assert pool.ask({"value": 1.0}, timeout=20) == [6.0, 6.0, 6.0]
        assert pool.ask({"value": 2.0}, timeout=20) == [12.0, 12.0, 12.0]
        assert {child.pid for child in pool.children} == children  # the same ranks, not new ones


def test_a_failing_call_names_the_rank_and_closes_the_pool(no_child_left):
    with ranks.Pool(2, _serve_sum, collective_timeout=20) as pool:
        with pytest.raises(ranks.RankFailed, match="rank 1 of 2: raised ValueError: rank 1 refuses"):
            pool.ask({"value": 1.0, "fail_on": 1}, timeout=20)
        assert pool.children == []
        with pytest.raises(ranks.RankFailed, match="the ranks are gone"):
            pool.ask({"value": 1.0}, timeout=5)
