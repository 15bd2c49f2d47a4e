"""coupon/flusher.py: the Flusher moves the claims' outbox streams into the database, in this
process against the real Redis and MariaDB: a round that races a close makes no key again; one
killed between commit and acknowledgement, stalled, or frozen before its commit loses and doubles
nothing; streams Redis lost are grouped again; an acknowledgement trims only what every flusher
is done with. The flush job in a real scheduler: e2e/test_jobs.py."""
import threading
import time

import pytest
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from coupon import campaigns
from coupon.flusher import GROUP, Flusher
from coupon.reconcile import mysql_tickets, reconcile
from loadtest.harness import open_campaign
from tests.support import backlog, issue_directly, on_single_and_cluster


@on_single_and_cluster
def test_a_flush_that_races_a_close_makes_no_key_again(svc, redis_client):
    """The flush job read the registry before the close released the campaign: its next round
    finds the streams gone (NOGROUP) and must not make them again (they would never expire)."""
    campaign_id = open_campaign(svc, 10)
    issue_directly(svc, campaign_id, "alice")
    flusher = Flusher(svc, "racing")
    assert flusher.flush([campaign_id]) == 1
    campaigns.close_campaign(svc, campaign_id)  # released: every key of it deleted
    assert flusher.flush([campaign_id]) == 0
    left = redis_client.keys(f"*c:{campaign_id}:*")
    assert [key for key in left if redis_client.ttl(key) == -1] == []  # rate windows expire


def test_flusher_killed_between_commit_and_ack_replays_without_duplicates(svc):
    campaign_id = open_campaign(svc, 500)
    for i in range(300):
        issue_directly(svc, campaign_id, f"u{i}")

    class Crash(Exception):
        pass

    def crash():
        raise Crash()

    with pytest.raises(Crash):
        Flusher(svc, "dies").flush([campaign_id], before_ack=crash)
    assert len(mysql_tickets(svc.engine, campaign_id)) == 300  # committed ...
    assert backlog(svc, campaign_id) == 300  # ... but not acknowledged
    assert Flusher(svc, "survivor", claim_idle=0).flush([campaign_id]) == 300  # taken over, replayed
    assert backlog(svc, campaign_id) == 0
    report = reconcile(svc.redis, svc.engine, svc.keys(campaign_id), svc.signer)
    assert report.agree and report.mysql_rows == 300


@on_single_and_cluster
def test_a_stalled_flushers_entries_are_taken_over_and_counted_once(svc):
    """Committed, then stalled past the idle time: another flusher takes the entries over and
    writes them again (skipped); the stalled one's late acknowledgement finds nothing pending."""
    campaign_id = open_campaign(svc, 500)
    for i in range(300):
        issue_directly(svc, campaign_id, f"u{i}")
    taker, took = Flusher(svc, "taker", claim_idle=0), []
    moved = Flusher(svc, "stalls").flush(
        [campaign_id], before_ack=lambda: took.append(taker.flush([campaign_id])))
    assert (moved, sum(took)) == (0, 300)  # each row counted by the flusher that acknowledged it
    assert backlog(svc, campaign_id) == 0
    report = reconcile(svc.redis, svc.engine, svc.keys(campaign_id), svc.signer)
    assert report.agree and report.mysql_rows == 300


