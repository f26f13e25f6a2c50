"""A course's policies as plain functions of an assignment, a student's record and a time.

No database here: callers read what a policy needs (the student's extension, the times of their
counted submissions, the late days they spent elsewhere) and pass it in, so each rule is tested on
its own and the views, the submit service and the gradebook apply the same one.
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from labs.catalog import MAX_VISIBILITY_RULES, Visibility

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)


class LatePolicy:
    """What submitting after the (effective) due time costs. Values are stored on assignments."""

    REFUSE = "refuse"  # nothing is accepted after the due time
    PENALTY = "penalty"  # accepted until the cutoff; the score loses a percentage per day late, capped
    GRACE = "grace"  # accepted until the cutoff, spending the course's grace days (a per-student bank)

    CHOICES = [
        (REFUSE, "No late work: nothing is accepted after the due time"),
        (PENALTY, "Penalty per day late (percent, capped)"),
        (GRACE, "Grace days: spent from the student's bank for the term"),
    ]


@dataclass(frozen=True)
class Window:
    """When a student may submit: the assignment's times, or their extension's."""

    opens_at: datetime
    due_at: datetime
    cutoff_at: datetime | None  # nothing is accepted after it; None: no hard cutoff
    extended: bool = False

    def closes_at(self, late_policy: str) -> datetime | None:
        """The last moment a submission is accepted (None: never closes)."""
        if late_policy == LatePolicy.REFUSE:
            return self.due_at
        return self.cutoff_at


def window_for(assignment, extension=None) -> Window:
    """The student's window: an extension moves the due time, and the cutoff with it.

    An extension's own cutoff wins; without one, the assignment's cutoff stays unless it falls
    before the new due time, in which case the new due time is the cutoff too.
    """
    if extension is None:
        return Window(assignment.opens_at, assignment.due_at, assignment.cutoff_at)
    cutoff = extension.cutoff_at or assignment.cutoff_at
    if cutoff is not None and cutoff < extension.due_at:
        cutoff = extension.due_at
    return Window(assignment.opens_at, extension.due_at, cutoff, extended=True)


def days_late(submitted_at: datetime, due_at: datetime) -> int:
    """Whole days late, each started day counting: 1 second late is 1 day, 24 h 1 s is 2."""
    if submitted_at <= due_at:
        return 0
    return math.ceil((submitted_at - due_at) / DAY)


def late_penalty_percent(assignment, late_days: int) -> float:
    """The percentage a submission ``late_days`` late loses under the assignment's policy."""
    if late_days <= 0 or assignment.late_policy != LatePolicy.PENALTY:
        return 0.0
    return float(min(assignment.late_penalty_cap, assignment.late_penalty_per_day * late_days))


def late_score(score: float | None, penalty_percent: float) -> float | None:
    """A score after its late penalty."""
    if score is None:
        return None
    return score * (100.0 - penalty_percent) / 100.0


def grace_days_spent(late_days_by_assignment: dict[int, int]) -> int:
    """A student's grace days spent: for each grace-policy assignment, its latest counted lateness."""
    return sum(max(0, days) for days in late_days_by_assignment.values())


@dataclass(frozen=True)
class Quota:
    """What a student may still submit to an assignment, and when."""

    limit: int | None  # graded submissions allowed in all; None: no limit
    used: int
    per_hour: int | None  # at most this many in any rolling hour; None: no rate limit
    used_last_hour: int
    next_at: datetime | None  # when the rate limit lets the next one in; None: now (or never)

    @property
    def left(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.used)

    def refusal(self, now: datetime, *, who: str = "You have") -> str | None:
        """Why nothing more may be submitted now (``who``: "Team Ada has", on a team assignment)."""
        if self.limit is not None and self.used >= self.limit:
            return (
                f"{who} used all {self.limit} submissions this assignment allows; "
                "ask the course staff if one of them went wrong."
            )
        if self.next_at is not None and self.next_at > now:
            wait = math.ceil((self.next_at - now).total_seconds() / 60)
            return (
                f"At most {self.per_hour} submissions an hour: the next one is allowed in {wait} "
                f"minute{'s' if wait != 1 else ''}."
            )
        return None


def quota_for(assignment, counted_times: list[datetime], now: datetime) -> Quota:
    """The quota given the times of the student's counted submissions (those graded or being graded;
    a submission whose grading ended in an infrastructure error, or was cancelled, is given back)."""
    limit = assignment.max_submissions or None
    per_hour = assignment.submissions_per_hour or None
    recent = sorted(t for t in counted_times if t > now - HOUR)
    next_at = None
    if per_hour is not None and len(recent) >= per_hour:
        # the hour must first pass over enough of them to leave room for one more
        next_at = recent[len(recent) - per_hour] + HOUR
    return Quota(limit, len(counted_times), per_hour, len(recent), next_at)


