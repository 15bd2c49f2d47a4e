"""Where the time goes (metrics.IssueParts, the flush's parts): one part is slowed on purpose, and
exactly its figure moves while every other one stays put. In this process, against real Redis
(through a slowed TCP proxy), a real IdP's JWKS (served through one, or a big one re-read on every
check), a front proxy's X-Request-Start and real MariaDB (a table locked meanwhile)."""
import gc
import json
import threading
import time

import pytest
from sqlalchemy import text

from coupon import create_app
from coupon.flusher import Flusher
from coupon.jwks import MAX_JWKS_BYTES
from coupon.metrics import FLUSH_PARTS, ISSUE_PARTS
from loadtest.harness import RedisTarget, open_campaign
from tests.jwks_keys import KEYS, JwksServer, sign
from tests.support import TcpProxy, app_config, issue

SLOW = 0.6  # seconds a slowed part is made to take at least: far above what any part takes here
# what every other part may move by meanwhile: a few round trips to a local Redis, a preemption
# or two on a loaded 2-core machine, far below SLOW (with 0.1 s, a CI run once had one part of
# an unslowed request at 0.1 s or more: a stall of the machine or of the test's Redis)
STILL = SLOW / 3
PARTS = ISSUE_PARTS + tuple(f"flush {part}" for part in FLUSH_PARTS)
IDP = dict(AUTH_ISSUER="https://idp.test/", AUTH_AUDIENCE="coupon")


@pytest.fixture(autouse=True)
def no_collection_midway():
    """No pause of the garbage collector in a measured part: this process's heap is big by now."""
    gc.collect()
    gc.disable()
    yield
    gc.enable()


def spent(svc):
    """{part: seconds} so far, the issue's and the flush's parts together."""
    figures = svc.metrics.totals()["time"]
    return {**figures["issue"], **{f"flush {part}": s for part, s in figures["flush"].items()}}


def moved(before, after):
    return {part: after[part] - before[part] for part in after}


def assert_only(took, slowed, at_least):
    """The parts `slowed` moved by `at_least` seconds each; every other part by under STILL."""
    assert set(took) == set(PARTS), took
    assert all(took[part] >= at_least for part in slowed), took
    # (the parts that moved named first: pytest cuts a long dict short)
    assert all(took[part] < STILL for part in PARTS if part not in slowed), (
        {part: s for part, s in took.items() if s >= STILL}, took)


def through_proxy(redis_target):
    host, port = redis_target.url.split("//")[1].split("/")[0].split(":")
    return TcpProxy(int(port), host)


def idp_token(user):
    now = int(time.time())
    return sign("rsa-1", {"iss": "https://idp.test/", "aud": "coupon", "sub": user,
                          "iat": now, "exp": now + 600})


def test_a_slow_redis_shows_in_the_claim_round_trip(mysql_url, redis_target, signer):
    proxy = through_proxy(redis_target)
    try:
        slow = RedisTarget(f"redis://127.0.0.1:{proxy.port}/{redis_target.url.rsplit('/', 1)[1]}")
        # far past the slowed round trip, however loaded the machine: no call times out. Of the
        # parts, three read Redis: the claim (its round trip), the serial (a refill: none with a
        # block at hand) and the admission, when the worker's state of the campaign is older than
        # STATE_REFRESH or Redis's clock is due to be sampled again (RedisClock.SAMPLE_EVERY).
        # Neither is due here: the state is trusted for a minute and the clock just sampled
        app = create_app(app_config(mysql_url, slow, REDIS_TIMEOUT=10.0, STATE_REFRESH=60.0))
        svc, client = app.extensions["coupon"], app.test_client()
        campaign_id = open_campaign(svc, 100_000)  # a block at hand: no lease in the way
        assert issue(client, campaign_id, signer.mint("first")).status_code == 201
        token = signer.mint("second")
        svc.clock.sample()
        proxy.slow(SLOW)
        before = spent(svc)
        assert issue(client, campaign_id, token).status_code == 201
        assert_only(moved(before, spent(svc)), ["claim"], SLOW * 0.9)
        svc.engine.dispose()
    finally:
        proxy.cut()


