"""The operators' page in a real browser: headless Chromium (Debian's, driven by Playwright, which
downloads no browser of its own) against real gunicorn workers and a real scheduler. The page's
issued count and chart follow a sale within 2 s; a closed sale is replayed; a page opened late
shows the sale from its opening. Screenshots go to reports/ (ops-live.png, ops-closed.png,
ops-late.png)."""
import os
import re
import threading
import time

from coupon import campaigns
from loadtest.harness import ROOT, open_campaign, users
from coupon.outbox import outbox_stats
from tests.support import FAST_JOBS, flood, issue_call

REPORTS = os.path.join(ROOT, "reports")
FOLLOWS_WITHIN_MS = 2000  # the page polls every second


def shown_issued(page):
    """The issued count the page shows in its stock bar: '1,234 of 5,000 issued ...'."""
    return int(page.text_content("#bar-text").split(" of ")[0].replace(",", ""))


def shown_in_list(page):
    """The issued count of the selected campaign in the list: '1,234 / 5,000'."""
    return int(page.text_content("#campaigns li.selected .count").split(" / ")[0].replace(",", ""))


def crowded_labels(page, chart):
    """The time axis labels of a chart drawn into the one before, as uPlot placed them; and how
    many it drew."""
    return page.evaluate("""(name) => {
        const u = window.opsPage.charts[name], axis = u.axes[0];
        const ctx = document.createElement("canvas").getContext("2d");
        ctx.font = axis.font[0];
        const boxes = axis._splits.map((v, i) => [v, axis._values[i]]).filter(([, label]) => label)
            .map(([v, label]) => {
                const x = u.valToPos(v, "x"), half = ctx.measureText(label).width / 2;
                return [x - half, x + half, label];
            });
        return [boxes.filter((b, i) => i && b[0] < boxes[i - 1][1] + 4).map((b) => b[2]), boxes.length];
    }""", chart)


