"""What more than one test uses: HTTP calls on fresh connections, a flood of concurrent clients,
the test app's settings, the checks of exact tickets and of JSON errors, a campaign's stock
additions, Prometheus samples (and /metrics scraped through a test client until it moves), a
campaign's Redis state lost and checked after a rebuild, a TCP proxy to slow down or cut. The
processes, the database and the campaigns they run on come from loadtest/harness.py."""
import functools
import http.client
import json
import queue
import random
import re
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.parser import text_string_to_metric_families

from coupon import clock, db, redis_state
from coupon.claims import ClaimSender
from coupon.keys import ACTIVE, bucket_count
from coupon.outbox import outbox_stats
from coupon.queries import stock_additions
from coupon.redis_state import Layout
from coupon.scripts import StoredClaim
from loadtest.harness import SECRET, RedisTarget, free_port, wait_until

# the scheduler's jobs at a pace a test can wait for
FAST_JOBS = dict(FLUSH_INTERVAL=0.2, STOCK_SYNC_INTERVAL=0.5, LIFECYCLE_INTERVAL=0.5,
                 RECLAIM_INTERVAL=0.5, SCHEDULER_LEASE=2, FLUSH_CLAIM_IDLE=1)


# a test that runs on a single Redis and on the session's Redis Cluster (fixture redis_kind)
on_single_and_cluster = pytest.mark.parametrize("redis_kind", ["single", "cluster"])


def app_config(database_url, redis_target, **extra):
    """The settings of an app made in this process (create_app); redis_target: RedisTarget.of."""
    return dict(TESTING=True, SECRET_KEY=SECRET, DATABASE_URL=database_url,
                **RedisTarget.of(redis_target).settings(), **extra)


def stop_at_once(server, timeout=30):
    """Stop a harness.Gunicorn a test is done with as Ctrl-C does (SIGINT: its workers exit at once),
    not gracefully (SIGTERM: a worker waits for the connections a client keeps open). The graceful
    stop is tested where it matters (e2e/test_start_stop.py, e2e/test_faults.py,
    e2e/test_issue_flood.py)."""
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGINT)
        try:
            server.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass  # server.stop() sends SIGTERM, then kills
    server.stop()


def request(base_url, method, path, token=None, body=None, headers=None, timeout=30):
    """One HTTP request on a fresh connection; returns (status, parsed JSON body, headers)."""
    host, port = base_url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    hdrs = dict(headers or {})
    if token:
        hdrs["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None, dict(resp.getheaders())
    finally:
        conn.close()


def get(base_url, path, token=None):
    status, body, _ = request(base_url, "GET", path, token)
    return status, body


def flood(calls, concurrency=100):
    """Run calls (zero-argument functions) from `concurrency` threads; the first wave starts at once."""
    wave = min(concurrency, len(calls))
    arrived, go, lock = [0], threading.Event(), threading.Lock()

    def run(call):
        with lock:
            arrived[0] += 1
            if arrived[0] >= wave:
                go.set()
        go.wait(timeout=10)
        return call()

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(run, calls))


def issue_call(base_url, campaign_id, user_id, token):
    def call():
        status, body, _ = request(base_url, "POST", f"/api/v1/campaigns/{campaign_id}/issue", token)
        return user_id, status, body

    return call


def fresh_window(window, need):
    """Sleep, if need be, so that `need` seconds remain in the current fixed rate-limit window."""
    left = window - time.time() % window
    if left < need:
        time.sleep(left + 0.01)


def claim_sender(svc, signer, keys):
    """A ClaimSender of the campaign (claim.lua's caller), as a worker that loaded it has."""
    layout = Layout.of(svc.redis.hgetall(keys.meta))
    code_of = functools.partial(signer.ticket_code, keys.campaign_id)
    return ClaimSender(svc.redis, svc.scripts.claim, keys, layout, svc.rate_limit, code_of)


def issue_directly(svc, campaign_id, user_id):
    """Issue through this process's Issuer, as a worker would (no HTTP): the ticket."""
    return svc.issuer.issue(svc.issuer.admit(campaign_id), user_id)