@dataclass(frozen=True)
class Acceptance:
    """Whether a student's submission at ``now`` is accepted, and what lateness it carries."""

    refusal: str | None
    late_days: int = 0
    grace_days_needed: int = 0  # new grace days this submission spends (grace policy)

    @property
    def accepted(self) -> bool:
        return self.refusal is None


def acceptance(
    assignment,
    window: Window,
    now: datetime,
    *,
    fmt,
    grace_days_left: int = 0,
    grace_days_spent_here: int = 0,
) -> Acceptance:
    """Apply the window and the late policy to a student's submission at ``now``.

    ``fmt`` formats a time for the message (in the course's time zone); ``grace_days_left`` is the
    student's bank minus every grace day spent so far, ``grace_days_spent_here`` what their earlier
    submissions to this assignment spent (a later one on the same late day spends nothing more).
    """
    if not assignment.is_visible or window.opens_at > now:
        return Acceptance("This assignment is not open for submissions yet.")
    late = days_late(now, window.due_at)
    closes = window.closes_at(assignment.late_policy)
    if closes is not None and now > closes:
        if assignment.late_policy == LatePolicy.REFUSE:
            return Acceptance(
                f"The deadline passed on {fmt(window.due_at)}; this assignment does not accept late submissions."
            )
        return Acceptance(f"Submissions closed on {fmt(closes)} (the hard cutoff); nothing more is accepted.")
    needed = 0
    if late and assignment.late_policy == LatePolicy.GRACE:
        needed = max(0, late - grace_days_spent_here)
        if needed > grace_days_left:
            return Acceptance(
                f"This submission would be {late} day{'s' if late != 1 else ''} late and needs {needed} more "
                f"grace day{'s' if needed != 1 else ''}; you have {grace_days_left} left. Nothing was submitted.",
                late,
                needed,
            )
    return Acceptance(None, late, needed)


class Counts:
    """Which of a student's submissions gives their grade on an assignment."""

    BEST = "best"
    LAST = "last"
    MARKED = "marked"

    CHOICES = [
        (BEST, "Best: the highest score after late penalties"),
        (LAST, "Last: the latest graded submission"),
        (MARKED, "Marked: the one the student marks as final (else the latest)"),
    ]


@dataclass(frozen=True)
class Graded:
    """A graded submission, as the grade policies see it."""

    submission_id: int
    created_at: datetime
    score: float  # the grader's, before any late penalty
    late_days: int
    marked: bool = False


@dataclass(frozen=True)
class Grade:
    """A student's grade on an assignment: the submission that counts, its late days and penalty,
    and an instructor's override if there is one (which wins)."""

    counted: Graded | None
    penalty_percent: float
    score: float | None
    override: float | None = None
    override_reason: str = ""

    @property
    def final(self) -> float | None:
        return self.override if self.override is not None else self.score

    @property
    def late_days(self) -> int:
        return self.counted.late_days if self.counted else 0


def grade_for(assignment, graded: list[Graded], override=None) -> Grade:
    """Apply the assignment's choice (best, last, marked) and late policy to a student's graded
    submissions; ``override`` (with ``score`` and ``reason``) replaces the final score."""
    counted = None
    if graded:
        latest = max(graded, key=lambda g: (g.created_at, g.submission_id))
        if assignment.counts == Counts.BEST:
            after = {
                g.submission_id: late_score(g.score, late_penalty_percent(assignment, g.late_days)) for g in graded
            }
            # the highest score after its penalty; of equals, the earliest
            counted = max(graded, key=lambda g: (after[g.submission_id], -g.created_at.timestamp()))
        elif assignment.counts == Counts.MARKED:
            counted = next((g for g in graded if g.marked), latest)
        else:
            counted = latest
    penalty = late_penalty_percent(assignment, counted.late_days) if counted else 0.0
    score = late_score(counted.score, penalty) if counted else None
    if override is None:
        return Grade(counted, penalty, score)
    return Grade(counted, penalty, score, override.score, override.reason)


# ------------------------------------------------------------------------------------------------
# what a student sees of their tests
# ------------------------------------------------------------------------------------------------

VISIBILITY_CHOICES = [
    (Visibility.VISIBLE, "Visible: outcome, message and time"),
    (Visibility.AFTER_DUE, "Hidden until the student can no longer submit: name and points only until then"),
    (Visibility.HIDDEN, "Hidden always: name and points only"),
]
# the worker's summaries name tests (gpu_runner/grading.py ``_verdict``), never a test's message
FAILED_SUMMARY = re.compile(r"(\d+) of (\d+) tests failed: (.+)", re.DOTALL)
DURING_TEST = re.compile(r"during test '([^'\n]{1,200})'")


def test_visibility(name: str, *rule_lists) -> str:
    """The level of test ``name``: the first rule whose shell-style pattern matches it, trying each
    list in turn (an assignment's rules, then its lab's); visible when none does."""
    for rules in rule_lists:
        for pattern, level in rules or ():
            if fnmatch.fnmatchcase(name, pattern):
                return level
    return Visibility.VISIBLE


