"""First come, first served by arrival, also when requests queue.

At an opening flood more issue requests arrive than the workers answer, and they wait: in the
kernel's socket buffers, then for the worker's event loop. gevent's loop (libev) runs the ready
connections in no particular order (newest first, mostly), and each worker of a host, and each
host, serves its own queue at its own pace. Served that way the earliest senders were often
refused while late ones won (issue 32, BENCHMARKS.md "First come, first served").

So each issue request is stamped with its arrival, on Redis's clock (one clock for every host):

- stamped(): the kernel's receive time of its bytes (SO_TIMESTAMPNS), however long they then
  waited for the worker; arrival_ms() places it on Redis's clock.
- ArrivalGate: a worker's issue requests, once read and admitted, wait their turn and go on (token
  check, serial, claim) one at a time in arrival order; each runs until it waits for Redis, so the
  claims leave in arrival order too. Across workers and hosts the tail of a campaign (its last
  ORDERED_TAIL serials) goes to bids in arrival order (lease.lua): a serial goes to a bid only
  once no worker may still hold a request that arrived before it and has not bid, read or not
  (ReadMarks): the watermark, from every worker's published frontier.
"""
import functools
import heapq
import itertools
import socket
import struct
import threading
import time
from collections import deque

from redis.exceptions import RedisError

from coupon.keys import WORKER_ROLL

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux's; few Python builds name it
TIMESPEC = struct.Struct("qq")
ANCILLARY_SPACE = socket.CMSG_SPACE(TIMESPEC.size)

RECEIVED_NS = "coupon.received_ns"  # the WSGI environ's key of StampedSocket.take_received_ns()
PUBLISH_EVERY = 0.002  # seconds between a worker's publications of its frontiers while idle
# ... while it serves requests: each publication is a round trip of CPU its requests wait for, and
# with requests coming the loop turns (and its read marks move) without the publisher's timer
# (at 1,000/s and at floods, faster answers and more of them: BENCHMARKS.md, "First come, first
# served")
BUSY_PUBLISH_EVERY = 0.010
LINGER = 1.0  # seconds a worker keeps publishing its frontier of a campaign after its last request
ENTRY_TURNS = 8  # turns of the loop a waking dispatcher yields at most while requests come in
IDLE_EXIT = 30.0  # seconds the dispatcher waits for work before it ends (started again on demand)
# seconds between a web worker's words on the roll (WorkerRoll), each of which counts it: one that
# counts it short at an opening answers bids before the worker it missed is listed
ROLL_EVERY = 0.1
ROLL_STALE_MS = 3_000  # a worker silent this long is off the roll


def stamped(sock):
    """The connection `sock` as a StampedSocket of its own class (gevent's, in a worker).

    A request's arrival is when the kernel received its bytes, however long they then waited to
    be read. The same descriptor: `sock` itself is detached."""
    stamped_sock = _stamped_class(type(sock))(sock.family, sock.type, sock.proto, sock.detach())
    stamped_sock._first_ns = None  # the receive time of the first bytes read since the last take
    stamped_sock._last_ns = None  # of the last bytes read
    try:
        stamped_sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:  # not a TCP socket of Linux: no stamps, arrival is when it is served
        pass
    return stamped_sock


def stamp_listener(listener):
    """Have the kernel stamp the bytes of `listener`'s connections from the first.

    The kernel stamps packets only while some socket asks, and a connection asks (stamped())
    only once accepted: a fresh connection's request, sent before its accept, had no stamp when
    no other connection was open (the first of a flood after an idle spell), and counted as
    arriving when it was served. A listener that asks keeps stamping on, and its connections
    inherit the option."""
    try:
        listener.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:  # not Linux's TCP: the connections' own option, if any
        pass