def additions(svc, campaign_id):
    """[(request id, amount, total after)] of the campaign's stock additions."""
    return [(a["request_id"], a["amount"], a["total_after"])
            for a in stock_additions(svc.engine, campaign_id)]


def backlog(svc, campaign_id):
    """The campaign's claims not yet in the database (outbox.outbox_stats)."""
    return outbox_stats(svc.redis, svc.keys(campaign_id))[0]


def campaign_ids_in_keys(keys):
    """The campaign ids Redis keys belong to: {c:ID}:... (home) and {sK.N}:c:ID:... (shards)."""
    return {int(m.group(1)) for key in keys for m in [re.search(r"(?:^\{|\}:)c:(\d+)", key)] if m}


def assert_exact_tickets(results, signer, campaign_id, stock):
    """201s are one per user with distinct serials in 1..stock and valid codes; return them."""
    new = [body for _, status, body in results if status == 201]
    assert len({t["user_id"] for t in new}) == len(new)
    assert len({t["serial"] for t in new}) == len(new)
    assert all(1 <= t["serial"] <= stock for t in new)
    assert all(t["code"] == signer.ticket_code(campaign_id, t["serial"]) for t in new)
    return new


def answered(results):
    """{user: (serial, code)} of every 2xx answer."""
    return {u: (b["serial"], b["code"]) for u, status, b in results if status in (200, 201)}


def issue(client, campaign_id, token=None, **kwargs):
    """POST .../issue through a Flask test client."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post(f"/api/v1/campaigns/{campaign_id}/issue", headers=headers, **kwargs)


def error_of(response):
    """(status, code) of a JSON error in the shape of every error (a code and a message), with no
    trace in it; fails unless it is one. response: a Flask test client's, or a raw HTTP answer
    (support_http.Answer, which reads alike)."""
    assert response is not None, "the connection closed without an answer"
    text = response.get_data(as_text=True)
    assert response.is_json, f"not JSON: {response.status_code} {text[:300]}"
    body = response.json
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, dict), f"not a JSON error: {response.status_code} {text[:300]}"
    assert isinstance(error.get("code"), str) and error.get("message"), f"not a JSON error: {text[:300]}"
    assert "Traceback" not in text, text
    return response.status_code, error["code"]


def assert_error(response, status, code):
    """The response is the JSON error `code` with `status` (see error_of)."""
    found = error_of(response)
    assert found == (status, code), \
        f"expected {status} {code}, got {found}: {response.get_data(as_text=True)[:300]}"


# --- Prometheus text ---

def get_text(base_url, path):
    """GET on a fresh connection; the body as text, whatever the status."""
    host, port = base_url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def samples(text):
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }


def outcome(values, code):
    """coupon_issue_total of an outcome, in samples()."""
    return values.get(("coupon_issue_total", (("outcome", code),)), 0)


# The figures read from Redis and the database at scrape time are cached for SCRAPE_CACHE (2 s)
# per process: a test polls /metrics until they move, within margins for a loaded machine.

def scrape(client):
    response = client.get("/metrics")
    assert response.status_code == 200
    return samples(response.get_data(as_text=True))


def value(values, metric, /, **labels):
    """The sample's value, or None if /metrics does not have it."""
    return values.get((metric, tuple(sorted(labels.items()))))


def poll(client, check, what, timeout=15):
    """Scrape until check(values) holds; return those values."""
    return wait_until(lambda: (lambda v: check(v) and v)(scrape(client)), timeout=timeout, what=what)


# --- a campaign's Redis state lost, and rebuilt from the rows ---

def lose(svc, campaign_id):
    """What Redis holds of the campaign is gone, as after a restart without a file."""
    redis_state.delete_keys(svc.redis, svc.keys(campaign_id))
    svc.redis.srem(ACTIVE, campaign_id)


def rows_of(svc, campaign_id):
    """{user: coupons row} of a campaign."""
    with svc.engine.connect() as conn:
        return {r.user_id: r for r in conn.execute(
            db.coupons.select().where(db.coupons.c.campaign_id == campaign_id))}


