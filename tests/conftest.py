"""Fixtures: a real MariaDB database the suite creates, a Redis db flushed around each test,
the app, its test client and CLI runner, and real gunicorn servers."""
import os

import pytest
import redis

from coupon import create_app
from coupon.signing import Signer
from tests.support import SECRET, Gunicorn, Scheduler, app_config, fresh_database, service_env

MYSQL_URL = os.environ.get("TEST_DATABASE_URL", "mysql+pymysql://root@127.0.0.1:3306/coupon_test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def pytest_sessionstart(session):
    """Stop at once, in one line per missing service, when Redis or MariaDB does not answer."""
    from tests.services import missing_services

    missing = missing_services(MYSQL_URL, REDIS_URL)
    if missing:
        raise pytest.UsageError("the tests need " + "\n  and ".join(missing))


@pytest.fixture(scope="session")
def mysql_url():
    """Create the suite's own database (dropped and made anew each run) with the tables."""
    fresh_database(MYSQL_URL)
    return MYSQL_URL


@pytest.fixture
def redis_url():
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield REDIS_URL
    client.flushdb()
    client.close()


@pytest.fixture
def redis_client(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def app(mysql_url, redis_url):
    app = create_app(app_config(mysql_url, redis_url))
    yield app
    app.extensions["coupon"].engine.dispose()


@pytest.fixture
def svc(app):
    return app.extensions["coupon"]


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
def env(mysql_url, redis_url):
    return service_env(mysql_url, redis_url)


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
        server.stop()


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