class StampedSocket:
    """Mixed into a socket class: reads note when the kernel received their bytes.

    A subclass of the socket's own class, not a wrapper: every other call is the socket's, at no
    extra cost."""

    __slots__ = ()  # the two stamps live in the subclass's slots (_stamped_class)

    def recv(self, size, *flags):
        data, ancillary, _, _ = self.recvmsg(size, ANCILLARY_SPACE, *flags)
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                seconds, nanos = TIMESPEC.unpack(value[:TIMESPEC.size])
                self._last_ns = seconds * 1_000_000_000 + nanos
                if self._first_ns is None:
                    self._first_ns = self._last_ns
        return data

    def take_received_ns(self):
        """When the request just read began to arrive (the kernel's CLOCK_REALTIME, ns), or None.

        A request already read with the one before it (pipelined) has that read's time."""
        received, self._first_ns = self._first_ns or self._last_ns, None
        return received


@functools.lru_cache(maxsize=None)
def _stamped_class(base):
    return type("Stamped" + base.__name__.capitalize(), (StampedSocket, base),
                {"__slots__": ("_first_ns", "_last_ns")})


def received_ns(environ, trust_request_start=False):
    """When a request reached the service (CLOCK_REALTIME ns), or None.

    The kernel's receive stamp of its bytes, or, with trust_request_start (TRUST_REQUEST_START:
    behind a front proxy that sets the header on every request, overwriting what a client sent),
    the proxy's X-Request-Start, which also counts the time it waited there."""
    if trust_request_start:
        proxied = request_start_ns(environ.get("HTTP_X_REQUEST_START"))
        if proxied is not None:
            return proxied
    return environ.get(RECEIVED_NS)


def request_start_ns(value):
    """An X-Request-Start header, in ns; None if it is in none of the forms below.

    The forms: nginx's (`t=${msec}`: seconds, ms fraction), Heroku-style routers' (ms) and others'
    (us)."""
    text = (value or "").strip().removeprefix("t=")
    try:
        number = float(text)
    except ValueError:
        return None
    if not 1e9 <= number < 1e17:  # seconds, ms or us of this century and the next few
        return None
    return int(number * (1e9 if number < 1e11 else 1e6 if number < 1e14 else 1e3))


def arrival_ms(received_ns, clock):
    """A request's arrival on Redis's clock (epoch ms, a float: requests come 0.1 ms apart).

    Its age by this host's kernel clock taken from Redis's now, so a host whose clock is off
    stamps as the others do. Without a receive time, now. (No wait for Redis: a wait here would
    let later requests overtake this one.)"""
    now = clock.fine_now_ms()
    if received_ns is None:
        return now
    age_ns = time.clock_gettime_ns(time.CLOCK_REALTIME) - received_ns
    return now - max(0, age_ns) / 1e6


class ReadMarks:
    """When this worker had read every request that reached it before.

    Under gevent, a request whose bytes were in its socket when the loop last looked for I/O has
    been read, and has entered the gate, by the time the loop looks again (its connection ran when
    the look found it; a connection just accepted runs one turn later, and a look accepts every
    connection waiting: worker.DrainingStreamServer, up to worker_connections open). So the kernel
    clock noted before each look, LOOKS_BACK looks ago, is a time before which nothing unread
    waits. Without gevent's loop (threads: the tests' in-process server) it is now, and promises
    nothing."""

    LOOKS_BACK = 3

    def __init__(self):
        self._marks = deque(maxlen=self.LOOKS_BACK)
        self._watcher = None

    def read_through_ns(self):
        """The kernel clock (CLOCK_REALTIME ns) before which this worker has read every request."""
        if self._watcher is None and not self._watch():
            return time.clock_gettime_ns(time.CLOCK_REALTIME)
        if not self._marks:
            self._note()
        return self._marks[0]

    def _watch(self):
        from gevent import monkey

        if not monkey.is_module_patched("socket"):
            return False
        from gevent import get_hub

        self._watcher = get_hub().loop.prepare(ref=False)  # runs before each look for I/O
        self._watcher.start(self._note)
        return True

    def _note(self):
        self._marks.append(time.clock_gettime_ns(time.CLOCK_REALTIME))


class Turn:
    """One issue request's place in the arrival order.

    Its arrival, its campaign, the id its bid goes by."""

    __slots__ = ("arrival", "campaign_id", "id", "event")

    def __init__(self, arrival, campaign_id, id_):
        self.arrival, self.campaign_id, self.id = arrival, campaign_id, id_
        self.event = threading.Event()

    def __lt__(self, other):
        return (self.arrival, self.id) < (other.arrival, other.id)


