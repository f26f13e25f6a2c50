"""Submit the correct custom_op solution N times over HTTP and time submit -> final verdict.

Starts its own stack (daphne, portal worker, one grading worker) on a scratch SQLite database
and Redis database 8, so it never touches your data. Prints p50/p95 of the whole path as the
student sees it, and its breakdown from the job's recorded timestamps:

  dispatch   submission stored -> job message sent to the broker
  queue      message sent -> grading worker picked it up
  start      harness process started (Python + torch imported)
  grading    student import, all cases, checks
  recording  worker done -> result stored in the database

Usage: .venv/bin/python bench/e2e_latency.py [--runs 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

BASE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE))

from portal.devstack import Stack  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    var = Path(tempfile.mkdtemp(prefix="aisys-bench-"))
    env = {
        "AISYS_VAR_DIR": str(var),
        "REDIS_URL": "redis://127.0.0.1:6379/8",
        "AISYS_CHANNEL_PREFIX": "aisys-bench",
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "JOB_DISPATCH_INTERVAL_SECONDS": "1",
    }
    env.pop("DATABASE_URL", None)
    full_env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"} | env
    subprocess.run(
        [sys.executable, "-c", "import redis; redis.Redis.from_url('redis://127.0.0.1:6379/8').flushdb()"], check=True
    )
    for command in (["migrate", "-v0"], ["demo"]):
        subprocess.run(
            [sys.executable, "manage.py", *command], cwd=BASE, env=full_env, check=True, stdout=subprocess.DEVNULL
        )
    password = dict(line.split(" ", 1) for line in (var / "demo-logins.txt").read_text().splitlines())["alice"]
    code = (BASE / "labs" / "custom_op" / "solutions" / "correct" / "linear_op.py").read_text()
    os.environ.update(env)
    os.environ.pop("DATABASE_URL", None)
    with Stack(env=env, web_port=args.port, log_dir=var / "log"):
        client = httpx.Client(base_url=f"http://127.0.0.1:{args.port}", follow_redirects=True, timeout=60)
        client.get("/accounts/login/")
        client.post(
            "/accounts/login/",
            data={"username": "alice", "password": password, "csrfmiddlewaretoken": client.cookies["csrftoken"]},
        )
        path = "/courses/aisys-demo/custom-op/"
        client.get(path)
        observed, job_ids = [], []
        for run in range(args.runs):
            started = time.perf_counter()
            page = client.post(
                path + "submit/",
                data={"code": code, "csrfmiddlewaretoken": client.cookies["csrftoken"]},
                headers={"Referer": f"http://127.0.0.1:{args.port}{path}"},
            )
            job_id = int(page.text.split('data-job-id="')[1].split('"')[0])
            while True:
                status = client.get(f"/api/jobs/{job_id}/").json()
                if status["is_final"]:
                    break
                time.sleep(0.02)
            observed.append(time.perf_counter() - started)
            job_ids.append(job_id)
            assert status["state"] == "succeeded", status
            print(f"run {run + 1:>2}: {observed[-1]:.3f} s", flush=True)

    os.environ["AISYS_VAR_DIR"] = str(var)
    import django

    django.setup()
    from portal.submissions.models import Job

    parts: dict[str, list[float]] = {k: [] for k in ("dispatch", "queue", "start", "grading", "recording", "total")}
    for job in Job.objects.filter(pk__in=job_ids).select_related("submission"):
        t = job.result["timings"]
        parts["dispatch"].append((job.dispatched_at - job.submission.created_at).total_seconds())
        parts["queue"].append(t["queue_wait"])
        parts["start"].append(t["process_start"])
        parts["grading"].append(t["grading"])
        parts["recording"].append(job.recorded_at.timestamp() - t["finished_at"])
        parts["total"].append((job.recorded_at - job.submission.created_at).total_seconds())
    print(f"\n{args.runs} submissions of custom_op/correct, one grading worker, {os.cpu_count()} CPUs")
    print(f"{'':<24}{'p50 (s)':>10}{'p95 (s)':>10}")
    print(f"{'submit -> verdict (HTTP)':<24}{statistics.median(observed):>10.3f}{percentile(observed, 95):>10.3f}")
    for name, values in parts.items():
        print(f"{'  ' + name:<24}{statistics.median(values):>10.3f}{percentile(values, 95):>10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
