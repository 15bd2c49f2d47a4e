"""`make locust-ui` with the ramp: the web form's users and ramp up drive the ramp's shape (its
peak, and the rate of its climb), in Locust's own page in headless Chromium; the run ends by itself."""
import json
import os
import subprocess
import time
import urllib.request

from loadtest.harness import ROOT, free_port, log_file, open_campaign, terminate, wait_until
from loadtest.run import ramp_stage

LOCUST = os.path.join(ROOT, ".venv", "bin", "locust")


def locust_state(url):
    with urllib.request.urlopen(url + "/stats/requests", timeout=5) as resp:
        stats = json.load(resp)
    return stats["state"], stats["user_count"]


def test_the_forms_users_and_ramp_up_shape_the_ramp(browser, gunicorn, svc, env):
    server = gunicorn(workers=2)
    campaign_id = open_campaign(svc, 10_000)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = log_file(f"locust-{port}.log")
    # started as `make locust-ui SCENARIO=ramp USERS=30` would; the form then asks for 12 users
    # climbing at 4 a second: stages of 2.5 s, 10 s in all
    peak, rate = 12, 4
    locust = subprocess.Popen(
        [LOCUST, "-f", os.path.join(ROOT, "loadtest", "locustfile.py"), "--host", server.url,
         "--web-host", "127.0.0.1", "--web-port", str(port), "-u", "30", "-r", "5"],
        cwd=ROOT, env=dict(env, CAMPAIGN_ID=str(campaign_id), SCENARIO="ramp", PYTHONPATH=ROOT),
        stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: locust_state(url)[0] == "ready", timeout=60, what="Locust's web UI")
        page = browser.new_page()
        page.goto(url)
        assert page.input_value("input[name=userCount]") == "30"  # as make locust-ui fills it in
        assert page.is_enabled("input[name=userCount]") and page.is_enabled("input[name=spawnRate]")
        page.fill("input[name=userCount]", str(peak))
        page.fill("input[name=spawnRate]", str(rate))
        page.click("button[type=submit]")
        wait_until(lambda: locust_state(url)[0] == "running", timeout=30, what="the run to start")
        seen, deadline = [], time.monotonic() + 4 * ramp_stage(peak, rate) + 60
        while time.monotonic() < deadline:
            state, user_count = locust_state(url)
            seen.append(user_count)
            if state == "stopped":
                break
            time.sleep(0.1)
        assert state == "stopped", "the ramp did not end by itself"
        assert max(seen) == peak, seen  # the form's users, not the 30 it was started with
        assert seen[-1] == 0
    finally:
        terminate(locust, 20)
        log.close()