class ArrivalGate:
    """One per worker: its issue requests go on one at a time, in arrival order.

    And it keeps in Redis, per campaign, the earliest arrival it may still hold that has not bid
    for a serial (its frontier).

    A request waits its turn (wait_turn), is let through, runs until it waits (for Redis, mostly),
    then the next is let through. Until its bid is in Redis (placed) or it is answered (finished)
    it holds its campaign's frontier here: the earliest of the requests let through that have not
    bid, of those still waiting their turn (of any campaign: a frontier may be early, never late),
    and of those not read yet (read_through(): ms, Redis's clock, or None). Every PUBLISH_EVERY
    the frontier goes to the campaign's bidders hash (publish(campaign id, frontier, listed)),
    from the worker's first request of the campaign until LINGER after its last; and with each of
    its bids (lease.lua). The tail's serials go to the bids in arrival order up to the earliest
    frontier of all workers (the watermark), so no worker's earlier request is passed over. A
    frontier read late is earlier than the truth: it delays a bid, never reorders it.
    """

    def __init__(self, worker_id, publish, enabled=True, read_through=None, workers_serving=None):
        self.worker_id = worker_id  # this worker among those of every host
        self.publish = publish
        self.enabled = enabled
        self.read_through = read_through or (lambda: None)
        # the web workers of every host (WorkerRoll.size; 0: unknown), told with each bid
        self.workers_serving = workers_serving or (lambda: 0)
        self._waiting = []  # heap of Turns waiting to be let through
        self._holding = {}  # campaign id -> Turns of it not answered yet, waiting or let through
        self._unbid = {}  # campaign id -> {Turn id: arrival} let through, not bid yet (few)
        self._listed = {}  # campaign id -> when (monotonic) it last held one of its requests
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._work = threading.Event()  # a request waits its turn
        self._dispatcher = self._publisher = None

    def wait_turn(self, arrival, campaign_id):
        """Wait until the requests that arrived before `arrival` (ms, Redis's clock) have gone on.

        Return its Turn (None when the gate is off)."""
        if not self.enabled:
            return None
        turn, starting, listing = Turn(arrival, campaign_id, next(self._ids)), [], False
        with self._lock:
            heapq.heappush(self._waiting, turn)
            self._holding[campaign_id] = self._holding.get(campaign_id, 0) + 1
            self._work.set()
            if self._dispatcher is None:
                self._dispatcher = self._thread(self._dispatch)
                starting.append(self._dispatcher)
            if campaign_id not in self._listed:  # others count on none coming from here: list it
                self._listed[campaign_id], listing = time.monotonic(), True
                if self._publisher is None:
                    self._publisher = self._thread(self._publish)
                    starting.append(self._publisher)
        if listing:
            # from this request, first: its call is in Redis as soon as it is sent, where a
            # greenlet started for it would wait for its turn of the loop, hundreds of ms at an
            # opening flood, while the others passed over this worker's first requests
            self._share(campaign_id)
        for thread in starting:  # (a start waits for the thread: never under the lock)
            thread.start()
        turn.event.wait()
        return turn

    def placed(self, turn):
        """The request's bid is in Redis: it holds the frontier no more (others see the bid)."""
        self._unbid.get(turn.campaign_id, {}).pop(turn.id, None)

    def finished(self, turn):
        """The request is answered."""
        if turn is None:
            return
        self.placed(turn)
        with self._lock:
            self._holding[turn.campaign_id] -= 1
            if not self._holding[turn.campaign_id]:
                del self._holding[turn.campaign_id]
                self._unbid.pop(turn.campaign_id, None)
                self._listed[turn.campaign_id] = time.monotonic()

    def frontier(self, campaign_id, bidding=()):
        """The earliest arrival (ms) of a campaign this worker may hold that has not bid, or None.

        The Turns `bidding` are left out: their bids go with the call this is for."""
        skip = {turn.id for turn in bidding}
        marks = [a for i, a in self._unbid.get(campaign_id, {}).items() if i not in skip]
        marks += [self._waiting[0].arrival] if self._waiting else []
        read_through = self.read_through()
        marks += [] if read_through is None else [read_through]
        return min(marks) if marks else None

    def _thread(self, run):
        return threading.Thread(target=run, daemon=True, name="arrival-gate" + run.__name__)

    def _dispatch(self):
        try:
            while self._work.wait(IDLE_EXIT):
                # the requests read in this same turn of the loop come in before any goes on (a
                # turn that ran out of time goes on in the next: yield while more come in)
                entered = 0
                for _ in range(ENTRY_TURNS):
                    time.sleep(0)
                    if len(self._waiting) == entered:
                        break
                    entered = len(self._waiting)
                while self._waiting:
                    turn = heapq.heappop(self._waiting)
                    self._unbid.setdefault(turn.campaign_id, {})[turn.id] = turn.arrival
                    turn.event.set()
                    time.sleep(0)  # it runs until it waits; then the next one
                with self._lock:
                    if not self._waiting:
                        self._work.clear()
        finally:
            with self._lock:
                self._dispatcher = again = self._thread(self._dispatch) if self._waiting else None
            if again:  # came in as it ended: go on
                again.start()

    def _publish(self):
        """Publish this worker's frontier of each campaign it lists, every PUBLISH_EVERY.

        Every BUSY_PUBLISH_EVERY while it holds requests. A campaign is first listed by its first
        request (wait_turn); its frontier is withdrawn LINGER after the last request of it."""
        try:
            while self._listed:
                for campaign_id in list(self._listed):
                    self._share(campaign_id)
                time.sleep(BUSY_PUBLISH_EVERY if self._holding else PUBLISH_EVERY)
        finally:
            with self._lock:
                self._publisher = again = self._thread(self._publish) if self._listed else None
            if again:  # listed as it ended: go on
                again.start()

    def _share(self, campaign_id):
        listed = (campaign_id in self._holding
                  or time.monotonic() - self._listed[campaign_id] < LINGER)
        try:
            self.publish(campaign_id, self.frontier(campaign_id) if listed else None, listed)
        except Exception:  # Redis down, mostly: published again in PUBLISH_EVERY (or goes stale)
            if listed:
                return
        if not listed:
            with self._lock:
                if campaign_id not in self._holding:
                    del self._listed[campaign_id]


