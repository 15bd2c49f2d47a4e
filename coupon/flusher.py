"""Write-behind: move claims from the Redis outbox streams into the database, exactly once.

The flush job (jobs/flush.py) runs a Flusher on every scheduler; a close drains a campaign with
one of its own (campaigns.drain_outbox), which is why it lives here and not in jobs/.
Each claim shard has an outbox stream, written by claim.lua together with the claim. A flusher
reads it through a consumer group, inserts the rows (a duplicate on the unique keys is ignored,
so a replay is harmless; any other error propagates), commits, and only then acknowledges and
deletes the entries. Entries a dead flusher left unacknowledged are taken over (XAUTOCLAIM).
Several flushers may run at once (every scheduler's flush job, a close's drain): the group hands
each new entry to one of them; one that stalls past the idle time has its entries taken over,
and should it come back, its insert skips the rows and its acknowledgement finds nothing
pending, so each row is written once and counted once (by the flusher that acknowledged it).
With EVENTS_URL set, each row's coupon.issued event (a short row: campaign and serial) is
written in the same transaction (coupon/events.py); a replayed entry's is skipped while it
waits, or published again.
One frozen between its insert and its commit (SIGSTOP, a paused VM) would hold its rows' locks,
and the flusher that took its entries over would wait on them; on MariaDB the server rolls such
a transaction back once idle FLUSH_CLAIM_IDLE seconds (idle_write_transaction_timeout).
Only what replicas hold is read (a durable batch, REDIS_REPLICA_ACKS): a claim that a failover
loses was never acknowledged to its user, and must not have a row either, or its serial, issued
again, would clash with it. A node down or unacknowledged holds back only its own streams.

Which streams to read: those the outbox news sets name (coupon/outbox.py), so a round reads
the campaigns with claims to flush, not every live one; ack_outbox.lua takes a campaign off its
shard's news set once the stream is empty, and puts it on the shard's drained set.
"""
import functools
import math
import time

from redis.exceptions import ResponseError
from sqlalchemy import text

from coupon import db, events
from coupon.clock import from_ms
from coupon.outbox import news
from coupon.redis_nodes import Reply
from coupon.scripts import OutboxEntry

GROUP = "flusher"
NOTHING_CLAIMED = Reply()  # of a round that did not look for a dead flusher's entries
NOTHING_CLAIMED.raw = ["0-0", [], []]  # (XAUTOCLAIM's: next start, entries, ids deleted)
ACK_CHUNK = 1000  # entries per ack_outbox.lua call: a script runs alone, keep each short


def entry_rows(fields, campaign_id, code_of):
    """The coupons rows of an outbox entry of a campaign's stream (its fields: scripts.OutboxEntry)."""
    return [{"campaign_id": claim.campaign_id, "user_id": claim.user_id, "serial": claim.serial,
             "code": claim.code, "issued_at": from_ms(claim.issued_at_ms)}
            for claim in OutboxEntry.decode(fields, campaign_id, code_of)]