def test_a_slow_identity_provider_shows_in_the_token_check(mysql_url, redis_target, svc):
    with JwksServer("rsa-1") as idp:
        proxy = TcpProxy(int(idp.url.split(":")[2].split("/")[0]))
        try:
            proxy.slow(SLOW)
            app = create_app(app_config(
                mysql_url, redis_target, AUTH_JWKS_URL=f"http://127.0.0.1:{proxy.port}/jwks.json",
                **IDP))
            web, client = app.extensions["coupon"], app.test_client()
            campaign_id = open_campaign(svc, 100)
            token = idp_token("u1")
            before = spent(web)
            assert issue(client, campaign_id, token).status_code == 201  # the first fetches the JWKS
            assert_only(moved(before, spent(web)), ["token"], SLOW * 0.9)
            web.engine.dispose()
        finally:
            proxy.cut()


def test_a_cpu_bound_token_check_shows_in_the_token_check(mysql_url, redis_target, svc, tmp_path):
    # an IdP's JWKS of ~2,000 RSA keys (1 MB, the most a fetch reads) re-read on every check
    # (AUTH_JWKS_REFRESH=0): each check builds every key anew, ~0.25 s of CPU here, no waiting
    one = KEYS["rsa-1"].public
    copies = int(MAX_JWKS_BYTES * 0.9) // len(json.dumps(one))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [one] + [dict(one, kid=f"copy-{i}") for i in range(copies)]}))
    app = create_app(app_config(mysql_url, redis_target, AUTH_JWKS_URL=jwks.as_uri(),
                                AUTH_JWKS_REFRESH=0.0, **IDP))
    web, client = app.extensions["coupon"], app.test_client()
    campaign_id = open_campaign(svc, 100_000)
    assert issue(client, campaign_id, idp_token("first")).status_code == 201  # loads the campaign
    before, cpu, users = spent(web), 0.0, 0
    while cpu < 3 * SLOW and users < 50:  # a few checks: how many depends on the machine's speed
        token, users = idp_token(f"u{users}"), users + 1
        at = time.thread_time()  # the request runs in this thread (Flask's test client)
        assert issue(client, campaign_id, token).status_code == 201
        cpu += time.thread_time() - at
    took = moved(before, spent(web))
    assert cpu >= 3 * SLOW, (cpu, users)
    # wall time, at least the CPU the checks spent (more when the machine is busy)
    assert_only(took, ["token"], cpu * 0.8)
    web.engine.dispose()


def test_a_request_queued_at_the_front_proxy_shows_in_queued(mysql_url, redis_target, signer):
    app = create_app(app_config(mysql_url, redis_target, TRUST_REQUEST_START=True))
    svc, client = app.extensions["coupon"], app.test_client()
    campaign_id = open_campaign(svc, 100_000)
    assert issue(client, campaign_id, signer.mint("first")).status_code == 201  # loads the campaign
    token = signer.mint("second")
    queued = 2 * SLOW
    before = spent(svc)
    # as nginx writes it (t=${msec}): the request reached the proxy `queued` seconds ago
    started = f"t={time.time() - queued:.3f}"
    assert client.post(f"/api/v1/campaigns/{campaign_id}/issue", headers={
        "Authorization": f"Bearer {token}", "X-Request-Start": started}).status_code == 201
    took = moved(before, spent(svc))
    assert_only(took, ["queued"], queued - 0.001)  # the header's milliseconds
    assert took["queued"] < queued + STILL, took
    svc.engine.dispose()


def test_a_locked_table_shows_in_the_flush_write(svc, signer, client):
    campaign_id = open_campaign(svc, 100)
    for i in range(20):
        assert issue(client, campaign_id, signer.mint(f"u{i}")).status_code == 201
    with svc.engine.connect() as locker:
        locker.execute(text("LOCK TABLES coupons WRITE"))
        unlock = threading.Timer(SLOW * 2, lambda: locker.execute(text("UNLOCK TABLES")))
        before = spent(svc)
        unlock.start()
        try:
            assert Flusher(svc, "test").flush([campaign_id]) == 20
        finally:
            unlock.join()
    assert_only(moved(before, spent(svc)), ["flush write"], SLOW * 1.8)
