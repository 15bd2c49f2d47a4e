"""What a held coupon costs Redis; and Redis at its maxmemory with noeviction, on a private server
whose maxmemory the test lowers.

Redis 7 refuses a script (one without a `#!lua` flags line, as ours) at its first write that could
grow memory, when it was past maxmemory as the script started; once a script has written, it is
never stopped in the middle, even past the limit. So claim.lua is all or nothing: the user's claim,
the claimed bit, the outbox entry and the counter together, or none of them."""
import functools
import time

import pytest
from redis.exceptions import OutOfMemoryError

from coupon import create_app, redis_state
from coupon.redis_state import Layout, stored_claim
from coupon.scripts import Claim, OutboxEntry
from loadtest.harness import open_campaign
from tests.flood import (REDIS_TIMEOUT, STOCK, close_and_check, demand, issued_counter, once,
                         outcomes, say, service_on, tickets_told)
from tests.support import app_config, claim_sender


def shard_state(client, shard, rate):
    """Everything claim.lua writes in a shard (the outbox: the claims its entries hold). Every
    bucket's HLEN (a stock of 10 million: ~150,000 buckets a shard) in pipelines, not a round trip
    each."""
    buckets, claims = int(client.hget(shard.state, "buckets")), 0
    for first in range(0, buckets, 10_000):
        pipe = client.pipeline(transaction=False)
        for i in range(first, min(first + 10_000, buckets)):
            pipe.hlen(shard.bucket(i))
        claims += sum(pipe.execute())
    in_outbox = sum(len(OutboxEntry.decode(fields, 0, str)) for _, fields in client.xrange(shard.outbox))
    return (claims, client.bitcount(shard.claimed), in_outbox, client.hget(shard.state, "issued"),
            client.hgetall(rate))


def test_a_held_coupon_costs_under_40_bytes_in_buckets_redis_keeps_compact(mysql_url, signer, private_redis):
    """50,000 claims through claim.lua: the claims buckets, bitmaps and counters (what stays once
    the flush job drained the outbox) cost under 40 B a coupon (one hash per shard: ~100), every
    bucket a listpack at hash-max-listpack-entries 128 (Redis's default is 512); and each user's
    claim reads back as the ticket claim.lua answered, which a repeat gets again."""
    app = create_app(app_config(mysql_url, private_redis.url, RATE_LIMIT=0))
    svc = app.extensions["coupon"]
    client = private_redis.client()
    try:
        client.config_set("hash-max-listpack-entries", 128)
        n = 50_000
        campaign_id = open_campaign(svc, n)
        keys = svc.keys(campaign_id)
        send, code_of = claim_sender(svc, signer, keys), functools.partial(signer.ticket_code, campaign_id)
        users = [f"user-{i}" for i in range(n)]
        told = {}
        for first in range(0, n, 500):
            batch = [(keys.shard_of(u), u, s, code_of(s))
                     for u, s in zip(users[first:first + 500], range(first + 1, first + 501))]
            for (_, user, serial, code), reply in zip(batch, send(batch)):
                assert (reply.outcome, reply.serial, reply.code) == (Claim.NEW, serial, code)
                told[user] = reply

        layout = Layout.of(svc.redis.hgetall(keys.meta))
        shards = keys.all_shards()
        buckets = [shard.bucket(i) for shard in shards for i in range(layout.buckets)]
        assert {client.object("encoding", key) for key in buckets} == {"listpack"}
        assert sum(client.hlen(key) for key in buckets) == n
        kept = [*buckets, *(key for shard in shards for key in (shard.claimed, shard.state))]
        used = sum(client.memory_usage(key, samples=0) for key in kept)
        assert used / n < 40, used / n

        for user in users[::997]:
            held = stored_claim(svc.redis, keys, user)
            assert (held.serial, held.issued_at_ms) == (told[user].serial, told[user].issued_at_ms)
        again = send([(keys.shard_of(u), u, n + 1 + i, code_of(n + 1 + i)) for i, u in enumerate(users[:300])])
        assert again == [told[u]._replace(outcome=Claim.HELD) for u in users[:300]]
    finally:
        client.close()
        svc.engine.dispose()


