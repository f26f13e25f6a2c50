"""Live job events over a websocket: authorize, replay from the client's last seen seq, follow.

``/ws/jobs/<id>/?after=<seq>`` sends every event with seq > after, in order, exactly once (as the
viewer's TestView shows it: a hidden test's name and points only, none of a student's output while
a test of theirs is hidden): from
the job's Redis Stream while it lives, from the database archive once the job is done and the
stream is gone. State changes the portal makes (dispatched, recorded) arrive on group ``job_<id>``.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from redis.exceptions import RedisError

from labs.protocol import EventType
from portal.submissions import streams
from portal.submissions.selectors import job_archived_events, job_stream_access

log = logging.getLogger(__name__)
FORBIDDEN = 4403
BLOCK_MS = 5000


def _after(scope) -> int:
    values = parse_qs(scope.get("query_string", b"").decode()).get("after", ["0"])
    try:
        return max(0, int(values[0]))
    except ValueError:
        return 0


class JobEventsConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        self.job_id = int(self.scope["url_route"]["kwargs"]["job_id"])
        self.follower = None
        access = await database_sync_to_async(job_stream_access)(job_id=self.job_id, user=self.scope["user"])
        if access is None:
            await self.close(code=FORBIDDEN)
            return
        self.view = access["view"]  # what this viewer may see of the job's tests and output
        await self.accept()
        await self.channel_layer.group_add(f"job_{self.job_id}", self.channel_name)
        self.follower = asyncio.create_task(self.follow(key=access["events_stream"], after=_after(self.scope)))

    async def disconnect(self, code):
        if self.follower is not None:
            self.follower.cancel()
            await self.channel_layer.group_discard(f"job_{self.job_id}", self.channel_name)

    async def job_state(self, message):
        await self.send_json({"kind": "state", "state": message["state"]})

    async def follow(self, *, key: str, after: int) -> None:
        last = after
        client = streams.async_client()
        try:
            while True:
                try:
                    if not await client.exists(key):
                        # No stream: the job has not started yet, or it is over and archived.
                        archived = await database_sync_to_async(job_archived_events)(
                            job_id=self.job_id, after=last, view=self.view
                        )
                        for event in archived:
                            await self.send_json({"kind": "event", **event})
                            last = event["seq"]
                        if archived and archived[-1]["type"] == EventType.RESULT:
                            return
                    last, finished = await self._relay_stream(client, key, last)
                except RedisError as exc:
                    log.warning("job %s: live stream interrupted (%s)", self.job_id, exc)
                    await self.send_json({"kind": "notice", "message": "Live updates paused; reconnecting..."})
                    await asyncio.sleep(2)
                    continue
                if finished:
                    return
        except asyncio.CancelledError:
            raise
        finally:
            await client.aclose()

    async def _relay_stream(self, client, key: str, last: int) -> tuple[int, bool]:
        """Send what the stream holds after ``last``, waiting up to BLOCK_MS for news."""
        reply = await client.xread({key: f"{last}-0"}, count=500, block=BLOCK_MS)
        finished = False
        for _, entries in reply or []:
            for _, fields in entries:
                event = streams.decode_entry(fields)
                if event["seq"] <= last:
                    continue
                last = event["seq"]
                finished = finished or event["type"] == EventType.RESULT
                shown = self.view.event(event)
                if shown is not None:
                    await self.send_json({"kind": "event", **shown})
        return last, finished
