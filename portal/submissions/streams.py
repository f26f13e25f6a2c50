"""The portal's side of the job event streams written by the grading workers.

The portal names each job's stream (``Job.events_stream``) in the job message; the entry format
is a wire contract with gpu_runner/events.py (the portal never imports gpu_runner): entry id
``<seq>-0``, fields seq, type, ts and data (JSON).
"""

from __future__ import annotations

import json
from functools import cache

import redis
import redis.asyncio
from django.conf import settings

ARCHIVED_STREAM_TTL_SECONDS = 3600


def decode_entry(fields: dict) -> dict:
    def text(value):
        return value.decode() if isinstance(value, bytes) else value

    fields = {text(k): text(v) for k, v in fields.items()}
    return {
        "seq": int(fields["seq"]),
        "type": fields["type"],
        "ts": float(fields["ts"]),
        "data": json.loads(fields["data"]),
    }


@cache
def sync_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=10)


def async_client() -> redis.asyncio.Redis:
    """A client for the running event loop (a fresh one: pools do not cross event loops)."""
    return redis.asyncio.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2)


def read_all(key: str) -> list[dict]:
    return [decode_entry(fields) for _, fields in sync_client().xrange(key)]
