"""An assignment's analytics for its staff: the score histogram, submissions per hour up to the
due time, the tests that fail most, and the distribution of the lab's metric.

Three of the four charts describe each student's *counted* submission, as the gradebook picks it
(``portal.courses.gradebook``: best, last or marked, disqualified results left out, late
penalties and overrides applied), so the analytics page and the gradebook never disagree. The
hourly chart counts every submission the students made, disqualified ones too: it shows when they
worked, not what they earned.

Where the trust line runs: a job's ``result`` was written by the worker from what the student's
code printed (labs/protocol.py bounds each test name to 200 characters and a result to 500
tests), so the failing-test count reads it defensively: entries that are not objects, names that
are not strings and outcomes other than ``failed`` are skipped, each name counts once per
submission, and at most ``MAX_TEST_NAMES`` distinct names are kept however many results invent
new ones. The queries are a fixed few whatever the class size: the gradebook's three, one for the
counted results (only their tests and metric, never logs), one for the hourly counts.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.db.models import BooleanField, Count, ExpressionWrapper, Q
from django.db.models.functions import TruncHour
from django.utils import timezone

from portal.courses.gradebook import gradebook
from portal.courses.models import Assignment
from portal.submissions.models import Job, Submission

SCORE_BINS = 10  # 0-10, 10-20, ..., 90-100 (100 goes in the last)
METRIC_BINS = 10
TOP_FAILING_TESTS = 15
MAX_TEST_NAMES = 5000  # distinct names kept while counting (200 characters each: about 1 MB)
MAX_HOURS = 14 * 24  # the hourly axis covers at most the 14 days before the due time (or now)


@dataclass(frozen=True)
class Bin:
    label: str
    low: float
    high: float
    count: int


@dataclass(frozen=True)
class FailingTest:
    name: str
    failures: int


@dataclass(frozen=True)
class HourlySubmissions:
    """Submissions per hour (in the course's time zone) up to the due time (or now, while the
    assignment is open); those before the axis starts and those after the due time (late ones, or
    under an extension) are counted apart."""

    labels: list[str]  # "MM-DD HH:00", each the start of its hour
    counts: list[int]
    earlier: int = 0
    after_due: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts) + self.earlier + self.after_due


@dataclass(frozen=True)
class MetricDistribution:
    name: str
    unit: str
    direction: str  # "lower" or "higher" is better; "" when the lab does not say
    values: int  # how many counted results have a metric
    bins: list[Bin] = field(default_factory=list)
    p10: float | None = None
    median: float | None = None
    p90: float | None = None


@dataclass(frozen=True)
class AssignmentAnalytics:
    students: int  # in scope (a section-scoped TA's section, or the section asked for)
    graded: int  # of them, with a final score
    score_histogram: list[Bin]
    hourly: HourlySubmissions
    with_tests: int  # counted results that list their tests
    failing_tests: list[FailingTest]
    metric: MetricDistribution


def score_histogram(scores: list[float]) -> list[Bin]:
    """Ten 10-point bins; 100 (and anything above, an override's) in the last, below 0 in the first."""
    counts = [0] * SCORE_BINS
    for score in scores:
        counts[min(SCORE_BINS - 1, max(0, int(score // 10)))] += 1
    return [Bin(f"{10 * i}–{10 * i + 10}", 10.0 * i, 10.0 * i + 10, n) for i, n in enumerate(counts)]


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0 to 1) with linear interpolation between ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    at = (len(ordered) - 1) * q
    below = math.floor(at)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (at - below)


def metric_bins(values: list[float], bins: int = METRIC_BINS) -> list[Bin]:
    """Equal-width bins from the smallest value to the largest (the largest in the last bin);
    one bin when every value is the same."""
    if not values:
        return []
    low, high = min(values), max(values)
    if low == high:
        return [Bin(f"{low:.4g}", low, high, len(values))]
    width = (high - low) / bins
    counts = [0] * bins
    for value in values:
        counts[min(bins - 1, int((value - low) / width))] += 1
    edges = [low + width * i for i in range(bins)] + [high]
    return [Bin(f"{edges[i]:.4g}–{edges[i + 1]:.4g}", edges[i], edges[i + 1], counts[i]) for i in range(bins)]


def failing_tests(results: list, *, top: int = TOP_FAILING_TESTS) -> tuple[int, list[FailingTest]]:
    """From each counted result's ``tests`` list: how many results list tests, and the ``top``
    test names by the number of results in which they failed (of equal counts, by name)."""
    failures: Counter[str] = Counter()
    with_tests = 0
    for tests in results:
        if not isinstance(tests, list):
            continue
        with_tests += 1
        failed_here = set()
        for test in tests:
            if not isinstance(test, dict) or test.get("outcome") != "failed":
                continue
            name = test.get("name")
            if isinstance(name, str) and name:
                failed_here.add(name[:200])
        for name in sorted(failed_here):  # in a fixed order, so a full table keeps the same names
            if name in failures or len(failures) < MAX_TEST_NAMES:
                failures[name] += 1
    ranked = sorted(failures.items(), key=lambda item: (-item[1], item[0]))[:top]
    return with_tests, [FailingTest(name, n) for name, n in ranked]


def hourly_axis(
    counts_by_hour: dict[datetime, int],
    *,
    due_at: datetime,
    tz,
    after_due: int = 0,
    now: datetime | None = None,
) -> HourlySubmissions:
    """Hour buckets in ``tz`` from the first submission's hour to the hour the due time ends (or,
    while the assignment is open, the current hour), at most ``MAX_HOURS`` of them;
    ``counts_by_hour`` maps each hour's start to its count (of submissions made by the due time)."""
    end = min(due_at, now or timezone.now())
    # the last hour is the one the end falls in (a due time on the hour ends the hour before it)
    due_hour = timezone.localtime(end - timedelta(microseconds=1), tz).replace(minute=0, second=0, microsecond=0)
    if not counts_by_hour:
        return HourlySubmissions([], [], 0, after_due)
    first = min(timezone.localtime(hour, tz) for hour in counts_by_hour)
    start = max(min(first, due_hour), due_hour - timedelta(hours=MAX_HOURS - 1))
    # walk in UTC so a daylight-saving change neither repeats nor skips an hour
    hours, at = [], start.astimezone(UTC)
    while at <= due_hour:
        hours.append(at)
        at = at + timedelta(hours=1)
    index = {hour: i for i, hour in enumerate(hours)}
    counts, earlier = [0] * len(hours), 0
    for hour, n in counts_by_hour.items():
        i = index.get(hour)
        if i is not None:
            counts[i] += n
        elif hour < start:
            earlier += n
        else:  # the due time's own hour (a submission on the dot), or one a daylight-saving change repeats
            counts[-1] += n
    labels = [f"{timezone.localtime(hour, tz):%m-%d %H:00}" for hour in hours]
    return HourlySubmissions(labels, counts, earlier, after_due)


def analytics_for_assignment(
    *, assignment: Assignment, section: str | None = None, now: datetime | None = None
) -> AssignmentAnalytics:
    """The four charts' numbers for one assignment, over its students (of one section, if given);
    on a team assignment each member counts the team's submission, as the gradebook does."""
    course, lab = assignment.course, assignment.lab
    book = gradebook(course=course, section=section, assignment_slug=assignment.slug)
    grades = [row.grades[0] for row in book.rows]
    student_ids = [row.enrollment.user_id for row in book.rows]
    finals = [g.final for g in grades if g.final is not None]
    counted_ids = [g.counted.submission_id for g in grades if g.counted is not None]

    results = Job.results().filter(submission_id__in=set(counted_ids))
    found = {
        sid: (metric, tested) for sid, metric, tested in results.values_list("submission_id", "metric", "result__tests")
    }
    metrics, tests = [], []
    for metric, tested in (found[sid] for sid in counted_ids if sid in found):  # once per student
        if metric is not None and math.isfinite(metric):
            metrics.append(metric)
        tests.append(tested)
    with_tests, failing = failing_tests(tests)

    late = ExpressionWrapper(Q(created_at__gt=assignment.due_at), output_field=BooleanField())
    per_hour = (
        Submission.objects.filter(assignment=assignment, student_id__in=student_ids)
        .annotate(hour=TruncHour("created_at", tzinfo=course.tz), late=late)
        .values("hour", "late")
        .annotate(n=Count("pk"))
        .order_by()
    )
    by_hour: dict[datetime, int] = Counter()
    after_due = 0
    for row in per_hour:
        if row["late"]:
            after_due += row["n"]
        else:
            by_hour[row["hour"]] += row["n"]
    return AssignmentAnalytics(
        students=len(book.rows),
        graded=len(finals),
        score_histogram=score_histogram(finals),
        hourly=hourly_axis(dict(by_hour), due_at=assignment.due_at, tz=course.tz, after_due=after_due, now=now),
        with_tests=with_tests,
        failing_tests=failing,
        metric=MetricDistribution(
            name=lab.metric_name,
            unit=lab.metric_unit,
            direction=lab.metric_direction,
            values=len(metrics),
            bins=metric_bins(metrics),
            p10=percentile(metrics, 0.1),
            median=percentile(metrics, 0.5),
            p90=percentile(metrics, 0.9),
        ),
    )
