"""The course policies as plain functions: windows, lateness, penalties, grace days, quotas and
what a student sees of their tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from portal.courses import policies
from portal.courses.policies import LatePolicy

T0 = datetime(2027, 3, 1, 17, 0, tzinfo=UTC)  # the due time
H = timedelta(hours=1)
D = timedelta(days=1)


def assignment(**fields):
    defaults = {
        "opens_at": T0 - 7 * D,
        "due_at": T0,
        "cutoff_at": None,
        "is_visible": True,
        "late_policy": LatePolicy.REFUSE,
        "late_penalty_per_day": 10,
        "late_penalty_cap": 100,
        "max_submissions": None,
        "submissions_per_hour": None,
    }
    return SimpleNamespace(**{**defaults, **fields})


def extension(due_at, cutoff_at=None):
    return SimpleNamespace(due_at=due_at, cutoff_at=cutoff_at)


def fmt(when):
    return when.strftime("%Y-%m-%d %H:%M %Z")


@pytest.mark.parametrize(
    ("after_due", "days"),
    [(-H, 0), (timedelta(0), 0), (timedelta(seconds=1), 1), (D, 1), (D + timedelta(seconds=1), 2), (3 * D, 3)],
)
def test_each_started_day_counts_as_a_day_late(after_due, days):
    assert policies.days_late(T0 + after_due, T0) == days


def test_an_extension_moves_the_due_time_and_keeps_the_cutoff_after_it():
    a = assignment(cutoff_at=T0 + 2 * D)
    assert policies.window_for(a) == policies.Window(a.opens_at, T0, T0 + 2 * D, extended=False)
    assert policies.window_for(a, extension(T0 + D)).cutoff_at == T0 + 2 * D  # the assignment's cutoff stays
    assert policies.window_for(a, extension(T0 + 5 * D)).cutoff_at == T0 + 5 * D  # never before the new due
    own = policies.window_for(a, extension(T0 + D, cutoff_at=T0 + 9 * D))
    assert (own.due_at, own.cutoff_at, own.extended) == (T0 + D, T0 + 9 * D, True)
    assert policies.window_for(assignment(), extension(T0 + D)).cutoff_at is None


@pytest.mark.parametrize(
    ("per_day", "cap", "days", "percent"),
    [(10, 100, 0, 0.0), (10, 100, 1, 10.0), (10, 100, 3, 30.0), (25, 60, 3, 60.0), (0, 100, 5, 0.0)],
)
def test_a_penalty_is_a_percentage_per_day_late_capped(per_day, cap, days, percent):
    a = assignment(late_policy=LatePolicy.PENALTY, late_penalty_per_day=per_day, late_penalty_cap=cap)
    assert policies.late_penalty_percent(a, days) == percent
    assert policies.late_score(80.0, percent) == pytest.approx(80.0 * (100 - percent) / 100)


def test_only_the_penalty_policy_takes_points_off():
    for policy in (LatePolicy.REFUSE, LatePolicy.GRACE):
        assert policies.late_penalty_percent(assignment(late_policy=policy), 3) == 0.0
    assert policies.late_score(None, 50.0) is None


def test_no_late_work_refuses_after_the_due_time_even_with_a_cutoff():
    a = assignment(cutoff_at=T0 + 3 * D)
    window = policies.window_for(a)
    assert policies.acceptance(a, window, T0 - H, fmt=fmt).accepted
    late = policies.acceptance(a, window, T0 + H, fmt=fmt)
    assert (
        late.refusal == "The deadline passed on 2027-03-01 17:00 UTC; this assignment does not accept late submissions."
    )
    # with an extension, the student's own due time is the one that counts
    assert policies.acceptance(a, policies.window_for(a, extension(T0 + D)), T0 + H, fmt=fmt).accepted


def test_late_work_is_accepted_until_the_cutoff_and_not_after():
    a = assignment(late_policy=LatePolicy.PENALTY, cutoff_at=T0 + 2 * D)
    window = policies.window_for(a)
    ok = policies.acceptance(a, window, T0 + D + H, fmt=fmt)
    assert (ok.accepted, ok.late_days) == (True, 2)
    closed = policies.acceptance(a, window, T0 + 2 * D + H, fmt=fmt)
    assert closed.refusal == "Submissions closed on 2027-03-03 17:00 UTC (the hard cutoff); nothing more is accepted."
    open_ended = assignment(late_policy=LatePolicy.PENALTY)
    assert policies.acceptance(open_ended, policies.window_for(open_ended), T0 + 90 * D, fmt=fmt).accepted


def test_nothing_before_the_assignment_opens_or_while_it_is_hidden():
    for a, now in [(assignment(), T0 - 8 * D), (assignment(is_visible=False), T0 - D)]:
        got = policies.acceptance(a, policies.window_for(a), now, fmt=fmt)
        assert got.refusal == "This assignment is not open for submissions yet."


def test_grace_days_are_spent_per_started_day_and_refused_beyond_the_bank():
    a = assignment(late_policy=LatePolicy.GRACE)
    window = policies.window_for(a)
    two_days_late = T0 + D + H
    spend = policies.acceptance(a, window, two_days_late, fmt=fmt, grace_days_left=3)
    assert (spend.accepted, spend.late_days, spend.grace_days_needed) == (True, 2, 2)
    short = policies.acceptance(a, window, two_days_late, fmt=fmt, grace_days_left=1)
    assert short.refusal == (
        "This submission would be 2 days late and needs 2 more grace days; you have 1 left. Nothing was submitted."
    )
    # a second submission on a day already paid for spends nothing more, even with an empty bank
    again = policies.acceptance(a, window, two_days_late, fmt=fmt, grace_days_left=0, grace_days_spent_here=2)
    assert (again.accepted, again.grace_days_needed) == (True, 0)
    assert policies.grace_days_spent({1: 2, 2: 0, 3: 1}) == 3


def test_a_quota_counts_all_submissions_and_a_rolling_hour():
    now = T0
    a = assignment(max_submissions=5, submissions_per_hour=2)
    fresh = policies.quota_for(a, [], now)
    assert (fresh.left, fresh.used_last_hour, fresh.next_at, fresh.refusal(now)) == (5, 0, None, None)
    one = policies.quota_for(a, [now - 10 * 60 * timedelta(seconds=1)], now)
    assert (one.left, one.refusal(now)) == (4, None)
    times = [now - 50 * timedelta(minutes=1), now - 10 * timedelta(minutes=1), now - 2 * H]
    full = policies.quota_for(a, times, now)
    assert (full.left, full.used_last_hour, full.next_at) == (2, 2, now + 10 * timedelta(minutes=1))
    assert full.refusal(now) == "At most 2 submissions an hour: the next one is allowed in 10 minutes."
    assert full.refusal(now + 10 * timedelta(minutes=1)) is None
    spent = policies.quota_for(a, [now - k * 3 * H for k in range(1, 6)], now)
    assert spent.left == 0
    assert spent.refusal(now).startswith("You have used all 5 submissions this assignment allows")


def test_no_quota_means_no_limit():
    q = policies.quota_for(assignment(), [T0 - timedelta(seconds=k) for k in range(50)], T0)
    assert (q.left, q.next_at, q.refusal(T0)) == (None, None, None)


def graded(sid, score, *, hours=0, late_days=0, marked=False):
    return policies.Graded(sid, T0 + hours * H, score, late_days, marked)


def test_best_counts_the_highest_score_after_its_late_penalty_and_the_earliest_of_equals():
    a = assignment(late_policy=LatePolicy.PENALTY, late_penalty_per_day=50, counts=policies.Counts.BEST)
    subs = [graded(1, 70.0), graded(2, 100.0, hours=30, late_days=2), graded(3, 70.0, hours=5)]
    grade = policies.grade_for(a, subs)
    # 100 two days late at 50 %/day is 0; of the two 70s, the first
    assert (grade.counted.submission_id, grade.score, grade.penalty_percent) == (1, 70.0, 0.0)
    late_best = policies.grade_for(a, [graded(1, 10.0), graded(2, 100.0, hours=30, late_days=1)])
    assert (late_best.counted.submission_id, late_best.score, late_best.late_days) == (2, 50.0, 1)


def test_last_and_marked_count_what_they_say():
    subs = [graded(1, 90.0), graded(2, 40.0, hours=1, marked=True), graded(3, 60.0, hours=2)]
    assert policies.grade_for(assignment(counts=policies.Counts.LAST), subs).counted.submission_id == 3
    assert policies.grade_for(assignment(counts=policies.Counts.MARKED), subs).score == 40.0
    unmarked = [policies.Graded(g.submission_id, g.created_at, g.score, 0) for g in subs]
    assert policies.grade_for(assignment(counts=policies.Counts.MARKED), unmarked).counted.submission_id == 3


def test_an_override_wins_and_no_submission_is_no_grade():
    override = SimpleNamespace(score=95.0, reason="regrade")
    grade = policies.grade_for(assignment(counts=policies.Counts.BEST), [graded(1, 50.0)], override)
    assert (grade.score, grade.final, grade.override_reason) == (50.0, 95.0, "regrade")
    empty = policies.grade_for(assignment(counts=policies.Counts.BEST), [])
    assert (empty.counted, empty.final, empty.late_days) == (None, None, 0)
    assert policies.grade_for(assignment(counts=policies.Counts.BEST), [], override).final == 95.0


# ------------------------------------------------------------------------------------------------
# test visibility
# ------------------------------------------------------------------------------------------------

RULES = (("secret_*", "hidden"), ("edge", "after_due"))
STUDENT = policies.TestView(rules=RULES, revealed=False, everything=False, shows="after 2027-03-01 18:00 CET")


def test_the_first_matching_rule_wins_and_the_assignment_s_rules_come_before_the_lab_s():
    assert policies.test_visibility("secret_1", RULES) == "hidden"
    assert policies.test_visibility("edge", RULES) == "after_due"
    assert policies.test_visibility("edge_2", RULES) == "visible"  # a pattern, not a prefix
    assert policies.test_visibility("edge", [["edge", "visible"]], RULES) == "visible"
    assert policies.test_visibility("secret_1", [], RULES) == "hidden"
    assert policies.test_visibility("anything") == "visible"


def test_staff_text_of_rules_parses_with_comments_and_names_the_bad_line():
    text = "# edges after the due time\nedge_* = after_due\n\n 'secret' = hidden  # never\n"
    assert policies.visibility_rules_parse(text) == [["edge_*", "after_due"], ["secret", "hidden"]]
    assert policies.visibility_rules_format([["edge_*", "after_due"]]) == "edge_* = after_due"
    with pytest.raises(ValueError, match="line 2: 'secret' is not a level"):
        policies.visibility_rules_parse("a = hidden\nb = secret")
    with pytest.raises(ValueError, match="line 1: write 'test name pattern = level'"):
        policies.visibility_rules_parse("just a name")


def test_after_due_tests_show_once_the_student_can_no_longer_submit():
    window = policies.Window(T0 - 7 * D, T0 + D, T0 + 3 * D, extended=True)
    assert policies.reveal_at(assignment(late_policy=LatePolicy.REFUSE), window) == T0 + D
    assert policies.reveal_at(assignment(late_policy=LatePolicy.PENALTY), window) == T0 + 3 * D
    no_cutoff = policies.Window(T0 - 7 * D, T0, None)
    assert policies.reveal_at(assignment(late_policy=LatePolicy.GRACE), no_cutoff) == T0


def test_a_hidden_test_shows_a_student_its_name_and_points_only():
    failed = {"name": "secret_1", "points": 10.0, "outcome": "failed", "message": "input 42 gave 41", "duration": 0.5}
    assert STUDENT.test(failed) == {
        "name": "secret_1",
        "points": 10.0,
        "outcome": "hidden",
        "message": "Hidden test: name and points only.",
        "duration": 0.0,
    }
    edge = STUDENT.test({**failed, "name": "edge"})
    assert (
        edge["outcome"] == "hidden" and edge["message"] == "Hidden test: its result shows after 2027-03-01 18:00 CET."
    )
    visible = {**failed, "name": "plain"}
    assert STUDENT.test(visible) == visible
    revealed = policies.TestView(rules=RULES, revealed=True, everything=False)
    assert revealed.test({**failed, "name": "edge"})["message"] == "input 42 gave 41"
    assert revealed.test(failed)["outcome"] == "hidden"
    assert policies.TestView().test(failed) == failed  # staff


def test_a_student_s_output_once_the_inputs_arrived_is_withheld_while_a_test_is_hidden():
    def log(text, inputs=None):
        data = {"stream": "output", "text": text} | ({} if inputs is None else {"inputs": inputs})
        return {"seq": 1, "type": "log", "ts": 0.0, "data": data}

    assert STUDENT.event(log("importing\n", inputs=False)) == log("importing\n", inputs=False)
    assert STUDENT.event(log("x = 42\n", inputs=True)) is None
    assert STUDENT.event(log("an event from before the field existed\n")) is None
    runner = {"seq": 2, "type": "log", "ts": 0.0, "data": {"stream": "runner", "text": "compiling\n"}}
    assert STUDENT.event(runner) == runner
    assert policies.TestView().event(log("x = 42\n", inputs=True))["data"]["text"] == "x = 42\n"
    all_shown = policies.TestView(rules=(("edge", "after_due"),), revealed=True, everything=False)
    assert not all_shown.withholds_output
    assert all_shown.event(log("x = 42\n", inputs=True)) is not None
    result = {
        "seq": 3,
        "type": "result",
        "ts": 0.0,
        "data": {"verdict": "failed", "summary": "ok", "output_tail": "42"},
    }
    assert STUDENT.event(result)["data"]["output_tail"] == ""


@pytest.mark.parametrize(
    ("summary", "shown"),
    [
        (
            "3 of 5 tests failed: plain, secret_1, edge",
            "1 visible test failed: plain. Hidden tests count toward the score too (their results show after "
            "2027-03-01 18:00 CET).",
        ),
        (
            "1 of 5 tests failed: secret_1",
            "The visible tests passed. Hidden tests count toward the score too (their results show after "
            "2027-03-01 18:00 CET).",
        ),
        ("2 of 5 tests failed: plain, other", "2 of 5 tests failed: plain, other"),
        (
            "Time limit exceeded: the job ran for more than 60 s during test 'secret_9'.",
            "Time limit exceeded: the job ran for more than 60 s during a hidden test.",
        ),
        ("Your code crashed: the process exited with code 1 during test 'plain'.", None),
        ("All 5 tests passed.", None),
    ],
)
def test_a_summary_never_tells_a_student_how_a_hidden_test_went(summary, shown):
    assert STUDENT.summary(summary) == (summary if shown is None else shown)
    assert policies.TestView().summary(summary) == summary
