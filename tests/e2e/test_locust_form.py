"""`make locust-ui`: Locust's web form drives the test. Its users, ramp up and run time shape the
ramp (the peak, the climb's rate, the whole), its stock is the campaign's; the campaign opens when
START is pressed, not when Locust starts, and when the test ends it is closed and checked, whether
it ends by itself (in headless Chromium, on Locust's own page) or is stopped by Ctrl-C or SIGTERM
(`python -m loadtest.run --ui`, as make runs it)."""
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
from sqlalchemy import func, select

from coupon import db
from coupon.clock import to_ms
from coupon.queries import campaign_row, campaign_status
from loadtest.harness import ROOT, free_port, log_file, terminate, wait_until
from loadtest.run import ramp_stages

LOCUST = os.path.join(ROOT, ".venv", "bin", "locust")


def locust_state(url):
    with urllib.request.urlopen(url + "/stats/requests", timeout=5) as resp:
        stats = json.load(resp)
    return stats["state"], stats["user_count"]


def last_campaign(svc):
    with svc.engine.connect() as conn:
        return conn.execute(select(func.max(db.campaigns.c.id))).scalar() or 0


def summary_of(output):
    """The checks of the summary printed at a test's end, and the report it names."""
    checks = re.findall(r"^  (ok  |FAIL) ", output, re.M)
    report = re.search(r"^report +(\S+)$", output, re.M)
    return checks, report and report.group(1)


def test_the_form_shapes_the_ramp_and_opens_the_campaign_at_start(browser, gunicorn, svc, env):
    server = gunicorn(workers=2)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = log_file(f"locust-{port}.log")
    # started as `make locust-ui SCENARIO=ramp USERS=30 DURATION=20` would; the form then asks for
    # 12 users climbing at 4 a second (moving stages of 2.5 s) in 12 s (the peak held 4.5 s), and
    # a stock of 0: half the users
    peak, rate, run_time = 12, 4, 12
    before = last_campaign(svc)
    locust = subprocess.Popen(
        [LOCUST, "-f", os.path.join(ROOT, "loadtest", "locustfile.py"), "--host", server.url,
         "--web-host", "127.0.0.1", "--web-port", str(port), "-u", "30", "-r", "5", "-t", "20s",
         "--stock", "100"],
        cwd=ROOT, env=dict(env, SCENARIO="ramp", PYTHONPATH=ROOT), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: locust_state(url)[0] == "ready", timeout=60, what="Locust's web UI")
        assert last_campaign(svc) == before  # nothing opens before START
        page = browser.new_page()
        page.goto(url)
        assert page.input_value("input[name=userCount]") == "30"  # as make locust-ui fills it in
        page.get_by_text("Advanced options").click()
        page.get_by_text("Custom parameters").click()
        assert page.input_value("input[name=runTime]") == "20"
        assert page.input_value("input[name=stock]") == "100"
        page.fill("input[name=userCount]", str(peak))
        page.fill("input[name=spawnRate]", str(rate))
        page.fill("input[name=runTime]", f"{run_time}s")
        page.fill("input[name=stock]", "0")
        assert last_campaign(svc) == before  # filled in: the campaign opens at the click, not before
        pressed = time.time()
        page.click("button[type=submit]")
        wait_until(lambda: locust_state(url)[0] == "running", timeout=30, what="the run to start")
        campaign_id = last_campaign(svc)
        assert campaign_id == before + 1
        row = campaign_row(svc.engine, campaign_id)
        assert row.total == peak // 2  # the form's users, not the 30 it was started with
        assert pressed - 1 <= to_ms(row.opens_at) / 1000 <= time.time()  # stored to the second

        seen, started = [], time.monotonic()
        deadline = started + sum(s for s, _ in ramp_stages(peak, rate, run_time)) + 60
        while time.monotonic() < deadline:
            state, user_count = locust_state(url)
            seen.append(user_count)
            if state == "stopped":
                break
            time.sleep(0.1)
        lasted = time.monotonic() - started
        assert state == "stopped", "the ramp did not end by itself"
        assert max(seen) == peak, seen
        assert seen[-1] == 0
        assert run_time - 2 <= lasted <= run_time + 20, lasted  # the form's run time, not 20 s

        # the test's end closed the campaign and checked it
        wait_until(lambda: summary_of(open(log.name).read())[1], timeout=60, what="the summary")
        out = open(log.name).read()
        assert f"campaign {campaign_id} opened: stock {peak // 2}; ramp: to 2 in 2.5 s, to 12 in 2.5 s, " \
               f"held 4.5 s, to 0 in 2.5 s (climbing 4 users/s): 12.0 s in all" in out
        checks, report = summary_of(out)
        assert checks == ["ok  "] * 5, out
        assert os.path.getsize(os.path.join(ROOT, report)) > 0
        assert campaign_row(svc.engine, campaign_id).status == "closed"
    finally:
        terminate(locust, 60)
        log.close()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_test_stopped_by_ctrl_c_or_sigterm_is_closed_checked_and_reported(gunicorn, svc, env, stop):
    server = gunicorn(workers=2)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = log_file(f"locust-ui-{port}.log")
    # `make locust-ui SCENARIO=ramp USERS=20 DURATION=120`, in a session of its own as a terminal's
    # command is (Ctrl-C goes to its process group)
    run = subprocess.Popen(
        [sys.executable, "-m", "loadtest.run", "--ui", "--scenario", "ramp", "--users", "20",
         "--duration", "120", "--host", server.url, "--web-port", str(port)],
        cwd=ROOT, env=dict(env, PYTHONPATH=ROOT), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        wait_until(lambda: locust_state(url)[0] == "ready", timeout=60, what="Locust's web UI")
        form = urllib.parse.urlencode({"user_count": 20, "spawn_rate": 20, "host": server.url,
                                       "run_time": "120s", "stock": 8}).encode()
        with urllib.request.urlopen(url + "/swarm", data=form, timeout=10) as resp:
            assert json.load(resp)["success"]
        wait_until(lambda: locust_state(url)[1] >= 4, timeout=30, what="users to run")
        campaign_id = last_campaign(svc)
        assert campaign_row(svc.engine, campaign_id).status == "open"
        wait_until(lambda: campaign_status(svc, campaign_id)["issued"] == 8, timeout=60, what="a sell-out")
        os.killpg(run.pid, stop)
        assert run.wait(timeout=120) == 0
        out = open(log.name).read()
        checks, report = summary_of(out)
        assert checks == ["ok  "] * 5, out
        assert f"campaign {campaign_id}, stock 8" in out and "issued      8 " in out
        assert os.path.getsize(os.path.join(ROOT, report)) > 0  # named, and written
        assert "KeyboardInterrupt" not in out and "Traceback" not in out, out
        assert not re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", out, re.M), out  # gevent's stamp
        assert campaign_row(svc.engine, campaign_id).status == "closed"
    finally:
        if run.poll() is None:  # Locust too: it has a session of its own
            out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(run.pid)], capture_output=True, text=True)
            for pid in [run.pid, *map(int, out.stdout.split())]:
                os.kill(pid, signal.SIGKILL)
            run.wait()
        log.close()
