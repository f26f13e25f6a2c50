"""The job websocket over the real ASGI app, Redis Streams and the Channels Redis layer:
authorize, replay from the last seen seq, follow, resume with no gap and no duplicate, and
fall back to the database archive once the stream is gone."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client

from gpu_runner.events import RedisStreamSink
from portal.asgi import application
from portal.submissions import streams
from portal.submissions.services import job_events_archive, submission_create

pytestmark = pytest.mark.django_db(transaction=True)


def session_headers(user) -> list[tuple[bytes, bytes]]:
    client = Client()
    client.force_login(user)
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
    return [(b"cookie", cookie.encode()), (b"origin", b"http://testserver")]


@pytest.fixture
def job(cast, custom_op):
    submission = submission_create(student=cast["alice"], assignment=custom_op, files={"linear_op.py": "x = 1\n"})
    job = submission.jobs.get()
    streams.sync_client().delete(job.events_stream)
    yield job
    streams.sync_client().delete(job.events_stream)


def publish(job, count: int, *, result: bool = False) -> None:
    sink = RedisStreamSink(streams.sync_client(), job.events_stream)
    for _ in range(count):
        sink.publish("log", {"stream": "output", "text": f"line {sink.seq + 1}\n"})
    if result:
        sink.publish("result", {"verdict": "succeeded", "score": 100.0, "summary": "ok"})


async def connect(job_id: int, user, after: int | None = None) -> tuple[WebsocketCommunicator, bool, int | None]:
    path = f"/ws/jobs/{job_id}/" + (f"?after={after}" if after is not None else "")
    headers = await database_sync_to_async(session_headers)(user)
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, code = await communicator.connect(timeout=5)
    return communicator, connected, code


async def receive_events(communicator, count: int) -> list[dict]:
    events = []
    while len(events) < count:
        message = await communicator.receive_json_from(timeout=5)
        if message["kind"] == "event":
            events.append(message)
    return events


async def test_resume_from_the_middle_returns_exactly_the_remaining_events(job, cast):
    await database_sync_to_async(publish)(job, 9, result=True)
    communicator, connected, _ = await connect(job.pk, cast["alice"], after=4)
    assert connected
    events = await receive_events(communicator, 6)
    assert [e["seq"] for e in events] == [5, 6, 7, 8, 9, 10]
    assert events[0]["data"]["text"] == "line 5\n" and events[-1]["type"] == "result"
    assert await communicator.receive_nothing(timeout=0.5)
    await communicator.disconnect()


async def test_reconnect_follows_live_with_no_gap_and_no_duplicate(job, cast):
    await database_sync_to_async(publish)(job, 3)
    first, connected, _ = await connect(job.pk, cast["alice"])
    assert connected
    seen = [e["seq"] for e in await receive_events(first, 3)]
    await database_sync_to_async(publish)(job, 2)  # arrives while following
    seen += [e["seq"] for e in await receive_events(first, 2)]
    await first.disconnect()
    await database_sync_to_async(publish)(job, 3, result=True)  # while disconnected
    second, connected, _ = await connect(job.pk, cast["alice"], after=seen[-1])
    assert connected
    seen += [e["seq"] for e in await receive_events(second, 4)]
    assert seen == list(range(1, 10))
    assert await second.receive_nothing(timeout=0.5)
    await second.disconnect()


async def test_archived_events_replay_from_the_database_once_the_stream_is_gone(job, cast):
    await database_sync_to_async(publish)(job, 5, result=True)
    archived = await database_sync_to_async(job_events_archive)(job=job)
    assert archived == 6
    streams.sync_client().delete(job.events_stream)
    communicator, connected, _ = await connect(job.pk, cast["alice"], after=2)
    assert connected
    events = await receive_events(communicator, 4)
    assert [e["seq"] for e in events] == [3, 4, 5, 6]
    await communicator.disconnect()


@pytest.mark.parametrize("viewer", ["bob", "outsider"])
async def test_another_student_cannot_open_the_websocket(job, cast, viewer):
    communicator, connected, code = await connect(job.pk, cast[viewer])
    assert not connected and code == 4403


async def test_staff_can_watch(job, cast):
    await database_sync_to_async(publish)(job, 1)
    communicator, connected, _ = await connect(job.pk, cast["tariq"])
    assert connected
    assert [e["seq"] for e in await receive_events(communicator, 1)] == [1]
    await communicator.disconnect()


async def test_anonymous_and_foreign_origin_are_refused(job, cast):
    communicator = WebsocketCommunicator(
        application, f"/ws/jobs/{job.pk}/", headers=[(b"origin", b"http://testserver")]
    )
    connected, _ = await communicator.connect(timeout=5)
    assert not connected
    headers = [(k, v) for k, v in await database_sync_to_async(session_headers)(cast["alice"]) if k != b"origin"]
    communicator = WebsocketCommunicator(
        application, f"/ws/jobs/{job.pk}/", headers=[*headers, (b"origin", b"http://evil.example")]
    )
    connected, _ = await communicator.connect(timeout=5)
    assert not connected


async def test_a_stale_stream_of_an_earlier_job_with_the_same_id_is_never_replayed(job, cast):
    """Job ids repeat when a database is reset while Redis keeps its streams."""
    stale = f"aisys:job:{job.pk}:{'0' * 32}:events"
    stale_sink = RedisStreamSink(streams.sync_client(), stale)
    await database_sync_to_async(stale_sink.publish)("log", {"stream": "output", "text": "someone else's log\n"})
    try:
        communicator, connected, _ = await connect(job.pk, cast["alice"])
        assert connected
        assert await communicator.receive_nothing(timeout=1)
        await database_sync_to_async(publish)(job, 1)
        assert [e["data"]["text"] for e in await receive_events(communicator, 1)] == ["line 1\n"]
        await communicator.disconnect()
    finally:
        streams.sync_client().delete(stale)
