"""The harness of the fault tests: a flood of real users in waves through a real gunicorn, a
fault injected once or every few seconds while it runs, and the checks after close (every answer
told has its row, issued = N, no serial or user twice)."""
import http.client
import random
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass

from redis.exceptions import RedisError

from coupon import campaigns, create_app, redis_state
from coupon.reconcile import mysql_tickets
from loadtest.harness import Gunicorn, Scheduler, service_env, wait_until
from tests.support import FAST_JOBS, app_config, flood, request, stop_at_once

STOCK = 1000
USERS = 5000  # distinct users; a fifth of each wave are earlier users asking again


@dataclass
class Attempt:
    """One user's issue call in a flood: the answer, when it was sent and how long it took."""
    user: str
    status: object  # the HTTP status; "dropped": connection reset or refused; "timeout"
    body: object
    started: float  # time.monotonic()
    took: float


def ask(url, campaign_id, user, token, heard=None):
    """A user's issue call; `heard`, a list, also gets its Attempt as soon as it is answered."""
    def call():
        started = time.monotonic()
        try:
            status, body, _ = request(url, "POST", f"/api/v1/campaigns/{campaign_id}/issue", token, timeout=10)
        except TimeoutError:
            status, body = "timeout", None
        except (OSError, http.client.HTTPException) as e:  # the worker died under the request
            status, body = "dropped", type(e).__name__
        attempt = Attempt(user, status, body, started, time.monotonic() - started)
        if heard is not None:
            heard.append(attempt)
        return attempt

    return call


def issued_counter(svc, campaign_id):
    """issued() -> the campaign's issued counters summed in Redis; 0 while Redis is unreachable."""
    def issued():
        try:
            return redis_state.issued_in_redis(svc.redis, svc.keys(campaign_id)) or 0
        except RedisError:
            return 0

    return issued