class Flusher:
    def __init__(self, svc, consumer, batch=None, claim_idle=None):
        self.redis = svc.redis
        self.engine = svc.engine
        self.metrics = svc.metrics
        self.code_of = lambda campaign_id: functools.partial(svc.signer.ticket_code, campaign_id)
        self.keys = svc.keys
        self.ack_script = svc.scripts.ack_outbox
        self.shard_count = svc.config["CLAIM_SHARDS"]
        self.consumer = consumer
        self.batch = batch or svc.config["FLUSH_BATCH"]  # rows a stream and round, about
        # stream -> claims an entry held in its last read: the next reads FLUSH_BATCH rows' worth
        # of entries (an entry holds a claim.lua call's new claims, scripts.OUTBOX_ENTRY_MOST at most)
        self._per_entry = {}
        idle = svc.config["FLUSH_CLAIM_IDLE"] if claim_idle is None else claim_idle
        self.claim_idle_ms = int(idle * 1000)
        # whole seconds; the setting's, also for a close's drain (claim_idle 0)
        self.frozen_after = max(1, math.ceil(svc.config["FLUSH_CLAIM_IDLE"]))
        self.insert = db.insert_ignoring_duplicates(self.engine.dialect.name, db.coupons)
        # with events on, each coupon's event row commits with its row (coupon/events.py)
        self.events = events.enabled(svc.config)
        self._grouped = set()
        # stream -> when (monotonic) to look for a dead flusher's entries next: half the idle time
        # apart, not every round. Each look scans the stream's pending entries, which hold the
        # other flushers' batches in flight: every round, it cost more Redis CPU a coupon than
        # the flush's reads, acks and deletes together (BENCHMARKS.md, "Redis CPU a coupon in a sale")
        self._takeover_due = {}

    def shards(self, campaign_ids=None):
        """The claim shards whose streams to read.

        Every one of these campaigns, or (None) those the outbox news sets name: the cost of a
        round is that of the campaigns with claims to flush, however many are live."""
        if campaign_ids is not None:
            return [shard for c in campaign_ids for shard in self.keys(c).all_shards()]
        return [self.keys(c).shard(k) for k, ids in enumerate(news(self.redis, self.shard_count))
                for c in ids]

    def flush(self, campaign_ids=None, until=None, before_ack=None):
        """Flush rounds until the streams are empty or `until` (monotonic) passes.

        Return the rows moved: the entries this flusher acknowledged (another one may have
        written some of those rows before it stalled; none is counted twice).

        before_ack, if given, runs between commit and acknowledgement (tests crash there).
        """
        shards = {shard.outbox: shard for shard in self.shards(campaign_ids)}
        moved = 0
        while shards:
            began = time.perf_counter()
            entries, unread = self._read(list(shards))
            claims = {(stream, entry_id): entry_rows(f, shards[stream].campaign_id,
                                                     self.code_of(shards[stream].campaign_id))
                      for stream, entry_id, f in entries if f}
            rows = [row for of_entry in claims.values() for row in of_entry]
            self._note_entry_sizes(claims)
            read = time.perf_counter()
            if rows:
                with self.engine.begin() as conn:
                    self._roll_back_if_frozen(conn)
                    conn.execute(self.insert, rows)
                    if self.events:
                        events.write_issued(conn, rows)
            written = time.perf_counter()
            if before_ack:
                before_ack()
            # a stream that gave nothing this round is done with: off the news set once empty
            done = set(shards) - unread - {stream for stream, _, _ in entries}
            acked = self._ack(entries, claims, shards, done)
            moved += acked
            if rows:  # where the round's time went (metrics.FLUSH_PARTS), and what it moved
                self.metrics.record_flush_round(
                    self.consumer, {"read": read - began, "write": written - read,
                                    "ack": time.perf_counter() - written}, acked)
            for stream in done | unread:  # an unread one: next flush
                del shards[stream]
            if until is not None and time.monotonic() > until:
                break
        return moved

    def _note_entry_sizes(self, claims):
        """Note the claims an entry held in each stream read ((stream, id) -> its rows)."""
        sizes = {}
        for (stream, _), rows in claims.items():
            sizes.setdefault(stream, []).append(len(rows))
        for stream, of_stream in sizes.items():
            self._per_entry[stream] = max(1, math.ceil(sum(of_stream) / len(of_stream)))

    def _roll_back_if_frozen(self, conn):
        """Have MariaDB roll back this connection's write transactions idle `frozen_after` seconds.

        Set once per connection; MySQL has no such setting."""
        info = conn.connection.info  # lives as long as the database connection
        if getattr(conn.dialect, "is_mariadb", False) and info.get("frozen_after") != self.frozen_after:
            conn.execute(text("SET SESSION idle_write_transaction_timeout = :s"), {"s": self.frozen_after})
            info["frozen_after"] = self.frozen_after

    def _ensure_groups(self, streams):
        """Make the consumer group of the streams that exist and have none yet.

        Return the streams that have one. Never the stream itself (no MKSTREAM): claim.lua makes
        it with its first entry, and a stream deleted by a close that this round raced must stay
        gone."""
        new = [stream for stream in streams if stream not in self._grouped]
        batch = self.redis.batch()
        created = [(stream, batch.on(stream).xgroup_create(stream, GROUP, id="0"))
                   for stream in new]
        batch.execute(raise_on_error=False)
        for stream, create in created:
            reply = create.raw
            if isinstance(reply, ResponseError) and "requires the key to exist" in str(reply):
                continue  # no claim yet: asked again next round
            if isinstance(reply, Exception) and not (
                    isinstance(reply, ResponseError) and "BUSYGROUP" in str(reply)):
                raise reply
            self._grouped.add(stream)
        return [stream for stream in streams if stream in self._grouped]

    def _read(self, streams):
        """One round trip of reads: per stream, the entries left pending, then new entries.

        Per stream: what this consumer left pending, what dead ones left pending (every half idle
        time: _takeover_due), then new entries. Returns ([(stream, id, fields or None)], the
        streams whose node did not answer)."""
        streams = self._ensure_groups(streams)
        reads, replies = self._read_round(streams)
        if any(isinstance(r, ResponseError) and "NOGROUP" in str(r) for r in replies):
            # Redis lost streams we made the group of (restarted empty, the campaign recovered or
            # preloaded since, or released by a close): make the group of those that exist again;
            # what the failed round delivered is read as ours
            self._grouped.clear()
            reads, replies = self._read_round(self._ensure_groups(streams))
        errors = [r for r in replies if isinstance(r, Exception)]
        if errors and len(errors) == len(replies):
            raise errors[0]
        entries, seen, unread = [], set(), set()
        for stream, (own, claimed, new) in reads.items():
            if own.failed or claimed.failed or new.failed:
                unread.add(stream)  # its node is down or its replica behind: next round
                continue
            found = ([e for _, es in (own.raw or []) for e in es] + list(claimed.raw[1])
                     + [e for _, es in (new.raw or []) for e in es])
            for entry_id, fields in found:
                if (stream, entry_id) not in seen:
                    seen.add((stream, entry_id))
                    entries.append((stream, entry_id, fields or None))
        return entries, unread

    def _read_round(self, streams):
        """({stream: its three Replies}, every reply) of one durable batch."""
        batch, reads, now = self.redis.batch(durable=True), {}, time.monotonic()
        for stream in streams:
            entries = max(1, self.batch // self._per_entry.get(stream, 1))
            claimed = NOTHING_CLAIMED
            if now >= self._takeover_due.get(stream, 0.0):
                self._takeover_due[stream] = now + self.claim_idle_ms / 2000
                claimed = batch.on(stream).xautoclaim(stream, GROUP, self.consumer, self.claim_idle_ms,
                                                      "0-0", count=entries)
            reads[stream] = (
                batch.on(stream).xreadgroup(GROUP, self.consumer, {stream: "0"}, count=entries),
                claimed,
                batch.on(stream).xreadgroup(GROUP, self.consumer, {stream: ">"}, count=entries))
        return reads, batch.execute(raise_on_error=False)

    def _ack(self, entries, claims, shards, done):
        """Acknowledge and delete the flushed entries, and check the streams in `done`.

        Both in ack_outbox.lua: each stream of `done` that is empty leaves its news set. `claims`:
        (stream, entry id) -> the entry's rows. Return how many claims were pending till now."""
        by_stream = {stream: [] for stream in done}
        for stream, entry_id, _ in entries:
            by_stream.setdefault(stream, []).extend((entry_id, len(claims.get((stream, entry_id), ()))))
        batch, acks = self.redis.batch(), []
        for stream, pairs in by_stream.items():
            shard = shards[stream]
            keys = [stream, shard.news, shard.drained, shard.state]
            for i in range(0, max(1, len(pairs)), 2 * ACK_CHUNK):
                acks.append(batch.script(self.ack_script, keys,
                                         [GROUP, shard.campaign_id, *pairs[i:i + 2 * ACK_CHUNK]]))
        batch.execute()
        return sum(ack.get()[0] for ack in acks)  # ack_outbox.lua: {claims acknowledged, left}
