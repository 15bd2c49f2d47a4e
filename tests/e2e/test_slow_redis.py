"""A slow path to Redis: the web workers reach it through a TCP proxy that adds latency to every
round trip, 20 ms, then 200 ms with jitter, then longer than REDIS_TIMEOUT for a few seconds, then
none, in the middle of a flood (the scheduler reaches Redis directly). Answers stay exact, a call
slower than REDIS_TIMEOUT answers 503, never a 500 or a hang, and the leases the timeouts left
uncertain are settled: issued = N after the reclaim, Redis and the database agree."""
import time

import pytest

from loadtest.harness import RedisTarget, open_campaign, wait_until
from tests.flood import (REDIS_TIMEOUT, STOCK, close_and_check, demand, every, issued_counter,
                         outcomes, say, tickets_told)
from tests.support import FAST_JOBS, TcpProxy

pytestmark = pytest.mark.fault

STALL = f"stall {REDIS_TIMEOUT * 1.5:.1f} s"  # past REDIS_TIMEOUT: every call times out
# each phase: its name, the round trip it adds, the jitter of that (±, uniform), and when it ends:
# once issued reaches a count, or once it has lasted some seconds and that many requests sent in
# it were answered (a request in the stall takes up to 4 x REDIS_TIMEOUT, and a wave waits for its
# slowest: a fixed length of stall may end before any wave sent in it is answered)
PLAN = [("20 ms", 0.020, 0.0, ("issued", 250)),
        ("200 ± 100 ms", 0.200, 0.100, ("issued", 500)),
        (STALL, REDIS_TIMEOUT * 1.5, 0.0, ("answered", 8.0, 20)),
        ("none", 0.0, 0.0, None)]


def quantiles(answers):
    took = sorted(a.took for a in answers)
    if not took:
        return None
    return dict(n=len(took), p50_ms=round(took[len(took) // 2] * 1000, 1),
                p99_ms=round(took[min(len(took) - 1, int(len(took) * 0.99))] * 1000, 1),
                max_ms=round(took[-1] * 1000, 1))


def test_redis_slow_then_stalled_then_fast(svc, signer, gunicorn, scheduler, redis_target):
    host, port = redis_target.url.split("//")[1].split("/")[0].split(":")
    proxy = TcpProxy(int(port), host)
    try:
        slow_url = RedisTarget(f"redis://127.0.0.1:{proxy.port}/{redis_target.url.rsplit('/', 1)[1]}")
        web = gunicorn(workers=2, REDIS_TIMEOUT=REDIS_TIMEOUT, **slow_url.settings())
        scheduler(**FAST_JOBS, REDIS_TIMEOUT=0.5)  # its reclaim grace: 1 s
        campaign_id = open_campaign(svc, STOCK)
        issued = issued_counter(svc, campaign_id)
        marks = []  # (monotonic, name) of each phase as it began
        heard = []  # every answer, as it comes

        def start(name, rtt, jitter, _):
            proxy.slow(rtt, jitter)
            marks.append((time.monotonic(), name))

        def ended(began, end):
            if end[0] == "issued":
                return issued() >= end[1]
            seconds, answered = end[1:]
            return (time.monotonic() - began >= seconds
                    and sum(a.started >= began for a in list(heard)) >= answered)

        def next_phase():
            began, end = marks[-1][0], PLAN[len(marks) - 1][3]
            if end and ended(began, end):
                start(*PLAN[len(marks)])

        start(*PLAN[0])
        with every(0.02, next_phase):
            answers, tokens = demand(web.url, campaign_id, signer, issued, seconds=60, wave=50,
                                     heard=heard)

        seen = outcomes(answers)
        assert set(seen) <= {200, 201, "SOLD_OUT", 503}, seen  # never a 500, never a hang
        assert all(a.body["error"]["code"] == "UNAVAILABLE" for a in answers if a.status == 503)
        assert [name for _, name in marks] == [name for name, *_ in PLAN], marks
        ends = [at for at, _ in marks[1:]] + [float("inf")]
        phases = {name: [a for a in answers if at <= a.started and a.started + a.took < end]
                  for (at, name), end in zip(marks, ends)}
        for name, inside in phases.items():  # what users saw, by the phase their request fell in
            say(f"slow redis: {name}", all=quantiles(inside), outcomes=dict(outcomes(inside)),
                issue_2xx=quantiles([a for a in inside if a.status in (200, 201)]))
        stalled = phases[STALL]
        # every call needing Redis times out: 503, or a 409 the worker knew
        assert {a.status for a in stalled} <= {503, 409} and sum(a.status == 503 for a in stalled) > 10
        assert sum(a.status in (200, 201) for a in phases["none"]) > 0  # fast again by itself

        # the blocks whose claims timed out were marked expired, and the reclaim job (grace 1 s)
        # settled them; what stands is the live workers'
        keys = svc.keys(campaign_id)
        wait_until(lambda: svc.redis.zcount(keys.leases, 0, svc.redis.time_at(keys.leases) - 2000) == 0,
                   timeout=15, what="the expired leases to be settled")
        owners = {int(lease.split(":")[1]) for lease in svc.redis.zrange(keys.leases, 0, -1)}
        assert owners <= set(web.worker_pids()), owners
        told, unsure, holding = tickets_told(web.url, campaign_id, answers, tokens)
        close_and_check(svc, signer, campaign_id, told)  # issued = N: the uncertain leases settled
        say("slow redis", phases=[f"{name} at {round(at - marks[0][0], 1)} s" for at, name in marks],
            requests=len(answers), users=len(tokens), outcomes=dict(seen),
            unanswered_users=unsure, of_them_holding=holding, rows=STOCK)
    finally:
        proxy.cut()