def assert_rebuilt_from(redis_client, keys, rows, row):
    """Redis holds exactly what the rows ({user: coupons row}) and the campaigns row imply: each
    claim in its shard's bucket, each shard's bitmap and counter, the cursor at the highest
    serial, the serials below it that no row holds returned, no lease, the window; one new layout
    throughout (epoch, the buckets of the total, time base)."""
    cursor = max((r.serial for r in rows.values()), default=0)
    meta = redis_client.hgetall(keys.meta)
    layout = redis_state.Layout.of(meta)
    for field in layout.fields():
        del meta[field]
    assert len(layout.epoch) >= 12 and layout.buckets == bucket_count(row.total, keys.shards)
    assert meta == {"total": str(row.total), "cursor": str(cursor), "status": "open",
                    "opens_at": str(clock.to_ms(row.opens_at)), "closes_at": str(clock.to_ms(row.closes_at))}
    held = {r.serial for r in rows.values()}
    holes = [str(s) for s in range(1, cursor) if s not in held]
    assert redis_client.lrange(keys.returned, 0, -1) == holes
    assert not redis_client.exists(keys.leases, keys.lease_serials)
    assert str(keys.campaign_id) in redis_client.smembers(ACTIVE)
    for k, shard in enumerate(keys.all_shards()):
        mine = {u: r for u, r in rows.items() if keys.shard_of(u) == k}
        for i in range(layout.buckets):
            assert redis_client.hgetall(shard.bucket(i)) == {
                u: StoredClaim(r.serial, clock.to_ms(r.issued_at)).encode(layout.time_base)
                for u, r in mine.items() if keys.bucket_of(u, layout.buckets) == i}
        assert redis_client.bitcount(shard.claimed) == len(mine)
        assert all(redis_client.getbit(shard.claimed, r.serial) for r in mine.values())
        state = {"issued": str(len(mine)), "flushed": str(len(mine)),
                 **{f: str(v) for f, v in layout.fields().items()}}
        if row.closes_at:
            state["closes_at"] = str(clock.to_ms(row.closes_at))
        assert redis_client.hgetall(shard.state) == state
        assert redis_client.xlen(shard.outbox) == 0


class TcpProxy:
    """A loopback TCP forwarder to `upstream` that a test can slow down (latency added to every
    round trip, with jitter), cut (listener and every connection closed, so clients see refused
    and dropped connections) and restore on the same port."""

    def __init__(self, upstream_port, upstream_host="127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets = set()
        self._listener = None
        self._one_way = (0.0, 0.0)  # seconds each chunk waits each way, and its jitter (±, uniform)
        self.restore()

    def slow(self, rtt, jitter=0.0):
        """Add `rtt` seconds (± `jitter`) to every round trip from now on, half of it each way."""
        self._one_way = (rtt / 2, jitter / 2)

    def restore(self):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self):
        listener, self._listener = self._listener, None
        if listener is not None:
            _close(listener)  # shutdown() wakes the thread blocked in accept()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            _close(sock)

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if listener is not self._listener:  # cut meanwhile
                    _close(client), _close(upstream)
                    return
                self._sockets.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                chunks = queue.SimpleQueue()  # (when due, bytes); None: src ended
                threading.Thread(target=self._read, args=(src, chunks), daemon=True).start()
                threading.Thread(target=self._deliver, args=(chunks, src, dst), daemon=True).start()

    def _read(self, src, chunks):
        try:
            while data := src.recv(65536):
                delay, jitter = self._one_way
                chunks.put((time.monotonic() + max(0.0, delay + random.uniform(-jitter, jitter)), data))
        except OSError:
            pass
        finally:
            chunks.put(None)

    def _deliver(self, chunks, src, dst):
        """Send each chunk once its time has come, in the order read (a delay of its own for
        each, not one added to the next: latency, not a slower link)."""
        try:
            while (chunk := chunks.get()) is not None:
                due, data = chunk
                time.sleep(max(0.0, due - time.monotonic()))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._sockets.difference_update((src, dst))
            _close(src), _close(dst)


def _close(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
