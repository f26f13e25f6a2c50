"""An assignment's analytics: the four charts' numbers over each student's counted submission
(as the gradebook picks it), bucketed in the course's time zone, read defensively from results
that student code wrote, scoped to a section-scoped TA's students, and shown to staff only."""

from __future__ import annotations

import zoneinfo
from datetime import datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from portal.analytics import selectors
from portal.analytics.selectors import (
    MAX_HOURS,
    analytics_for_assignment,
    failing_tests,
    hourly_axis,
    metric_bins,
    percentile,
    score_histogram,
)
from portal.courses.services import enrollment_create
from portal.submissions.models import Job, Submission
from portal.submissions.services import submission_disqualify
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

NEW_YORK = zoneinfo.ZoneInfo("America/New_York")
DUE = datetime(2026, 3, 5, 23, 0, tzinfo=NEW_YORK)  # 04:00 UTC the next day: UTC buckets would differ
AFTER = DUE + timedelta(days=1)  # "now" in these tests: the assignment is closed, whatever the clock says


def failed(*names: str) -> list[dict]:
    return [{"name": n, "points": 1.0, "outcome": "failed", "message": "wrong", "duration": 0.1} for n in names]


def passed(*names: str) -> list[dict]:
    return [{"name": n, "points": 1.0, "outcome": "passed", "message": "", "duration": 0.1} for n in names]


def graded(assignment, student, score, *, at, tests=(), metric=None, state="succeeded"):
    """A submission made at ``at`` and graded with ``score``, ``metric`` and these test results."""
    submission = Submission.objects.create(assignment=assignment, student=student)
    Submission.objects.filter(pk=submission.pk).update(created_at=at)
    Job.objects.create(
        submission=submission,
        seed=1,
        lab_version=1,
        state=state,
        score=score,
        metric=metric,
        result={"verdict": "passed", "score": score, "metric": metric, "tests": list(tests)},
        finished_at=at,
    )
    return submission


@pytest.fixture
def term(cast, custom_op):
    """Five students (alice and bob in section A, carol and dave in B, erin in none), due 23:00 in
    New York; counted (best) scores 95, 100, 55 and 10; erin submitted nothing."""
    course = custom_op.course
    course.time_zone = "America/New_York"
    course.save()
    custom_op.opens_at, custom_op.due_at = DUE - timedelta(days=7), DUE
    custom_op.save()
    for name in ("dave", "erin"):
        cast[name] = UserFactory(username=name)
        enrollment_create(course=course, user=cast[name], role="student")
    course.enrollments.filter(user__username__in=["alice", "bob", "tariq"]).update(section="A")
    course.enrollments.filter(user__username__in=["carol", "dave"]).update(section="B")
    at = lambda h, m=0: DUE.replace(hour=h, minute=m)  # noqa: E731
    graded(custom_op, cast["alice"], 40.0, at=at(20, 10), tests=failed("t1", "t2"))  # not counted: 95 is better
    graded(custom_op, cast["alice"], 95.0, at=at(20, 50), tests=[*passed("t1"), *failed("t2")], metric=2.0)
    graded(custom_op, cast["bob"], 100.0, at=at(22, 30), tests=passed("t1", "t2", "t3"), metric=1.0)
    graded(custom_op, cast["carol"], 55.0, at=at(23), tests=failed("t1", "t3"), state="failed")  # on the dot: not late
    hostile = [*failed("t2", "t2"), "not a test", {"name": 5, "outcome": "failed"}, {"outcome": "failed"}]
    graded(custom_op, cast["dave"], 10.0, at=at(21, 15), tests=hostile, metric=4.0)
    copied = graded(custom_op, cast["dave"], 100.0, at=DUE + timedelta(hours=2), tests=failed("t1"), metric=0.5)
    submission_disqualify(submission=copied, by=cast["ines"], reason="copied")
    return {**cast, "assignment": custom_op}