def hidden_patterns(*rule_lists) -> list[tuple[str, str]]:
    """The patterns that hide tests from students, with their level, for the assignment page: each
    rule in order whose own pattern is not decided by an earlier rule first."""
    hidden = []
    for rules in rule_lists:
        for pattern, level in rules or ():
            if level != Visibility.VISIBLE and test_visibility(pattern, *rule_lists) == level:
                if (pattern, level) not in hidden:
                    hidden.append((pattern, level))
    return hidden


def visibility_rules_parse(text: str) -> list[list[str]]:
    """An assignment's override as staff type it, one ``pattern = level`` per line (blank lines and
    ``#`` comments skipped); raises ValueError naming the line to fix."""
    rules = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        pattern, equals, level = (part.strip().strip("\"'") for part in line.rpartition("="))
        if not equals or not pattern:
            raise ValueError(f"line {number}: write 'test name pattern = level', e.g. 'edge_* = after_due'")
        if level not in tuple(Visibility):
            raise ValueError(f"line {number}: {level[:40]!r} is not a level; use visible, after_due or hidden")
        if len(pattern) > 200:
            raise ValueError(f"line {number}: the pattern is longer than 200 characters")
        rules.append([pattern, level])
    if len(rules) > MAX_VISIBILITY_RULES:
        raise ValueError(f"{len(rules)} rules; at most {MAX_VISIBILITY_RULES}")
    return rules


def visibility_rules_format(rules) -> str:
    return "\n".join(f"{pattern} = {level}" for pattern, level in rules or ())


def reveal_at(assignment, window: Window) -> datetime:
    """When a student's ``after_due`` tests show: once they can no longer submit (their due time, or
    their cutoff where late work is accepted until one)."""
    return window.closes_at(assignment.late_policy) or window.due_at


@dataclass(frozen=True)
class TestView:
    """What one viewer may see of one submission's tests, events and output.

    Staff see ``everything``. A student sees a hidden test's name and points only; and since their
    code holds every case's inputs once they are given (and may print them during any test), none
    of the output it printed after that while any of their tests is hidden.
    """

    rules: tuple = ()  # the assignment's rules, then the lab's, as one ordered list
    revealed: bool = False  # the after_due tests show now
    everything: bool = True
    shows: str = ""  # when the after_due tests show, for the student to read, e.g. "after 19 Jan 23:59 CET"

    def level(self, name: str) -> str:
        return test_visibility(name, self.rules)

    def hides(self, name: str) -> bool:
        if self.everything:
            return False
        level = self.level(name)
        return level == Visibility.HIDDEN or (level == Visibility.AFTER_DUE and not self.revealed)

    @property
    def withholds_output(self) -> bool:
        """Whether the student's output after the inputs arrived is withheld (some rule hides a test)."""
        if self.everything:
            return False
        return any(
            level == Visibility.HIDDEN or (level == Visibility.AFTER_DUE and not self.revealed)
            for _, level in self.rules
        )

    def test(self, data: dict) -> dict:
        """A test result (labs.protocol.TestResult as a dict) as this viewer sees it."""
        name = data.get("name", "")
        if not self.hides(name):
            return data
        when = self.shows if self.level(name) == Visibility.AFTER_DUE else ""
        return {
            "name": name,
            "points": data.get("points"),
            "outcome": "hidden",
            "message": f"Hidden test: its result shows {when}." if when else "Hidden test: name and points only.",
            "duration": 0.0,
        }

    def summary(self, text: str) -> str:
        """A job's summary without the outcome of a hidden test."""
        if not self.withholds_output or not text:
            return text
        failed = FAILED_SUMMARY.fullmatch(text.strip())
        if failed:
            names = failed.group(3).split(", ")
            shown = [n for n in names if not self.hides(n)]
            if len(shown) == len(names):
                return text
            head = (
                f"{len(shown)} visible test{'s' if len(shown) != 1 else ''} failed: {', '.join(shown)}."
                if shown
                else ("The visible tests passed.")
            )
            when = f" (their results show {self.shows})" if self.shows else ""
            return f"{head} Hidden tests count toward the score too{when}."
        return DURING_TEST.sub(lambda m: "during a hidden test" if self.hides(m.group(1)) else m.group(0), text)

    def event(self, event: dict) -> dict | None:
        """A job event (labs.protocol.EventType) as this viewer sees it; None: not shown at all."""
        if self.everything:
            return event
        kind, data = event.get("type"), event.get("data") or {}
        if kind == "test":
            return {**event, "data": self.test(data)}
        if kind == "log" and data.get("stream") == "output" and data.get("inputs", True) and self.withholds_output:
            return None
        if kind == "result" and self.withholds_output:
            return {**event, "data": {**data, "summary": self.summary(data.get("summary", "")), "output_tail": ""}}
        return event