def demand(url, campaign_id, signer, issued, seconds, wave=100, pause=0.3, concurrency=50, busy=None,
           heard=None):
    """Send the USERS in waves, each with a fifth of earlier users asking again; paced while stock
    remains, then at full speed. Past USERS, go on with fresh users until issued() reaches STOCK
    (serials of dead workers come back late) or `seconds` pass. `busy`, an Event, is set while a
    wave is in flight; `heard`, a list, gets each answer as it comes. Returns (answers, tokens)."""
    rnd = random.Random(5)
    deadline = time.monotonic() + seconds
    tokens, answers, sent = {}, [], 0
    while time.monotonic() < deadline:
        sold = issued() >= STOCK
        if sold and sent >= USERS:
            break
        size = min(5 * wave, USERS - sent) if sold else wave
        fresh = [f"u{i}" for i in range(sent, sent + size)]
        tokens.update((u, signer.mint(u)) for u in fresh)
        batch = fresh + rnd.sample(sorted(tokens), k=min(sent, size // 5))
        sent += size
        rnd.shuffle(batch)
        if busy:
            busy.set()
        answers += flood([ask(url, campaign_id, u, tokens[u], heard) for u in batch], concurrency)
        if busy:
            busy.clear()
        if not sold:
            time.sleep(pause)
    return answers, tokens


@contextmanager
def every(interval, action):
    """Run action() every `interval` seconds in a thread while the block runs."""
    stop, errors = threading.Event(), []

    def loop():
        while not stop.wait(interval):
            try:
                action()
            except Exception as e:
                errors.append(e)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    if errors:
        raise errors[0]


@contextmanager
def once(condition, action, poll=0.005):
    """Run action() once, in a thread, as soon as condition() holds while the block runs; the
    block's end waits for the action to finish. Yields a list that holds the firing time."""
    stop, fired, errors = threading.Event(), [], []

    def watch():
        while not stop.is_set():
            if condition():
                fired.append(time.monotonic())
                try:
                    action()
                except Exception as e:
                    errors.append(e)
                return
            time.sleep(poll)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield fired
    finally:
        stop.set()
        thread.join()
    if errors:
        raise errors[0]


def ticket_of(url, campaign_id, token):
    """(status, body) of GET /ticket: 200 or 404; asked again while the service is recovering."""
    def get_it():
        try:
            status, body, _ = request(url, "GET", f"/api/v1/campaigns/{campaign_id}/ticket", token, timeout=10)
        except (OSError, http.client.HTTPException):
            return None
        return (status, body) if status in (200, 404) else None

    return wait_until(get_it, timeout=10, what="GET /ticket to answer")


def tickets_told(url, campaign_id, answers, tokens):
    """{user: (serial, code)} of every user told they hold a ticket: the 2xx answers, and for users
    whose request ended without one (dropped, 503), what GET /ticket says. Checks that the answers
    of one user agree and that nobody got two 201s. Returns (told, unsure users, of them holding)."""
    told, new = {}, Counter()
    for a in answers:
        if a.status in (200, 201):
            ticket = (a.body["serial"], a.body["code"])
            assert told.setdefault(a.user, ticket) == ticket, a
            new[a.user] += a.status == 201
    assert max(new.values()) == 1, new.most_common(3)
    unsure = {a.user for a in answers if a.status not in (200, 201, 409)} - set(told)
    holding = 0
    for user in sorted(unsure):
        status, body = ticket_of(url, campaign_id, tokens[user])
        if status == 200:
            told[user] = (body["serial"], body["code"])
            holding += 1
        else:
            assert body["error"]["code"] == "NO_TICKET", body
    return told, len(unsure), holding


def close_and_check(svc, signer, campaign_id, told, lost_with_redis=()):
    """Close (stop, drain, reconcile, release), then: the rows are exactly the tickets users were
    told of, STOCK of them, serials 1..STOCK once each, every code the ticket's. Users in
    `lost_with_redis` were told of a ticket that Redis lost before it reached the database: they
    may have no row."""
    report = campaigns.close_campaign(svc, campaign_id)  # raises unless Redis and MySQL agree
    assert report.mysql_rows == report.redis_claims == report.redis_counter == STOCK
    rows = mysql_tickets(svc.engine, campaign_id)
    lost = sorted((u, t, rows.get(u)) for u, t in told.items()
                  if rows.get(u) != t and not (u in lost_with_redis and u not in rows))
    untold = sorted(set(rows) - set(told))
    assert not lost and not untold, (len(lost), lost[:5], len(untold), untold[:5])
    assert sorted(serial for serial, _ in rows.values()) == list(range(1, STOCK + 1))
    assert all(code == signer.ticket_code(campaign_id, serial) for serial, code in rows.values())
    return rows


def outcomes(answers):
    """Counter of statuses, 409s by error code: {201: 1000, 'SOLD_OUT': 4000, ...}."""
    return Counter(a.body["error"]["code"] if a.status == 409 else a.status for a in answers)


def say(test, **numbers):
    print(f"\n[{test}] " + "; ".join(f"{k}: {v}" for k, v in numbers.items()))


REDIS_TIMEOUT = 2.0  # the web workers'; a Redis call slower than this answers 503
NODE_TIMEOUT_MS = 2000  # the private cluster's: a master silent this long is failed over


@contextmanager
def service_on(mysql_url, redis_target, **settings):
    """The service on a test's private Redis or cluster: (the service in this process, a real
    gunicorn of 2 workers) with the scheduler running, both with `settings` too; both stopped by
    pid after the block. The scheduler's REDIS_TIMEOUT is 0.5 s, so the reclaim job's grace is 1 s."""
    env = service_env(mysql_url, redis_target, **settings)
    svc = create_app(app_config(mysql_url, redis_target, **settings)).extensions["coupon"]
    started = []
    try:
        started.append(Gunicorn(env, workers=2, REDIS_TIMEOUT=REDIS_TIMEOUT))
        started.append(Scheduler(env, **FAST_JOBS, REDIS_TIMEOUT=0.5))
        yield svc, started[0]
    finally:
        for process in started:
            if isinstance(process, Gunicorn):
                stop_at_once(process)
            else:
                process.stop()
        svc.engine.dispose()