def test_the_charts_describe_each_students_counted_submission(term):
    analytics = analytics_for_assignment(assignment=term["assignment"], now=AFTER)
    assert (analytics.students, analytics.graded) == (5, 4)
    assert [b.count for b in analytics.score_histogram] == [0, 1, 0, 0, 0, 1, 0, 0, 0, 2]
    assert [b.label for b in analytics.score_histogram][:2] == ["0–10", "10–20"]
    # alice's first try and dave's disqualified one are not counted; dave's t2 counts once
    assert analytics.with_tests == 4
    assert [(t.name, t.failures) for t in analytics.failing_tests] == [("t2", 2), ("t1", 1), ("t3", 1)]
    metric = analytics.metric
    assert (metric.name, metric.unit, metric.direction, metric.values) == ("fwd+bwd time / torch", "x", "lower", 3)
    assert (metric.p10, metric.median, metric.p90) == pytest.approx((1.2, 2.0, 3.6))
    assert [b.count for b in metric.bins] == [1, 0, 0, 1, 0, 0, 0, 0, 0, 1]


def test_submissions_are_counted_per_hour_in_the_course_time_zone_up_to_the_due_time(term):
    hourly = analytics_for_assignment(assignment=term["assignment"], now=AFTER).hourly
    assert hourly.labels == ["03-05 20:00", "03-05 21:00", "03-05 22:00"]
    assert hourly.counts == [2, 1, 2]  # every submission, the uncounted ones too; carol's on the dot in the last
    assert (hourly.earlier, hourly.after_due, hourly.total) == (0, 1, 6)  # dave's disqualified one came late


def test_a_section_limits_every_chart_to_its_students(term):
    analytics = analytics_for_assignment(assignment=term["assignment"], section="B", now=AFTER)
    assert (analytics.students, analytics.graded) == (2, 2)
    assert [b.count for b in analytics.score_histogram] == [0, 1, 0, 0, 0, 1, 0, 0, 0, 0]
    assert [(t.name, t.failures) for t in analytics.failing_tests] == [("t1", 1), ("t2", 1), ("t3", 1)]
    assert analytics.hourly.counts == [1, 1] and analytics.hourly.after_due == 1  # 21:00 and 22:00
    assert analytics.metric.values == 1 and analytics.metric.median == 4.0


def test_the_queries_do_not_grow_with_the_class(term):
    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            analytics_for_assignment(assignment=term["assignment"], now=AFTER)
        return len(captured)

    before = queries()
    for i in range(6):
        student = UserFactory(username=f"extra{i}")
        enrollment_create(course=term["course"], user=student, role="student")
        graded(term["assignment"], student, 70.0, at=DUE - timedelta(hours=i), tests=failed("t4"), metric=3.0)
    assert queries() == before <= 7


def test_the_page_shows_staff_the_numbers_and_scopes_a_ta_to_their_section(client, term):
    course, assignment = term["course"], term["assignment"]
    url = reverse("analytics:assignment", args=[course.slug, assignment.slug])
    client.force_login(term["ines"])
    page = client.get(url)
    assert page.status_code == 200 and page.context["analytics"].students == 5
    body = page.content.decode()
    assert 'id="analytics-data"' in body and "vendor/chartjs/chart.umd.min.js" in body
    assert "4 of 5 students graded" in body and '<td class="test-name">t2</td><td>2</td>' in body
    assert "3 ranked results: p10 1.2, median 2, p90 3.6" in body
    assert client.get(url, {"section": "A"}).context["analytics"].students == 2

    client.force_login(term["tariq"])
    assert client.get(url).context["analytics"].students == 5  # the course does not limit its TAs
    course.tas_see_own_section = True
    course.save()
    scoped = client.get(url, {"section": "B"}).context  # asking for another section changes nothing
    assert (scoped["section"], scoped["analytics"].students, scoped["analytics"].graded) == ("A", 2, 2)
    assert [b.count for b in scoped["analytics"].score_histogram][9] == 2

    for who in ("alice", "outsider"):
        client.force_login(term[who])
        assert client.get(url).status_code == 404
    client.force_login(term["ines"])
    assert client.get(reverse("analytics:assignment", args=[course.slug, "nope"])).status_code == 404


