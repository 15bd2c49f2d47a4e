"""claim.lua against the real Redis: its answer on each path (a claim of a serial taken before
leaves nothing behind, a repeat gets the ticket held and leaves its serial free, the rate limit
counts every call but the one that issued the ticket), and the outbox entries it writes. All or
nothing at maxmemory: e2e/test_redis_memory.py; the limit summed over workers:
e2e/test_rate_limit.py."""
from coupon.flusher import Flusher
from coupon.outbox import outbox_stats
from coupon.reconcile import mysql_tickets
from coupon.redis_state import issued_counted, stored_claim
from coupon.scripts import NO_SERIAL, OUTBOX_ENTRY_MOST, Claim, OutboxEntry
from loadtest.harness import open_campaign
from tests.support import claim_sender, fresh_window, on_single_and_cluster

pytestmark = on_single_and_cluster


def test_each_path_of_the_claim_script(make_app, signer, redis_client):
    svc = make_app(RATE_LIMIT=3, RATE_LIMIT_WINDOW=3600).extensions["coupon"]
    campaign_id = open_campaign(svc, 100, "claim paths")
    keys = svc.keys(campaign_id)
    send = claim_sender(svc, signer, keys)

    def claim(user, serial):
        reply, = send([(keys.shard_of(user), user, serial, signer.ticket_code(campaign_id, serial))])
        return reply

    # one shard's users: each shard has its own claimed serials
    bob, carol = [u for u in (f"user-{i}" for i in range(1000))
                  if keys.shard_of(u) == keys.shard_of("alice")][:2]
    fresh_window(3600, need=60)
    alice = claim("alice", 7)
    assert (alice.outcome, alice.serial, alice.code) == (Claim.NEW, 7, signer.ticket_code(campaign_id, 7))

    # serial 7 again, for bob: refused, and nothing of his claim kept
    assert claim(bob, 7).outcome == Claim.SERIAL_TAKEN
    assert stored_claim(svc.redis, keys, bob) is None
    assert claim(bob, NO_SERIAL).outcome == Claim.NEEDS_SERIAL
    assert (claim(bob, 8).outcome, stored_claim(svc.redis, keys, bob).serial) == (Claim.NEW, 8)

    # alice again with serial 9: her ticket, and 9 stays free for carol
    assert claim("alice", 9) == alice._replace(outcome=Claim.HELD)
    assert (claim(carol, 9).outcome, claim(carol, NO_SERIAL).serial) == (Claim.NEW, 9)

    # the rate limit (3): alice's new ticket was not counted, her repeat was
    assert [claim("alice", 10).outcome for _ in range(3)] == [Claim.HELD, Claim.HELD, Claim.RATE_LIMITED]
    counted = {}
    for shard in keys.all_shards():
        counted.update(redis_client.hgetall(shard.rate(svc.rate_limit.window()[0])))
    assert {user: int(n) for user, n in counted.items() if int(n)} == {"alice": 4, carol: 1}

    issued = issued_counted(svc.redis, keys)
    entries = sum(redis_client.xlen(shard.outbox) for shard in keys.all_shards())
    claimed = sum(redis_client.bitcount(shard.claimed) for shard in keys.all_shards())
    assert (issued, entries, claimed) == (3, 3, 3)  # serials 7, 8, 9: nothing of the others


def test_a_calls_new_claims_go_in_outbox_entries_of_at_most_their_most(svc, signer, redis_client):
    """One entry a call, split every OUTBOX_ENTRY_MOST claims; the backlog counts claims, not
    entries, and the flush moves them all."""
    campaign_id = open_campaign(svc, 100, "entries")
    keys = svc.keys(campaign_id)
    users = [u for u in (f"user-{i}" for i in range(2000))
             if keys.shard_of(u) == 0][:OUTBOX_ENTRY_MOST + 8]
    replies = claim_sender(svc, signer, keys)(
        [(0, user, serial, signer.ticket_code(campaign_id, serial)) for serial, user in enumerate(users, 1)])
    assert {r.outcome for r in replies} == {Claim.NEW}
    entries = [OutboxEntry.decode(fields, campaign_id, str)
               for _, fields in redis_client.xrange(keys.shard(0).outbox)]
    assert [len(entry) for entry in entries] == [OUTBOX_ENTRY_MOST, 8]
    assert [claim.user_id for entry in entries for claim in entry] == users
    assert outbox_stats(svc.redis, keys)[0] == len(users)
    assert Flusher(svc, "entries").flush([campaign_id]) == len(users)
    assert outbox_stats(svc.redis, keys)[0] == 0 and len(mysql_tickets(svc.engine, campaign_id)) == len(users)
