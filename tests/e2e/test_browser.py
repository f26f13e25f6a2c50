"""A student in headless Chromium: log in, open the lab, paste the correct solution, watch the
log and the tests arrive live, and see the leaderboard (open in another tab) change by itself."""

from __future__ import annotations

import pytest

from labs.catalog import find_lab
from tests.conftest import PASSWORD

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser, pytest.mark.slow]


def test_student_submits_and_watches_it_live(live_stack, cast, custom_op, browser, tmp_path):
    base = live_stack.base_url
    course, slug = custom_op.course.slug, custom_op.slug
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{base}/accounts/login/")
    page.fill("input[name=username]", "bob")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")

    board = context.new_page()
    board.goto(f"{base}/courses/{course}/{slug}/leaderboard/")
    board.wait_for_selector("#leaderboard tr.empty")

    page.goto(f"{base}/courses/{course}/{slug}/")
    assert page.locator("article.instructions h1, article.instructions h2").count() > 0
    correct = find_lab("custom_op").solutions()[1].files["linear_op.py"]
    page.fill("textarea[name=code]", correct + "\nprint('hello from bob', flush=True)\n")
    page.click("#submit-form button[type=submit]")
    page.wait_for_url(f"{base}/submissions/*/")

    page.wait_for_function("document.querySelector('#log').textContent.includes('hello from bob')", timeout=60_000)
    page.wait_for_function("document.getElementById('job-state').textContent === 'Succeeded'", timeout=60_000)
    rows = page.locator("#tests tbody tr")
    assert rows.count() == 9
    assert page.locator("#tests td.outcome-passed").count() == 9
    assert page.locator("#job-score").text_content() == "100/100"
    assert page.locator("#job-metric").text_content().startswith("fwd+bwd time / torch: ")
    page.screenshot(path=str(tmp_path / "submission.png"), full_page=True)

    board.wait_for_function(
        "[...document.querySelectorAll('#leaderboard tbody tr')].some(r => r.cells[1]?.textContent === 'bob')",
        timeout=30_000,
    )
    first = board.locator("#leaderboard tbody tr").first
    assert first.locator("td").nth(0).text_content() == "1" and first.locator("td").nth(2).text_content() == "100"

    # Reloading the finished submission replays the archive: the same log, no duplicates. The module
    # printed once in the tests' process and once in the benchmark's (marked so).
    page.reload()
    page.wait_for_function("document.getElementById('job-state').textContent === 'Succeeded'")
    log = page.locator("#log").text_content()
    assert log.count("hello from bob") == 2 and log.count("[benchmark] hello from bob") == 1, log
    assert page.locator("#tests tbody tr").count() == 9
    context.close()
