"""Publishing to a job's Redis Stream (real Redis, the test database 9)."""

from __future__ import annotations

import json

import pytest
import redis
from django.conf import settings

from gpu_runner.events import STREAM_TTL_SECONDS, RedisStreamSink


@pytest.fixture
def stream():
    client = redis.Redis.from_url(settings.REDIS_URL)
    key = "aisys:job:test:events"
    client.delete(key)
    yield client, key
    client.delete(key)


def test_entries_use_seq_as_id_and_carry_json_data(stream):
    client, key = stream
    sink = RedisStreamSink(client, key)
    sink.publish("log", {"stream": "output", "text": "hi\n"})
    sink.publish("result", {"verdict": "succeeded"})
    sink.close()
    entries = client.xrange(key)
    assert [e[0] for e in entries] == [b"1-0", b"2-0"]
    assert entries[1][1][b"type"] == b"result" and json.loads(entries[1][1][b"data"]) == {"verdict": "succeeded"}
    assert 0 < client.ttl(key) <= STREAM_TTL_SECONDS


def test_a_redelivered_job_continues_the_stream_instead_of_colliding(stream):
    client, key = stream
    first = RedisStreamSink(client, key)
    first.publish("log", {"text": "a"})
    first.publish("log", {"text": "b"})
    again = RedisStreamSink(client, key)
    again.publish("status", {"state": "running"})
    assert [e[0] for e in client.xrange(key)] == [b"1-0", b"2-0", b"3-0"]