def test_page_opened_late_shows_the_sale_from_its_opening(browser, gunicorn, scheduler, svc, signer):
    server = gunicorn(workers=2, private_metrics=True)
    scheduler(**FAST_JOBS)
    campaign_id = open_campaign(svc, 1000, "Opened late")
    crowd = users(signer, 600, prefix="late-")
    # two waves 2 s apart before anyone looks, all written to the database
    for wave in (crowd[:120], crowd[120:200]):
        assert all(status == 201 for _, status, _ in
                   flood([issue_call(server.url, campaign_id, u, t) for u, t in wave], concurrency=20))
        time.sleep(2)
    deadline = time.monotonic() + 20
    while outbox_stats(svc.redis, svc.keys(campaign_id))[0] and time.monotonic() < deadline:
        time.sleep(0.1)
    opened = time.time()
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    errors, refused = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("response", lambda r: refused.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.goto(f"{server.url}/ops/?campaign={campaign_id}")
    page.wait_for_function("window.opsPage.history() && window.opsPage.polls >= 2")

    # the issued chart begins at the opening, with the seconds of both waves as Redis counted them
    history = page.evaluate("window.opsPage.history()")
    assert history["rows"] == 200 and history["step_seconds"] == 1
    ts, per_second = page.evaluate("window.opsPage.charts.issued.data")
    assert ts[0] == history["start"] + 1  # the end of the opening's second
    busy = [t for t, v in zip(ts, per_second) if v > 0]
    assert len(busy) >= 2 and busy[-1] - busy[0] >= 1.5 and busy[-1] < opened
    # the chart accounts for every coupon: its rates times their intervals make the count shown
    edges = [history["start"]] + ts
    assert round(sum(v * (b - a) for a, b, v in zip(edges, ts, per_second))) == shown_issued(page) == 200
    assert "as Redis counted them" in page.text_content("#note-issued")
    assert "in all" in page.text_content("#key-answers")  # this host's totals, not only rates

    # the sale goes on with the page open: the list and the headline show the same count
    seller = threading.Thread(target=lambda: [
        (flood([issue_call(server.url, campaign_id, u, t) for u, t in crowd[s:s + 50]], concurrency=10),
         time.sleep(0.3)) for s in range(200, len(crowd), 50)])
    seller.start()
    seen = []
    while seller.is_alive():
        seen.append(page.evaluate("""() => [
            document.querySelector('#campaigns li.selected .count').textContent.split(' / ')[0],
            document.getElementById('bar-text').textContent.split(' of ')[0]]"""))
        page.wait_for_timeout(50)
    seller.join()
    assert all(listed == shown for listed, shown in seen), [p for p in seen if p[0] != p[1]]
    assert len({shown for _, shown in seen}) >= 3  # it moved while we looked
    page.wait_for_function("document.getElementById('bar-text').textContent.startsWith('600 of')",
                           timeout=FOLLOWS_WITHIN_MS)
    assert shown_in_list(page) == shown_issued(page) == 600
    ts, per_second = page.evaluate("window.opsPage.charts.issued.data")
    assert any(v > 0 for t, v in zip(ts, per_second) if t > opened)  # the polls extend it
    os.makedirs(REPORTS, exist_ok=True)
    page.screenshot(path=os.path.join(REPORTS, "ops-late.png"), full_page=True)
    assert errors == [] and refused == []


def test_page_follows_a_sale_and_replays_it(browser, gunicorn, scheduler, svc, signer):
    server = gunicorn(workers=2, private_metrics=True)
    scheduler(PROMETHEUS_MULTIPROC_DIR=server.metrics_dir, **FAST_JOBS)  # its flush on this host's page
    stock = 400
    campaign_id = open_campaign(svc, stock, "Launch day")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})  # where the axes ran together
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
    # the wave's flush, in the poll after it: a batch's time and the flusher's own rows/s
    said = page.wait_for_function("""() => {
        const said = document.getElementById('time-parts').textContent;
        return said.includes('rows/s') && said; }""", timeout=2 * FOLLOWS_WITHIN_MS).json_value()
    assert re.search(r"flush: [\d.]+ ms a batch, .*each flusher: jobs:\S+ [\d,]+ rows/s, [\d.]+ ms a batch",
                     said), said

    # the rest of the sale in paced waves, past sell-out, so the charts have a shape to show
    for start in range(150, len(crowd), 50):
        flood([issue_call(server.url, campaign_id, u, t) for u, t in crowd[start:start + 50]], concurrency=20)
        time.sleep(0.4)
    page.wait_for_function(f"document.getElementById('bar-text').textContent.startsWith('{stock} of')",
                           timeout=FOLLOWS_WITHIN_MS)
    # the write-behind catches up and the page says how long the sale took
    page.wait_for_function("window.opsPage.state.campaign.sold_out_after_seconds > 0", timeout=20_000)
    assert page.text_content("#status") == "sold out"
    page.wait_for_function(  # not closed yet: it says so, and no longer that the sale is live
        "document.getElementById('reconciliation').textContent.includes('sold out, not closed')",
        timeout=FOLLOWS_WITHIN_MS)
    assert "sold out" in page.text_content("#clock")
    answers = page.evaluate("window.opsPage.charts.answers.data")
    sold_out_series = answers[3]  # "409 sold out"
    assert any(v and v > 0 for v in sold_out_series)
    assert page.text_content("#t-backlog") == "0"
    health = page.inner_text("#health")
    assert "✓ redis" in health and "✓ database" in health and "✓ scheduler" in health
    for name in ("issued", "answers", "latency", "outbox"):  # labels apart, and some drawn
        crowded, drawn = crowded_labels(page, name)
        assert crowded == [] and drawn >= 2, (name, crowded, drawn)
    os.makedirs(REPORTS, exist_ok=True)
    page.screenshot(path=os.path.join(REPORTS, "ops-live.png"), full_page=True)

    # closed: the sale replayed from the database, with the reconciliation result
    campaigns.close_campaign(svc, campaign_id)
    page.wait_for_function("!window.opsPage.state.campaign.live", timeout=FOLLOWS_WITHIN_MS + 1000)
    # a poll during the close may have shown it under way: the replay is asked again once released
    page.wait_for_function("document.getElementById('reconciliation').textContent.includes('✓ reconciled')",
                           timeout=FOLLOWS_WITHIN_MS)
    replayed = page.evaluate("window.opsPage.charts.replay.data[1]")
    assert sum(replayed) == stock
    assert page.is_visible("#replay") and not page.is_visible("#live")
    assert "sold out after" in page.text_content("#clock")
    assert "sold out after" in page.text_content("#key-replay")
    crowded, drawn = crowded_labels(page, "replay")
    assert crowded == [] and drawn >= 2, (crowded, drawn)
    page.screenshot(path=os.path.join(REPORTS, "ops-closed.png"), full_page=True)
    assert errors == []
