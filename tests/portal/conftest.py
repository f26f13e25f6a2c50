"""The portal tests' own broker: a redis-server per test that the test may stop and start."""

from __future__ import annotations

import subprocess
import time

import kombu.pools
import pytest
import redis

from portal.celery import app as celery_app
from tests.conftest import free_port


class PrivateBroker:
    """A redis-server of the test's own, which the test can stop and start again."""

    def __init__(self, workdir):
        self.port = free_port()
        self.workdir = workdir
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
        )
        client = self.client()
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()

    def client(self):
        return redis.Redis(port=self.port)


def _use_broker(url: str) -> None:
    """Point the portal's Celery app at another broker (drops its cached connection pools)."""
    celery_app.conf.broker_url = url
    celery_app._pool = None
    celery_app.amqp._producer_pool = None
    kombu.pools.reset()


@pytest.fixture
def private_broker(tmp_path):
    broker = PrivateBroker(tmp_path)
    broker.start()
    previous = celery_app.conf.broker_url
    _use_broker(f"redis://127.0.0.1:{broker.port}/0")
    yield broker
    _use_broker(previous)
    if broker.proc.poll() is None:
        broker.stop()
