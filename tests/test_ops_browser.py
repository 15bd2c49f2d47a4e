"""The operators' page in a real browser: headless Chromium (Debian's, driven by Playwright, which
downloads no browser of its own) against real gunicorn workers and a real scheduler. The page's
issued count and chart follow a sale within 2 s; a closed sale is replayed. Screenshots go to
reports/ (ops-live.png, ops-closed.png)."""
import os
import time

import pytest
from playwright.sync_api import sync_playwright

from coupon import campaigns
from loadtest.harness import ROOT, open_campaign, users
from tests.support import FAST_JOBS, flood, issue_call

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
REPORTS = os.path.join(ROOT, "reports")
FOLLOWS_WITHIN_MS = 2000  # the page polls every second


@pytest.fixture
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run installs it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


def shown_issued(page):
    """The issued count the page shows in its stock bar: '1,234 of 5,000 issued ...'."""
    return int(page.text_content("#bar-text").split(" of ")[0].replace(",", ""))


def test_page_follows_a_sale_and_replays_it(browser, gunicorn, scheduler, svc, signer):
    server = gunicorn(workers=2, private_metrics=True)
    scheduler(**FAST_JOBS)
    stock = 400
    campaign_id = open_campaign(svc, stock, "Launch day")
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{server.url}/ops/?campaign={campaign_id}")
    page.wait_for_function("window.opsPage.state && window.opsPage.state.campaign")
    assert shown_issued(page) == 0
    assert page.text_content("#status") == "open"

    # a first wave: the count and the issued chart follow within 2 s of the last answer
    crowd = users(signer, 700, prefix="browser-")
    results = flood([issue_call(server.url, campaign_id, u, t) for u, t in crowd[:150]], concurrency=20)
    assert sum(status == 201 for _, status, _ in results) == 150
    page.wait_for_function(
        "document.getElementById('bar-text').textContent.startsWith('150 of')", timeout=FOLLOWS_WITHIN_MS)
    page.wait_for_function("window.opsPage.charts.issued.data[1].some(v => v > 0)",
                           timeout=FOLLOWS_WITHIN_MS)

    # the rest of the sale in paced waves, past sell-out, so the charts have a shape to show
    for start in range(150, len(crowd), 50):
        flood([issue_call(server.url, campaign_id, u, t) for u, t in crowd[start:start + 50]], concurrency=20)
        time.sleep(0.4)
    page.wait_for_function(f"document.getElementById('bar-text').textContent.startsWith('{stock} of')",
                           timeout=FOLLOWS_WITHIN_MS)
    # the write-behind catches up and the page says how long the sale took
    page.wait_for_function("window.opsPage.state.campaign.sold_out_after_seconds > 0", timeout=20_000)
    assert page.text_content("#status") == "sold out"
    assert "sold out" in page.text_content("#clock")
    answers = page.evaluate("window.opsPage.charts.answers.data")
    sold_out_series = answers[3]  # "409 sold out"
    assert any(v and v > 0 for v in sold_out_series)
    assert page.text_content("#t-backlog") == "0"
    health = page.inner_text("#health")
    assert "✓ redis" in health and "✓ database" in health and "✓ scheduler" in health
    os.makedirs(REPORTS, exist_ok=True)
    page.screenshot(path=os.path.join(REPORTS, "ops-live.png"), full_page=True)

    # closed: the sale replayed from the database, with the reconciliation result
    campaigns.close_campaign(svc, campaign_id)
    page.wait_for_function("!window.opsPage.state.campaign.live", timeout=FOLLOWS_WITHIN_MS + 1000)
    page.wait_for_function("window.opsPage.charts.replay && window.opsPage.charts.replay.data[1].length > 0")
    replayed = page.evaluate("window.opsPage.charts.replay.data[1]")
    assert sum(replayed) == stock
    assert page.is_visible("#replay") and not page.is_visible("#live")
    assert "✓ reconciled" in page.text_content("#reconciliation")
    assert "sold out after" in page.text_content("#clock")
    assert "sold out after" in page.text_content("#key-replay")
    page.screenshot(path=os.path.join(REPORTS, "ops-closed.png"), full_page=True)
    assert errors == []