def test_claim_script_is_all_or_nothing_at_maxmemory(mysql_url, signer, private_redis):
    # a window of an hour: the rate hash (which expires a window after its last write) outlives
    # the test on a loaded machine, and the window it counts in stays the one named below
    app = create_app(app_config(mysql_url, private_redis.url, RATE_LIMIT=5, RATE_LIMIT_WINDOW=3600))
    svc = app.extensions["coupon"]
    campaign_id = open_campaign(svc, 10_000_000)
    keys = svc.keys(campaign_id)
    send = claim_sender(svc, signer, keys)
    users = [u for u in (f"user-{i}" for i in range(2_000)) if keys.shard_of(u) == 0]
    shard, rate = keys.shard(0), keys.shard(0).rate(svc.rate_limit.window()[0])

    def claims(batch, serials):
        return [(0, u, n, signer.ticket_code(campaign_id, n)) for u, n in zip(batch, serials)]

    client = private_redis.client()
    try:
        send(claims(users[:10], range(1, 11)))  # the script loaded, the shard's keys made
        # 21 claims, of a few kB of arguments; the 11th's serial, 9,000,000, grows the shard's
        # claimed bitmap by ~1.1 MB. From 100 kB under the limit the call starts below it, passes
        # it halfway, and writes the claims after that one too
        client.config_set("maxmemory", client.info("memory")["used_memory"] + 100_000)
        serials = [*range(11, 21), 9_000_000, *range(21, 31)]
        replies = send(claims(users[10:31], serials))
        assert [r.outcome.name for r in replies] == ["NEW"] * 21
        assert client.info("memory")["used_memory"] > int(client.config_get("maxmemory")["maxmemory"])
        written = shard_state(client, shard, rate)
        assert written[:4] == (31, 31, 31, "31")

        # past the limit as it starts: refused at its first write, nothing written (not even the
        # rate limit's count), whatever the batch holds: new users, users holding a ticket
        batch = claims(users[31:51], range(31, 51)) + claims(users[:10], range(5001, 5011))
        replies = send(batch)
        assert all(isinstance(r, OutOfMemoryError) for r in replies)
        assert shard_state(client, shard, rate) == written

        client.config_set("maxmemory", 0)  # memory raised: the same batch goes through
        outcome = [r.outcome.name for r in send(batch)]
        assert outcome == ["NEW"] * 20 + ["HELD"] * 10
        assert shard_state(client, shard, rate)[:4] == (51, 51, 51, "51")
    finally:
        client.config_set("maxmemory", 0)
        client.close()
        svc.engine.dispose()


@pytest.mark.fault
def test_redis_at_maxmemory_during_the_flood(mysql_url, signer, private_redis):
    """maxmemory below what Redis uses for 3 s of the flood, then raised again: 503s meanwhile,
    never a 500; issuing resumes by itself; the close reconciles exactly."""
    with service_on(mysql_url, private_redis.url) as (svc, web):
        campaign_id = open_campaign(svc, STOCK)
        issued = issued_counter(svc, campaign_id)
        full = {}

        def fill_then_raise():
            with private_redis.client() as admin:
                full["issued"] = issued()
                admin.config_set("maxmemory", 1)  # every write that could grow memory refused
                full["at"] = time.monotonic()
                time.sleep(3.0)
                full["issued_end"] = issued()
                full["raised"] = time.monotonic()
                admin.config_set("maxmemory", 0)

        with once(lambda: issued() >= 300, fill_then_raise):
            answers, tokens = demand(web.url, campaign_id, signer, issued, seconds=40)

        seen = outcomes(answers)
        assert set(seen) <= {200, 201, "SOLD_OUT", 503}, seen  # never a 500, never a hang
        assert all(a.body["error"]["code"] == "UNAVAILABLE" for a in answers if a.status == 503)
        during = [a for a in answers if full["at"] <= a.started and a.started + a.took <= full["raised"]]
        assert {a.status for a in during} <= {503, 409} and sum(a.status == 503 for a in during) > 50
        assert full["issued_end"] == full["issued"]  # no claim written while full
        took = sorted(a.took for a in during)
        assert took[-1] < REDIS_TIMEOUT + 1, took  # refused at once, never waited for
        resumed = sum(a.status == 201 and a.started > full["raised"] for a in answers)
        assert resumed > 0  # issuing resumed by itself
        # nothing half-written: Redis's claims, its counters and the rows agree, issued = STOCK
        told, unsure, holding = tickets_told(web.url, campaign_id, answers, tokens)
        close_and_check(svc, signer, campaign_id, told)
        assert redis_state.issued_in_redis(svc.redis, svc.keys(campaign_id)) is None  # released
        say("redis at maxmemory", issued_when_full=full["issued"],
            full_s=round(full["raised"] - full["at"], 1),
            requests=len(answers), users=len(tokens), outcomes=dict(seen),
            answers_while_full=dict(outcomes(during)),
            latency_503_ms_p50_max=(round(took[len(took) // 2] * 1000, 1), round(took[-1] * 1000, 1)),
            new_after_raise=resumed, unanswered_users=unsure, of_them_holding=holding, rows=STOCK)
