"""A live stack for end-to-end tests: daphne, the portal worker (with beat) and a grading worker,
all real processes, on the test database and Redis database 9."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest
import redis
from django.conf import settings
from django.db import connection

from portal.devstack import Stack
from tests.conftest import PASSWORD, free_port


def database_url() -> str:
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{Path(db['NAME']).resolve()}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture(scope="module")
def live_stack(django_db_setup, django_db_blocker, tmp_path_factory):
    redis.Redis.from_url(settings.REDIS_URL).flushdb()  # no stale jobs from earlier tests
    port = free_port()
    stack = Stack(
        env={
            "DJANGO_SETTINGS_MODULE": "portal.test_settings",
            "DATABASE_URL": database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "AISYS_CHANNEL_PREFIX": os.environ.get("AISYS_CHANNEL_PREFIX", "aisys-test"),
            # Caps the sleeper's wall time; tests and the benchmark's timing phase share it, so an honest
            # custom_op job (about 15 s on a loaded 2-core machine, a freshly started worker) fits.
            "JOB_MAX_WALL_SECONDS": "30",
            "JOB_DISPATCH_INTERVAL_SECONDS": "1",
            "JOB_REAPER_GRACE_SECONDS": "5",
        },
        web_port=port,
        grading_concurrency=2,
        log_dir=tmp_path_factory.mktemp("stack-logs"),
    )
    with stack:
        stack.base_url = f"http://127.0.0.1:{port}"
        yield stack
    redis.Redis.from_url(settings.REDIS_URL).flushdb()


def login(base_url: str, username: str) -> httpx.Client:
    client = httpx.Client(base_url=base_url, follow_redirects=True, timeout=30)
    client.get("/accounts/login/")
    response = client.post(
        "/accounts/login/",
        data={"username": username, "password": PASSWORD, "csrfmiddlewaretoken": client.cookies["csrftoken"]},
    )
    assert response.url.path == "/", f"login as {username} failed"
    return client


def submit(client: httpx.Client, path: str, code: str) -> int:
    """Paste ``code`` on the assignment page at ``path`` (its form posts to ``<path>submit/``);
    returns the job id shown on the submission page."""
    response = client.post(
        path.rstrip("/") + "/submit/",
        data={"code": code, "csrfmiddlewaretoken": client.cookies["csrftoken"]},
        headers={"Referer": str(client.base_url) + path},
    )
    assert response.status_code == 200 and "/submissions/" in response.url.path, response.text[:2000]
    return int(re.search(r'data-job-id="(\d+)"', response.text).group(1))


def wait_final(client: httpx.Client, job_id: int, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/api/jobs/{job_id}/").json()
        if status["is_final"]:
            return status
        time.sleep(0.25)
    raise AssertionError(f"job {job_id} not final after {timeout} s: {status}")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def browser():
    if CHROMIUM is None:
        pytest.fail("headless Chromium is needed for browser tests: apt-get install chromium (make test does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()
