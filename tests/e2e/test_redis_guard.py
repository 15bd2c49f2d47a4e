"""A Redis that would lose claims, on real private servers: named at start and in /readyz; in
production not ready and the scheduler idle while it lasts, ready again once an operator fixes it
(no restart); what cannot be checked is said, not fatal. The service's Redis user may not run
CONFIG, as on managed Redis: the checks read INFO only. Every master of the session's cluster
checked, in this process: integration/test_redis_guard.py."""
import logging
import subprocess
import sys
import time

import pytest
from sqlalchemy import select

from coupon import campaigns, create_app, db, redis_guard
from coupon.clock import utcnow
from coupon.keys import SCHEDULER_LEADER
from loadtest.harness import ROOT, Gunicorn, RedisServer, Scheduler, service_env, wait_until
from tests.support import FAST_JOBS, app_config, get

PROBLEM_WAIT = redis_guard.CHECK_EVERY * 2 + 10  # seconds: a fix is seen within a re-check


def service_user(server, *rules):
    """The URL of a Redis user of `server` allowed everything but CONFIG (and `rules`)."""
    with server.client() as admin:
        admin.execute_command("ACL", "SETUSER", "coupon", "on", ">pw", "~*", "&*", "+@all", "-config", *rules)
    return f"redis://coupon:pw@127.0.0.1:{server.port}/0"


@pytest.fixture
def lossy_redis(tmp_path):
    """A private Redis that evicts (allkeys-lru) and keeps no append-only file."""
    server = RedisServer(tmp_path, "no file", "--maxmemory-policy", "allkeys-lru")
    yield server
    server.stop()


def status_of(engine, campaign_id):
    with engine.connect() as conn:
        return conn.execute(select(db.campaigns.c.status).where(db.campaigns.c.id == campaign_id)).scalar()


def test_production_is_not_ready_and_the_scheduler_idle_until_redis_is_fixed(mysql_url, lossy_redis):
    url = service_user(lossy_redis)
    env = service_env(mysql_url, url, ENV="production")
    app = create_app(app_config(mysql_url, url))
    svc = app.extensions["coupon"]
    started = []
    try:
        started.append(Gunicorn(env, workers=1))
        web = started[0]
        started.append(Scheduler(env, **FAST_JOBS))
        jobs = started[1]
        # due at once: a scheduler that acts opens it within LIFECYCLE_INTERVAL
        campaign_id = campaigns.create_campaign(svc, "guarded", 10, opens_at=utcnow())
        wait_until(lambda: svc.redis.get(SCHEDULER_LEADER), what="the scheduler to lead")

        status, body = get(web.url, "/readyz")
        assert status == 503, body
        settings = body["checks"]["redis settings"]
        assert "maxmemory-policy allkeys-lru" in settings and "set maxmemory-policy noeviction" in settings
        assert "appendonly no" in settings and "set appendonly yes" in settings
        assert body["checks"]["redis"] == body["checks"]["database"] == "ok"
        wait_until(lambda: "set maxmemory-policy noeviction" in jobs.output(),
                   what="the scheduler to say why")
        for _ in range(4):  # a lifecycle run every 0.5 s, none acting
            assert status_of(svc.engine, campaign_id) == "scheduled"
            time.sleep(0.5)

        with lossy_redis.client() as admin:  # the operator fixes one setting, then the other
            admin.config_set("maxmemory-policy", "noeviction")
            wait_until(lambda: "allkeys-lru" not in get(web.url, "/readyz")[1]["checks"]["redis settings"],
                       timeout=PROBLEM_WAIT, what="/readyz to see the policy fixed")
            assert get(web.url, "/readyz")[0] == 503  # still: no append-only file
            admin.config_set("appendonly", "yes")
        wait_until(lambda: get(web.url, "/readyz")[0] == 200, timeout=PROBLEM_WAIT, what="/readyz 200")
        wait_until(lambda: status_of(svc.engine, campaign_id) == "open", timeout=PROBLEM_WAIT,
                   what="the scheduler to act again")
        assert get(web.url, "/readyz")[1]["checks"]["redis settings"] == "ok"
        out = jobs.output()
        said = [line for line in out.splitlines() if "has maxmemory-policy allkeys-lru" in line]
        assert len(said) == 2 and "fixed: Redis" in said[1]  # said once, then its end
        web.log.seek(0)
        assert "has appendonly no" in web.log.read()  # the web worker said it at start
    finally:
        for process in started:
            process.stop()
        svc.engine.dispose()


def test_development_warns_once_and_stays_ready(mysql_url, lossy_redis, monkeypatch, caplog):
    monkeypatch.setattr(redis_guard, "CHECK_EVERY", 0)  # read again at every ask
    caplog.set_level(logging.WARNING, logger="coupon")
    app = create_app(app_config(mysql_url, service_user(lossy_redis)))
    client = app.test_client()
    for _ in range(3):
        response = client.get("/readyz")
        assert response.status_code == 200
        assert response.json["checks"]["redis settings"] == "ok"
        (warning,) = response.json["warnings"]
        assert "maxmemory-policy allkeys-lru" in warning  # no append-only file: production only
    assert [r.getMessage() for r in caplog.records].count(warning) == 1
    app.extensions["coupon"].engine.dispose()


def test_info_refused_is_said_unchecked_without_crashing(mysql_url, lossy_redis):
    url = service_user(lossy_redis, "-info")
    app = create_app(app_config(mysql_url, url, ENV="production"))
    response = app.test_client().get("/readyz")
    assert response.status_code == 503  # the replication check needs INFO too
    (warning,) = response.json["warnings"]
    assert "could not be checked: INFO refused" in warning
    assert response.json["checks"]["redis settings"] == "ok"  # nothing seen, nothing refused
    app.extensions["coupon"].engine.dispose()


def test_the_cli_says_it_at_start(mysql_url, lossy_redis):
    env = dict(service_env(mysql_url, service_user(lossy_redis)), FLASK_APP="app.py")
    done = subprocess.run([sys.executable, "-m", "flask", "campaign", "list"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr  # a warning in development: the command runs
    (line,) = done.stderr.splitlines()
    assert line.startswith("Redis 127.0.0.1:") and "set maxmemory-policy noeviction" in line
