"""Live leaderboard: sends the ranked rows on connect and again whenever a new best is recorded."""

from __future__ import annotations

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from portal.access import can_see_assignment
from portal.courses.models import Assignment
from portal.leaderboards.selectors import leaderboard_for_viewer
from portal.leaderboards.services import leaderboard_group


def leaderboard_rows_for_viewer(*, assignment_id: int, user) -> list[dict] | None:
    # as the page (courses.selectors.assignment_for_user): an archived course's leaderboards are closed
    assignment = (
        Assignment.objects.select_related("course", "lab").filter(pk=assignment_id, course__is_active=True).first()
    )
    if assignment is None or not can_see_assignment(assignment=assignment, user=user):
        return None
    return leaderboard_for_viewer(assignment=assignment, user=user).rows


class LeaderboardConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        self.assignment_id = int(self.scope["url_route"]["kwargs"]["assignment_id"])
        self.joined = False
        rows = await self._rows()
        if rows is None:
            await self.close(code=4403)
            return
        await self.accept()
        await self.channel_layer.group_add(leaderboard_group(self.assignment_id), self.channel_name)
        self.joined = True
        await self.send_json({"kind": "leaderboard", "rows": rows})

    async def disconnect(self, code):
        if self.joined:
            await self.channel_layer.group_discard(leaderboard_group(self.assignment_id), self.channel_name)

    async def leaderboard_changed(self, message):
        rows = await self._rows()
        if rows is not None:
            await self.send_json({"kind": "leaderboard", "rows": rows})

    async def _rows(self):
        return await database_sync_to_async(leaderboard_rows_for_viewer)(
            assignment_id=self.assignment_id, user=self.scope["user"]
        )
