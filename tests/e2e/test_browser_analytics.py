"""An instructor opens an assignment's analytics in headless Chromium: the four charts are drawn by
the vendored Chart.js (served from static/, nothing from outside), their numbers are on the page,
and a screenshot is kept in the test's folder."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from portal.courses.services import enrollment_create
from tests.conftest import PASSWORD
from tests.factories import UserFactory
from tests.portal.test_analytics import failed, graded, passed

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]

CHARTS = ("scores", "hourly", "failing", "metric")

# How many pixels of a chart's canvas are not blank, and whether Chart.js owns it.
DRAWN = """(id) => {
  const canvas = document.querySelector(`#${id} canvas`);
  const chart = Chart.getChart(canvas);
  const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let inked = 0;
  for (let i = 3; i < pixels.length; i += 4) if (pixels[i] !== 0) inked++;
  return {chart: chart ? chart.config.type : null, inked, bars: chart ? chart.data.datasets[0].data : null};
}"""


def test_an_instructor_sees_the_four_charts_drawn(live_server, cast, custom_op, browser, tmp_path, monkeypatch):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    course = cast["course"]
    course.time_zone = "UTC"  # whole hours: the chart's buckets are the course's hours
    course.save()
    due = timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    custom_op.due_at = due
    custom_op.save()
    dave = UserFactory(username="dave")
    enrollment_create(course=course, user=dave, role="student")
    hour = lambda h: due - timedelta(hours=h, minutes=-20)  # noqa: E731  (20 min into an hour before due)
    graded(custom_op, cast["alice"], 95.0, at=hour(3), tests=[*passed("small"), *failed("grad_check")], metric=1.4)
    graded(custom_op, cast["bob"], 100.0, at=hour(2), tests=passed("small", "grad_check"), metric=1.1)
    graded(custom_op, cast["carol"], 35.0, at=hour(2), tests=failed("small", "grad_check"), state="failed")
    graded(custom_op, dave, 62.0, at=hour(1), tests=failed("grad_check"), metric=2.3)

    page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", "ines")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")
    page.goto(f"{live_server.url}/courses/{course.slug}/staff/assignments/")
    page.click(f"#assignments a[href$='/{custom_op.slug}/analytics/']")
    page.wait_for_function("() => typeof Chart !== 'undefined' && document.querySelectorAll('canvas').length === 4")
    page.wait_for_function(
        "() => [...document.querySelectorAll('canvas')].every((c) => Chart.getChart(c) !== undefined)"
    )

    drawn = {chart: page.evaluate(DRAWN, chart) for chart in CHARTS}
    assert {chart: d["chart"] for chart, d in drawn.items()} == dict.fromkeys(CHARTS, "bar")
    assert all(d["inked"] > 500 for d in drawn.values()), {c: d["inked"] for c, d in drawn.items()}
    assert drawn["scores"]["bars"] == [0, 0, 0, 1, 0, 0, 1, 0, 0, 2]
    assert drawn["hourly"]["bars"] == [1, 2, 1]  # 3, 2 and 1 hours before the due time
    assert drawn["failing"]["bars"] == [3, 1]

    def table(chart: str) -> list[list[str]]:
        rows = page.locator(f"#{chart} details.numbers tbody tr")
        return [[cell.strip() for cell in row.locator("td").all_text_contents()] for row in rows.all()]

    assert table("scores")[3] == ["30–40", "1"] and table("scores")[9] == ["90–100", "2"]
    assert table("failing") == [["grad_check", "3"], ["small", "1"]]
    assert [n for _, n in table("hourly")] == ["1", "2", "1"]
    summary = page.locator("#metric-summary").text_content()
    assert summary == "3 ranked results: p10 1.16, median 1.4, p90 2.12"
    assert page.locator("#analytics-scope").text_content().startswith("4 of 4 students graded")
    assert all(url.startswith(live_server.url) for url in requests), "the page must load nothing from outside"
    page.screenshot(path=str(tmp_path / "analytics.png"))
    assert (tmp_path / "analytics.png").stat().st_size > 10_000
    connections.close_all()
