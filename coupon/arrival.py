"""First come, first served by arrival, also when requests queue.

At an opening flood more issue requests arrive than the workers answer, and they wait: in the
kernel's socket buffers, then for the worker's event loop. gevent's loop (libev) runs the ready
connections in no particular order (newest first, mostly), and each worker of a host, and each
host, serves its own queue at its own pace. Served that way the earliest senders were often
refused while late ones won (issue 32, BENCHMARKS.md "First come, first served").

So each issue request is stamped with its arrival, on Redis's clock (one clock for every host):

- StampedSocket: the kernel's receive time of its bytes (SO_TIMESTAMPNS), however long they then
  waited for the worker; arrival_ms() places it on Redis's clock.
- ArrivalGate: a worker's issue requests, once read and admitted, wait their turn and go on (token
  check, serial, claim) one at a time in arrival order. Each runs until it waits for Redis, so the
  claims leave in arrival order too. A worker whose requests wait publishes its frontier (the
  arrival of its oldest waiting request) in Redis; a worker never lets a request go on that
  arrived more than LEAD_MS after another worker's frontier, so no worker runs ahead of the rest
  by more than that and a slow worker's early arrivals are not left behind when the stock runs out.
"""
import heapq
import itertools
import socket
import struct
import threading
import time

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux's; few Python builds name it
TIMESPEC = struct.Struct("qq")
ANCILLARY_SPACE = socket.CMSG_SPACE(TIMESPEC.size)

RECEIVED_NS = "coupon.received_ns"  # the WSGI environ's key of StampedSocket.take_received_ns()
LEAD_MS = 10.0  # how far (Redis's ms) a worker may run ahead of another's oldest waiting request
PUBLISH_EVERY = 0.005  # seconds between a busy worker's publications of its frontier
STALE_MS = 250  # a frontier not published again within this no longer holds anyone back
MAX_HOLD = 1.0  # seconds a worker waits for a frontier that does not move (a stuck peer) at most
ENTRY_TURNS = 8  # turns of the loop a waking dispatcher yields at most while requests come in
IDLE_EXIT = 30.0  # seconds the dispatcher waits for work before it ends (started again on demand)


class StampedSocket:
    """A connection whose reads note when the kernel received their bytes: a request's arrival,
    however long it then waited to be read. Everything but recv is the socket's own."""

    def __init__(self, sock):
        self._sock = sock
        self._first_ns = None  # the receive time of the first bytes read since the last take
        self._last_ns = None  # of the last bytes read
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except OSError:  # not a TCP socket of Linux: no stamps, arrival is when it is served
            pass
        # (the kernel stamps packets only while some socket asks, and turns that on a moment after
        # the first asks: the first requests after an idle spell may have no stamp, and count
        # as arriving when served)

    def __getattr__(self, name):
        return getattr(self._sock, name)

    def recv(self, size, *flags):
        data, ancillary, _, _ = self._sock.recvmsg(size, ANCILLARY_SPACE, *flags)
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                seconds, nanos = TIMESPEC.unpack(value[:TIMESPEC.size])
                self._last_ns = seconds * 1_000_000_000 + nanos
                if self._first_ns is None:
                    self._first_ns = self._last_ns
        return data

    def take_received_ns(self):
        """When the request just read began to arrive (the kernel's CLOCK_REALTIME, ns), or None;
        a request already read with the one before it (pipelined) has that read's time."""
        received, self._first_ns = self._first_ns or self._last_ns, None
        return received


def arrival_ms(received_ns, clock):
    """A request's arrival on Redis's clock (epoch ms, a float: requests come 0.1 ms apart): its
    age by this host's kernel clock taken from Redis's now, so a host whose clock is off stamps
    as the others do. Without a receive time, now. (No wait for Redis: a wait here would let
    later requests overtake this one.)"""
    now = clock.now_ms(measure=False)
    if received_ns is None:
        return float(now)
    age_ns = time.clock_gettime_ns(time.CLOCK_REALTIME) - received_ns
    return now - max(0, age_ns) / 1e6


class ArrivalGate:
    """One per worker: its issue requests go on one at a time, in arrival order, never more than
    LEAD_MS ahead of another worker's oldest waiting request.

    publish(frontier or None) -> the other workers' earliest frontier or None (Scripts.frontier;
    a failure is taken as none); clock: Redis's (clock.RedisClock). A worker publishes a frontier
    only while its oldest waiting request is older than LEAD_MS (a fresher one holds nobody back),
    and reads the others' every PUBLISH_EVERY while it has requests. Under gevent each request let
    through runs until it waits (for Redis, mostly), then the next is let through; with threads
    (the tests' in-process server) the order is only as good as the threads'.
    """

    def __init__(self, publish, clock, enabled=True):
        self.publish = publish
        self.clock = clock
        self.enabled = enabled
        self._waiting = []  # heap of (arrival ms, sequence, turn event)
        self._sequence = itertools.count()
        self._lock = threading.Lock()
        self._work = threading.Event()
        self._dispatcher = None
        self._published = False  # this worker's frontier is in Redis
        self._next_publish = 0.0  # monotonic
        self._others = None  # the other workers' earliest frontier (ms), as last read
        self._held_since = None  # monotonic, while the head waits for the others
        self._stuck = None  # a frontier that held us MAX_HOLD without moving: ignored

    @property
    def waiting(self):
        return len(self._waiting)

    def wait_turn(self, arrival):
        """Return once the requests that arrived before `arrival` (ms, Redis's clock) have gone on."""
        if not self.enabled:
            return
        turn = threading.Event()
        with self._lock:
            heapq.heappush(self._waiting, (arrival, next(self._sequence), turn))
            self._work.set()
            if self._dispatcher is None:
                self._dispatcher = threading.Thread(target=self._dispatch, daemon=True,
                                                    name="arrival-gate")
                self._dispatcher.start()
        turn.wait()

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
                    if not self._may_go(self._waiting[0][0]):
                        time.sleep(0.001)
                        continue
                    _, _, turn = heapq.heappop(self._waiting)
                    turn.set()
                    time.sleep(0)  # it runs until it waits; then the next one
                with self._lock:
                    if not self._waiting:
                        self._work.clear()
                if self._published:
                    self._share(None)
        finally:
            with self._lock:
                self._dispatcher = None
                if self._waiting:  # came in as it ended: go on
                    self._dispatcher = threading.Thread(target=self._dispatch, daemon=True,
                                                        name="arrival-gate")
                    self._dispatcher.start()

    def _may_go(self, arrival):
        """The oldest waiting request may go on: no other worker holds one that arrived more than
        LEAD_MS before it (as last read; every PUBLISH_EVERY while ours wait)."""
        now = time.monotonic()
        if now >= self._next_publish:
            self._share(arrival if self.clock.now_ms() - arrival > LEAD_MS else None)
        others = self._others
        if others is None or others == self._stuck or arrival <= others + LEAD_MS:
            self._held_since = None
            return True
        if self._held_since is None:
            self._held_since = now
        elif now - self._held_since > MAX_HOLD:  # that worker is stuck: do not wait for it
            self._stuck, self._held_since = others, None
            return True
        return False

    def _share(self, frontier):
        self._next_publish = time.monotonic() + PUBLISH_EVERY
        try:
            self._others = self.publish(frontier)
            self._published = frontier is not None
        except Exception:  # Redis down, mostly: the gate goes on by this worker's order alone
            self._others = None
