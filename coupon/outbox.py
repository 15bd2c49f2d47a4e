"""The outbox as the rest of the service reads it: its streams, their backlog and flush lag.

The outbox is each claim shard's outbox stream (written by claim.lua with each claim, emptied
into the database by the Flusher, coupon/flusher.py), read here with its backlog and flush lag,
and the sets that say which streams hold entries.

claim.lua puts the campaign on its shard's outbox news set (one per shard, shared by every
campaign) with each claim, and ack_outbox.lua takes it off once the stream is empty: the
flushers read the streams those sets name, not every live campaign's, and /metrics counts them.
ack_outbox.lua puts the campaign on the shard's drained set as it takes it off: the stock sync,
on the leading scheduler, learns there what every flusher emptied.
"""
import time

from coupon.keys import outbox_drained, outbox_news
from coupon.redis_state import queue_unflushed

DRAINED_TAKE = 100_000  # campaign ids popped from a drained set at most per read (SPOP count)


def news(redis, shards):
    """Per claim shard, the ids of the campaigns its outbox news set names.

    Those are the campaigns whose stream of that shard may hold entries (a shard whose node does
    not answer: none, till next time)."""
    batch = redis.batch()
    reads = [batch.on(key).smembers(key) for key in outbox_news(shards)]
    execute_on_nodes_up(batch)
    return [sorted(int(c) for c in ids_of(read)) for read in reads]


def campaigns_with_news(redis, shards):
    """The ids of the campaigns whose outbox may hold entries (any shard's news set names them)."""
    return {c for ids in news(redis, shards) for c in ids}


def news_and_drained(redis, shards):
    """(the campaigns any shard's news set names, those taken off its drained set).

    Per shard the news set is read before the drained set is popped, in one batch, so that a
    stream a flusher empties meanwhile has its campaign in one or the other (a shard whose node
    does not answer: neither, till next time)."""
    batch = redis.batch()
    reads = [(batch.on(news_key).smembers(news_key), batch.on(drained_key).spop(drained_key, DRAINED_TAKE))
             for news_key, drained_key in zip(outbox_news(shards), outbox_drained(shards))]
    execute_on_nodes_up(batch)
    return ({int(c) for read, _ in reads for c in ids_of(read)},
            {int(c) for _, read in reads for c in ids_of(read)})


def execute_on_nodes_up(batch):
    """Run a batch whose nodes may not all answer (their Replies then fail); its error if none did."""
    replies = batch.execute(raise_on_error=False)
    if all(isinstance(r, Exception) for r in replies):
        raise replies[0]


def ids_of(read):
    """The members a set read (SMEMBERS, SPOP) gave: none if its node did not answer."""
    return () if read.failed else read.raw or ()


def outbox_stats(redis, keys):
    """Return (backlog, lag in seconds): claims not yet in the database, age of the oldest.

    The backlog is each shard's issued less its flushed (ack_outbox.lua counts them): an entry holds
    the claims of a claim.lua call, so the stream's length is not it."""
    batch = redis.batch()
    stats = queue_outbox_stats(batch, keys)
    batch.execute()
    return stats()


def queue_outbox_stats(batch, keys):
    """Queue the reads of outbox_stats into a batch; return what reads its answer.

    Call what it returns once the batch has run."""
    backlog = queue_unflushed(batch, keys)
    firsts = [batch.on(shard.outbox).xrange(shard.outbox, count=1) for shard in keys.all_shards()]

    def stats():
        # the id of a shard's oldest entry starts with its time (ms)
        oldest = [int(first.get()[0][0].split("-")[0]) for first in firsts if first.get()]
        lag = max(0.0, time.time() - min(oldest) / 1000) if oldest else 0.0
        return backlog(), round(lag, 3)
    return stats