def test_a_flusher_frozen_before_its_commit_holds_no_row_from_the_one_taking_over(svc, monkeypatch):
    """Frozen between its insert and its commit (SIGSTOP, a paused VM), a flusher's transaction
    holds its rows' locks; MariaDB rolls it back once idle FLUSH_CLAIM_IDLE seconds, so the
    flusher taking its entries over waits that long, not innodb_lock_wait_timeout (50 s)."""
    monkeypatch.setitem(svc.config, "FLUSH_CLAIM_IDLE", 1)
    campaign_id = open_campaign(svc, 500)
    for i in range(200):
        issue_directly(svc, campaign_id, f"u{i}")
    inserted, thaw, failed = threading.Event(), threading.Event(), []
    frozen = threading.Thread(
        target=lambda: failed.append(flush_or_error(Flusher(svc, "frozen"), campaign_id)))

    def freeze(conn, cursor, statement, *args):
        if threading.current_thread() is frozen and statement.lstrip().upper().startswith("INSERT"):
            inserted.set()
            thaw.wait(60)

    event.listen(svc.engine, "after_cursor_execute", freeze)
    try:
        frozen.start()
        assert inserted.wait(30)
        started = time.monotonic()
        assert Flusher(svc, "taker", claim_idle=0).flush([campaign_id]) == 200
        assert time.monotonic() - started < 15  # a loaded machine; the lock wait would be 50 s
    finally:
        thaw.set()
        frozen.join(60)
        event.remove(svc.engine, "after_cursor_execute", freeze)
    assert isinstance(failed[0], OperationalError)  # thawed: its transaction was rolled back
    assert backlog(svc, campaign_id) == 0
    report = reconcile(svc.redis, svc.engine, svc.keys(campaign_id), svc.signer)
    assert report.agree and report.mysql_rows == 200


def flush_or_error(flusher, campaign_id):
    try:
        return flusher.flush([campaign_id])
    except Exception as e:
        return e


def test_a_flusher_makes_its_streams_again_after_redis_lost_them(svc):
    campaign_id = open_campaign(svc, 500)
    keys = svc.keys(campaign_id)
    flusher = Flusher(svc, "long-lived")  # as the flush job's: it made the streams' group once
    issue_directly(svc, campaign_id, "before")
    assert flusher.flush([campaign_id]) == 1
    for shard in keys.all_shards():  # Redis restarted empty, the campaign recovered
        svc.redis.delete(shard.outbox)
    # claims again in the stream whose group the flusher made (a stream new to it, it groups anyway)
    after = [u for u in (f"after-{i}" for i in range(1000)) if keys.shard_of(u) == keys.shard_of("before")][:2]
    for user in after:
        issue_directly(svc, campaign_id, user)
    assert flusher.flush([campaign_id]) == 2
    assert set(mysql_tickets(svc.engine, campaign_id)) == {"before", *after}


@on_single_and_cluster
def test_an_acknowledgement_trims_only_what_every_flusher_is_done_with(svc, redis_client):
    """ack_outbox.lua trims the stream (XTRIM MINID) rather than deleting each id: never an entry
    another flusher still holds pending, nor one not delivered yet. It counts the claims of what it
    acknowledged as flushed, once."""
    keys = svc.keys(open_campaign(svc, 10))
    shard = keys.shard(0)
    stream = shard.outbox
    ids = [redis_client.xadd(stream, {"e": f"user-{i} {i + 1} 0"}) for i in range(3)]
    redis_client.sadd(shard.news, keys.campaign_id)
    redis_client.xgroup_create(stream, GROUP, id="0")
    read = {name: redis_client.xreadgroup(GROUP, name, {stream: ">"}, count=1)[0][1][0][0]
            for name in ("a", "b")}  # a holds the first entry, b the second; the third is unread

    def ack(entry_id, claims=1):
        batch = svc.redis.batch()
        batch.script(svc.scripts.ack_outbox, [stream, shard.news, shard.drained, shard.state],
                     [GROUP, keys.campaign_id, entry_id, claims])
        return batch.execute()[0]

    assert read == {"a": ids[0], "b": ids[1]}
    assert ack(ids[0]) == [1, 2]  # b's pending entry and the unread one stay
    assert ack(ids[0]) == [0, 2]  # acknowledged before: counted once
    assert [i for i, _ in redis_client.xrange(stream)] == ids[1:]
    assert ack(ids[1]) == [1, 1]  # none pending: what was never delivered stays
    assert [i for i, _ in redis_client.xrange(stream)] == ids[2:]
    assert redis_client.sismember(shard.news, keys.campaign_id)
    redis_client.xreadgroup(GROUP, "a", {stream: ">"}, count=1)
    assert ack(ids[2], claims=5) == [5, 0]  # empty: off the news set, on the drained one
    assert redis_client.hget(shard.state, "flushed") == "7"
    assert not redis_client.sismember(shard.news, keys.campaign_id)
    assert redis_client.sismember(shard.drained, keys.campaign_id)
