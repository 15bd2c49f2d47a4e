"""Fixtures: a real MariaDB database the suite creates, a Redis db (or, for tests parametrized
with support.on_single_and_cluster, a real Redis Cluster) flushed around each test, the app,
its test client and CLI runner, its services with the tests' event broker, and real gunicorn
servers. The servers of a run log to a folder of its own, removed when every test passed."""
import os
import shutil
import time

import pytest
import redis
from playwright.sync_api import sync_playwright

from coupon import create_app
from coupon.signing import Signer
from loadtest import harness
from loadtest.harness import (
    SECRET, Gunicorn, LocalCluster, RedisServer, RedisTarget, Scheduler, fresh_database,
    open_campaign, service_env,
)
from tests.services import EVENTS_URL, missing_services
from tests.support import app_config, stop_at_once
from tests.flood import NODE_TIMEOUT_MS

MYSQL_URL = os.environ.get("TEST_DATABASE_URL", "mysql+pymysql://root@127.0.0.1:3306/coupon_test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
UNIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "unit")  # tests that need neither


def pytest_configure(config):
    harness.LOG_DIR = os.path.join(harness.ROOT, "instance", "test-runs",
                                   time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}")


def pytest_sessionfinish(session, exitstatus):
    if exitstatus == 0:
        shutil.rmtree(harness.LOG_DIR, ignore_errors=True)


def pytest_terminal_summary(terminalreporter, exitstatus):
    if exitstatus != 0 and os.path.isdir(harness.LOG_DIR):
        terminalreporter.write_line(f"the servers' logs of this run: {harness.LOG_DIR}")


def pytest_collection_finish(session):
    """Stop before the first test, in one line per missing service, when Redis or MariaDB does
    not answer and a test collected needs them (any outside tests/unit/), or RabbitMQ and a test
    of a module that names the tests' broker (EVENTS_URL) was collected."""
    if all(item.path.is_relative_to(UNIT) for item in session.items):
        return
    needs_broker = any(getattr(item.module, "EVENTS_URL", None) == EVENTS_URL
                       for item in session.items if getattr(item, "module", None))
    missing = missing_services(MYSQL_URL, REDIS_URL, EVENTS_URL if needs_broker else None)
    if missing:
        raise pytest.UsageError("the tests need " + "\n  and ".join(missing))


@pytest.fixture(scope="session")
def mysql_url():
    """Create the suite's own database (dropped and made anew each run) with the tables."""
    fresh_database(MYSQL_URL)
    return MYSQL_URL


@pytest.fixture(scope="session")
def session_cluster(tmp_path_factory):
    """A real 3-master, 3-replica Redis Cluster, started once when a test first asks for it."""
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_kind():
    """A single Redis, unless the test is parametrized (support.on_single_and_cluster)."""
    return "single"


@pytest.fixture
def redis_target(redis_kind, request):
    """The test's Redis (a RedisTarget), empty before and after."""
    if redis_kind == "cluster":
        cluster = request.getfixturevalue("session_cluster")
        cluster.flush()
        yield RedisTarget(cluster_nodes=cluster.startup_nodes)
        cluster.flush()
        return
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield RedisTarget(REDIS_URL)
    client.flushdb()
    client.close()


@pytest.fixture
def redis_client(redis_target):
    client = redis_target.client()
    yield client
    client.close()


@pytest.fixture
def app(mysql_url, redis_target):
    app = create_app(app_config(mysql_url, redis_target))
    yield app
    app.extensions["coupon"].engine.dispose()


@pytest.fixture
def make_app(mysql_url, redis_target):
    """Make more apps on the test's database and Redis (`make_app(ENV="production", ...)`: extra
    settings). Each has its own Issuer and leases: another web worker, as far as Redis can tell.
    Their engines are disposed after the test."""
    made = []

    def make(**settings):
        made.append(create_app(app_config(mysql_url, redis_target, **settings)))
        return made[-1]

    yield make
    for app in made:
        app.extensions["coupon"].engine.dispose()


@pytest.fixture
def svc(app):
    return app.extensions["coupon"]


@pytest.fixture
def events_svc(mysql_url, redis_target):
    """The services in this process with EVENTS_URL set (opens and closes write their events)."""
    app = create_app(app_config(mysql_url, redis_target, EVENTS_URL=EVENTS_URL))
    yield app.extensions["coupon"]
    app.extensions["coupon"].engine.dispose()


@pytest.fixture
def open_id(svc):
    """The id of a campaign of 2 coupons, named "open", open now."""
    return open_campaign(svc, 2, "open")


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def signer():
    return Signer(SECRET, 3600)


@pytest.fixture
def env(mysql_url, redis_target):
    return service_env(mysql_url, redis_target)


@pytest.fixture
def gunicorn(env):
    """Start real gunicorn masters (`gunicorn(workers=4)`); all are stopped after the test."""
    started = []

    def start(workers=2, **settings):
        server = Gunicorn(env, workers=workers, **settings)
        started.append(server)
        return server

    yield start
    for server in started:
        stop_at_once(server)


@pytest.fixture
def scheduler(env):
    """Start real `flask jobs run` processes (`scheduler(LEASE_TTL=2)`); all stopped after the test."""
    started = []

    def start(**settings):
        process = Scheduler(env, **settings)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def private_redis(tmp_path, request):
    """A Redis of the test's own, with an append-only file: to kill and restart. Parametrized
    indirectly, its appendfsync: "no file" for none (killed, it comes back empty)."""
    server = RedisServer(tmp_path, appendfsync=getattr(request, "param", "always"))
    yield server
    server.stop()


@pytest.fixture
def private_cluster(tmp_path):
    """A cluster of the test's own (3 masters, 3 replicas): to kill, hang and restart nodes of."""
    cluster = LocalCluster(tmp_path, node_timeout_ms=NODE_TIMEOUT_MS)
    yield cluster
    cluster.stop()


CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


@pytest.fixture
def browser():
    """Headless Debian chromium, driven by Playwright (which downloads no browser of its own)."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run installs it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()
