"""Where the time goes (metrics.IssueParts, the flush's parts): one part is slowed on purpose, and
exactly its figure moves. In this process, against real Redis (through a slowed TCP proxy), a real
IdP's JWKS (served through one) and real MariaDB (a table locked meanwhile)."""
import threading
import time

from sqlalchemy import text

from coupon import create_app
from coupon.flusher import Flusher
from loadtest.harness import RedisTarget, open_campaign
from tests.jwks_keys import JwksServer, sign
from tests.support import TcpProxy, app_config, issue

SLOW = 0.3  # seconds a slowed part is made to take at least: far above what any part takes here


def spent(svc):
    """{part: seconds} so far, the issue's and the flush's parts together."""
    figures = svc.metrics.totals()["time"]
    return {**figures["issue"], **{f"flush {part}": s for part, s in figures["flush"].items()}}


def moved(before, after):
    return {part: after[part] - before[part] for part in after}


def through_proxy(redis_target):
    host, port = redis_target.url.split("//")[1].split("/")[0].split(":")
    return TcpProxy(int(port), host)


def test_a_slow_redis_shows_in_the_claim_round_trip(mysql_url, redis_target, signer):
    proxy = through_proxy(redis_target)
    try:
        slow = RedisTarget(f"redis://127.0.0.1:{proxy.port}/{redis_target.url.rsplit('/', 1)[1]}")
        # far past the slowed round trip, however loaded the machine: no call times out
        app = create_app(app_config(mysql_url, slow, REDIS_TIMEOUT=10.0))
        svc, client = app.extensions["coupon"], app.test_client()
        campaign_id = open_campaign(svc, 100_000)  # a block at hand: no lease in the way
        assert issue(client, campaign_id, signer.mint("first")).status_code == 201
        proxy.slow(SLOW)
        before = spent(svc)
        assert issue(client, campaign_id, signer.mint("second")).status_code == 201
        took = moved(before, spent(svc))
        assert took["claim"] >= SLOW * 0.9, took
        assert took["token"] < SLOW / 3 and took["serial"] < SLOW / 3, took
        app.extensions["coupon"].engine.dispose()
    finally:
        proxy.cut()


def test_a_slow_identity_provider_shows_in_the_token_check(mysql_url, redis_target, svc):
    settings = dict(AUTH_ISSUER="https://idp.test/", AUTH_AUDIENCE="coupon")
    with JwksServer("rsa-1") as idp:
        proxy = TcpProxy(int(idp.url.split(":")[2].split("/")[0]))
        try:
            proxy.slow(SLOW)
            app = create_app(app_config(
                mysql_url, redis_target, AUTH_JWKS_URL=f"http://127.0.0.1:{proxy.port}/jwks.json",
                **settings))
            web, client = app.extensions["coupon"], app.test_client()
            campaign_id = open_campaign(svc, 100)
            now = int(time.time())
            token = sign("rsa-1", {"iss": "https://idp.test/", "aud": "coupon", "sub": "u1",
                                   "iat": now, "exp": now + 600})
            before = spent(web)
            assert issue(client, campaign_id, token).status_code == 201  # the first fetches the JWKS
            took = moved(before, spent(web))
            assert took["token"] >= SLOW * 0.9, took
            assert took["claim"] < SLOW / 3 and took["admit"] < SLOW / 3, took
            web.engine.dispose()
        finally:
            proxy.cut()


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
    took = moved(before, spent(svc))
    assert took["flush write"] >= SLOW * 1.8, took
    assert took["flush read"] < SLOW and took["flush ack"] < SLOW, took
