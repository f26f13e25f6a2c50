"""Where a job's events go: its Redis Stream (worker), or the terminal (``manage.py grade``).

Every event has ``seq`` (1, 2, ...), ``type``, ``ts`` and ``data`` (JSON). In the stream the entry
id is ``<seq>-0``, so a client that has seen seq N resumes with XREAD from ``N-0`` and gets
exactly the events after it, and a publisher can never write the same seq twice.
"""

from __future__ import annotations

import json
import sys
import time

import redis

from gpu_runner.text import for_terminal

STREAM_MAXLEN = 20_000
STREAM_TTL_SECONDS = 24 * 3600


class EventSink:
    """Collects events; subclasses also deliver them somewhere."""

    def __init__(self) -> None:
        self.seq = 0

    def publish(self, event_type: str, data: dict) -> None:
        self.seq += 1
        self._deliver({"seq": self.seq, "type": event_type, "ts": time.time(), "data": data})

    def _deliver(self, event: dict) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class RedisStreamSink(EventSink):
    def __init__(self, client: redis.Redis, key: str) -> None:
        super().__init__()
        self.client = client
        self.key = key
        # A redelivered job continues the stream after whatever an earlier attempt wrote.
        last = client.xrevrange(self.key, count=1)
        if last:
            self.seq = int(last[0][0].split(b"-")[0] if isinstance(last[0][0], bytes) else last[0][0].split("-")[0])

    def _deliver(self, event: dict) -> None:
        self.client.xadd(
            self.key,
            {"seq": event["seq"], "type": event["type"], "ts": event["ts"], "data": json.dumps(event["data"])},
            id=f"{event['seq']}-0",
            maxlen=STREAM_MAXLEN,
            approximate=True,
        )

    def close(self) -> None:
        self.client.expire(self.key, STREAM_TTL_SECONDS)


class TerminalSink(EventSink):
    """Shows a job's progress on stderr, for graders working without the web; what the job wrote
    is shown with its control characters written out, never obeyed by the terminal."""

    def __init__(self, stream=sys.stderr, quiet: bool = False) -> None:
        super().__init__()
        self.stream = stream
        self.quiet = quiet

    def _deliver(self, event: dict) -> None:
        if self.quiet:
            return
        data = event["data"]
        if event["type"] == "log":
            self.stream.write(for_terminal(data["text"]))
        elif event["type"] == "test":
            mark = "PASS" if data["outcome"] == "passed" else "FAIL"
            message = f": {data['message']}" if data.get("message") else ""
            self.stream.write(for_terminal(f"[{mark}] {data['name']}{message}") + "\n")
        elif event["type"] == "status":
            self.stream.write(
                for_terminal(f"-- {data['state']}{': ' + data['detail'] if data.get('detail') else ''}") + "\n"
            )
        self.stream.flush()