class WorkerRoll:
    """The web workers serving, of every host, as a roll in Redis that each keeps its name on.

    At a campaign's opening no bid is answered until every one of them is listed as its bidder
    (has read a request of it, and publishes its frontier): one that is not may hold the earliest
    requests, unread (lease.lua). A worker says it is there every ROLL_EVERY; one silent for
    ROLL_STALE_MS is off the roll (until then it holds the opening's bids back: a delay, never a
    reordering)."""

    def __init__(self, redis, worker_id, clock):
        self.redis, self.worker_id, self.clock = redis, worker_id, clock
        self.size = 0  # workers on the roll when last read; 0: unknown (the floor always holds)

    def start(self):
        """Keep this worker on the roll (a gunicorn worker, once started)."""
        self.say()  # on the roll before it serves
        threading.Thread(target=self._keep, daemon=True, name="worker-roll").start()

    def leave(self):
        """Off the roll at once (a clean stop): the others count without it."""
        try:
            self.redis.zrem(WORKER_ROLL, self.worker_id)
        except RedisError:
            pass  # off once silent for ROLL_STALE_MS

    def _keep(self):
        while True:
            time.sleep(ROLL_EVERY)
            self.say()

    def say(self):
        """Say this worker is there, drop those silent too long, and count the roll."""
        now = self.clock.now_ms(measure=False)
        batch = self.redis.batch()
        batch.on(WORKER_ROLL).zadd(WORKER_ROLL, {self.worker_id: now})
        batch.on(WORKER_ROLL).zremrangebyscore(WORKER_ROLL, "-inf", now - ROLL_STALE_MS)
        size = batch.on(WORKER_ROLL).zcard(WORKER_ROLL)
        try:
            batch.execute()
            self.size = size.get()
        except RedisError:
            pass  # the count read last stands; this worker is off the roll once silent too long
