"""Claims: the concurrent claims of one worker on one campaign, batched into shared round trips.

A claim offers a user a serial (or, with NO_SERIAL, only asks whether the user holds a ticket).
ClaimBatcher coalesces the claims of concurrent requests; ClaimSender sends a batch to Redis as
one claim.lua call per claim shard it touches, in one pipeline per node, so the round trip (and
its client CPU) is shared by the whole batch rather than by the few claims that fall on one shard.
"""
import threading

from coupon.scripts import NO_SERIAL, ClaimReply, claim_args


class WaitingClaim:
    __slots__ = ("args", "answered", "reply", "error", "leads_next")

    def __init__(self, args):
        self.args = args
        self.answered = threading.Event()
        self.reply = self.error = None
        self.leads_next = False  # woken to send the next batch, not with an answer


class ClaimBatcher:
    """Coalesce the claims that concurrent requests of one worker make on one campaign.

    The first request to arrive leads: it sends what is queued in one call. While that call is in
    flight, others queue up; when it returns, the leader hands the lead to the oldest waiter, who
    sends the next batch. No timer, no extra greenlet: batches are as large as the concurrency,
    and a lone request pays exactly one round trip.
    """

    def __init__(self, send, max_batch, sent=lambda claims: None):
        self._send = send  # list of args -> list of replies (or exceptions), in order
        self._max_batch = max_batch
        self._sent = sent  # told the claims of each batch sent (metrics: claims per round trip)
        self._lock = threading.Lock()
        self._queue = []
        self._leading = False

    def submit(self, args):
        mine = WaitingClaim(args)
        with self._lock:
            self._queue.append(mine)
            lead = not self._leading
            self._leading = True
        if not lead:
            mine.answered.wait()
        if lead or mine.leads_next:
            self._lead()
        if mine.error is not None:
            raise mine.error
        return mine.reply

    def _lead(self):
        with self._lock:
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
        self._sent(len(batch))
        try:
            replies = self._send([claim.args for claim in batch])
            for claim, reply in zip(batch, replies):
                if isinstance(reply, Exception):  # that claim's shard call failed
                    claim.error = reply
                else:
                    claim.reply = reply
        except Exception as e:  # every claim of the batch gets it; the caller maps it
            for claim in batch:
                claim.error = e
        finally:
            with self._lock:
                if self._queue:
                    self._queue[0].leads_next = True
                    self._queue[0].answered.set()
                else:
                    self._leading = False
            for claim in batch:
                if not claim.leads_next:
                    claim.answered.set()


class ClaimSender:
    """Send a batch of claims of one campaign to Redis; decode the replies.

    Each claim is (shard index, user id, serial, code). One claim.lua call per shard, in one
    pipeline per node (redis_nodes.Batch): a node that fails costs only the claims of its shards.
    The batch is durable: no claim is answered before replicas hold it (REDIS_REPLICA_ACKS).
    layout: the redis_state.Layout the campaign was loaded in (its epoch and claims buckets);
    code_of: serial -> ticket code (Signer.ticket_code of the campaign).
    """

    def __init__(self, redis, claim_script, keys, layout, rate_limit, code_of):
        self.redis = redis
        self.script = claim_script
        self.keys = keys
        self.layout = layout
        self.shards = keys.all_shards()
        self.rate_limit = rate_limit
        self.code_of = code_of

    def __call__(self, claims):
        groups = {}  # shard -> indexes of its claims, in order
        for i, (shard, *_) in enumerate(claims):
            groups.setdefault(shard, []).append(i)
        batch, calls = self.redis.batch(durable=True), []  # calls: (indexes, the call's Reply)
        window, _ = self.rate_limit.window()
        buckets, bucket_of = self.layout.buckets, self.keys.bucket_of
        for shard, indexes in groups.items():
            args = claim_args(self.keys.campaign_id, self.rate_limit.limit, self.rate_limit.seconds,
                              self.layout.epoch, [claims[i][1:] for i in indexes])
            keys = self.shards[shard].claim_keys(window, [
                self.shards[shard].bucket(bucket_of(claims[i][1], buckets)) for i in indexes])
            calls.append((indexes, batch.script(self.script, keys, args)))
        batch.execute(raise_on_error=False)
        replies = [None] * len(claims)
        for indexes, call in calls:
            result = call.raw
            for n, i in enumerate(indexes):  # an error: each claim of that call gets it
                replies[i] = result if isinstance(result, Exception) else ClaimReply.decode(
                    result[n], self._codes(*claims[i][2:]))
        return replies

    def _codes(self, offered, code):
        """serial -> its code, knowing the offered serial's (a new ticket's: no second HMAC)."""
        return lambda serial: code if serial == offered else self.code_of(serial)


class Claims:
    """The claims of one worker on one campaign."""

    def __init__(self, sender, max_batch, batch_sent=lambda claims: None):
        self.keys = sender.keys
        self.code_of = sender.code_of
        self._batcher = ClaimBatcher(sender, max_batch, batch_sent)

    def claim(self, user_id, serial):
        """Offer the user this serial; a ClaimReply. Raises RedisError if its outcome is unknown."""
        return self._submit(user_id, serial, self.code_of(serial))

    def ask(self, user_id):
        """Whether the user holds a ticket: HELD (with it), NEEDS_SERIAL, or RATE_LIMITED/CLOSED."""
        return self._submit(user_id, NO_SERIAL, "")

    def _submit(self, user_id, serial, code):
        return self._batcher.submit((self.keys.shard_of(user_id), user_id, serial, code))