def test_the_staff_pages_link_the_analytics(client, term):
    course, assignment = term["course"], term["assignment"]
    url = reverse("analytics:assignment", args=[course.slug, assignment.slug])
    client.force_login(term["ines"])
    assert url in client.get(reverse("courses:staff_assignments", args=[course.slug])).content.decode()
    client.force_login(term["tariq"])
    for page in ("courses:assignment", "courses:staff_submissions"):
        assert url in client.get(reverse(page, args=[course.slug, assignment.slug])).content.decode()
    client.force_login(term["alice"])
    assert url not in client.get(reverse("courses:assignment", args=[course.slug, assignment.slug])).content.decode()


def test_score_bins_put_100_in_the_last_and_clamp_what_is_outside():
    assert [b.count for b in score_histogram([0.0, 9.99, 10.0, 89.9, 90.0, 100.0, 120.0, -5.0])] == [
        3, 1, 0, 0, 0, 0, 0, 0, 1, 3,
    ]  # fmt: skip


def test_percentiles_interpolate_between_ranks():
    values = [float(v) for v in range(10, 0, -1)]  # 10 .. 1, unsorted
    assert (percentile(values, 0.1), percentile(values, 0.5), percentile(values, 0.9)) == pytest.approx((1.9, 5.5, 9.1))
    assert percentile([3.0], 0.9) == 3.0 and percentile([], 0.5) is None


def test_metric_bins_span_the_values():
    bins = metric_bins([0.0, 0.5, 1.0, 10.0])
    assert [b.count for b in bins] == [2, 1, 0, 0, 0, 0, 0, 0, 0, 1]
    assert (bins[0].low, bins[-1].high, bins[0].label) == (0.0, 10.0, "0–1")
    same = metric_bins([2.5, 2.5])
    assert [(b.label, b.count) for b in same] == [("2.5", 2)]
    assert metric_bins([]) == []


def test_failing_tests_read_hostile_results_within_bounds(monkeypatch):
    results = [
        None,  # no tests listed
        "tests",
        [{"name": "x" * 5000, "outcome": "failed"}, {"name": "b", "outcome": "not_run"}, ["a"], 7],
        failed("a", "a", "b"),
        failed("a", "c"),
    ]
    with_tests, top = failing_tests(results)
    assert with_tests == 3
    assert [(t.name, t.failures) for t in top] == [("a", 2), ("b", 1), ("c", 1), ("x" * 200, 1)]

    assert len(failing_tests([failed(*(f"t{i:02}" for i in range(40)))])[1]) == 15

    monkeypatch.setattr(selectors, "MAX_TEST_NAMES", 3)
    flood = [failed("real"), failed(*(f"junk{i}" for i in range(100))), failed("real", "later")]
    _, top = failing_tests(flood, top=15)
    assert [(t.name, t.failures) for t in top] == [("real", 2), ("junk0", 1), ("junk1", 1)]


def test_the_hourly_axis_stops_14_days_before_the_due_time():
    tz = NEW_YORK
    long_ago = (DUE - timedelta(days=20)).replace(minute=0)
    last_hour = DUE.replace(minute=0)
    hourly = hourly_axis({long_ago: 3, last_hour: 2}, due_at=DUE, tz=tz, after_due=4)
    assert len(hourly.labels) == len(hourly.counts) == MAX_HOURS
    assert hourly.labels[-1] == "03-05 22:00" and hourly.counts[-1] == 2  # the due time's own hour: in the last
    assert (hourly.earlier, hourly.after_due, hourly.total) == (3, 4, 9)
    assert hourly_axis({}, due_at=DUE, tz=tz).labels == []


def test_the_hourly_axis_of_an_open_assignment_ends_at_the_current_hour():
    now = datetime(2026, 3, 1, 14, 30, tzinfo=NEW_YORK)  # the due time is four days away
    this_hour = now.replace(minute=0)
    hourly = hourly_axis({this_hour - timedelta(hours=2): 1, this_hour: 3}, due_at=DUE, tz=NEW_YORK, now=now)
    assert hourly.labels == ["03-01 12:00", "03-01 13:00", "03-01 14:00"] and hourly.counts == [1, 0, 3]
