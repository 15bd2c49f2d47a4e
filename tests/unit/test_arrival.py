"""coupon.arrival: the kernel's receive stamps, their place on Redis's clock, and the gate that
lets a worker's requests go on in arrival order without running ahead of the others'."""
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from coupon import arrival
from coupon.arrival import ArrivalGate, ReadMarks, arrival_ms, stamped


class FixedClock:
    def __init__(self, now_ms):
        self.now = now_ms

    def fine_now_ms(self):
        return self.now


@pytest.fixture(scope="module", autouse=True)
def kernel_stamps_on():
    """The kernel stamps packets only while some socket asks for it, and turns that on a moment
    after the first asks (a deferred switch): keep one asking for these tests."""
    with socket.socket() as asking:
        asking.setsockopt(socket.SOL_SOCKET, arrival.SO_TIMESTAMPNS, 1)
        time.sleep(0.1)
        yield


@pytest.fixture
def connection():
    """(client, the server's end as stamped() makes it)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        with client, stamped(accepted) as stamped_sock:
            yield client, stamped_sock


def realtime_ns():
    return time.clock_gettime_ns(time.CLOCK_REALTIME)


def test_a_read_says_when_the_kernel_received_its_bytes_not_when_it_was_read(connection):
    client, stamped_sock = connection
    sent = realtime_ns()
    client.sendall(b"GET / HTTP/1.1\r\n\r\n")
    time.sleep(0.2)  # the request waits, as for a busy worker
    assert stamped_sock.recv(100) == b"GET / HTTP/1.1\r\n\r\n"
    received = stamped_sock.take_received_ns()
    assert sent - 10_000_000 <= received <= sent + 100_000_000  # at its sending, not 200 ms later

    client.sendall(b"next")
    stamped_sock.recv(100)
    assert stamped_sock.take_received_ns() > received  # the next request has its own


def test_a_request_read_with_the_one_before_it_has_that_reads_time(connection):
    client, stamped_sock = connection
    client.sendall(b"first and second")
    stamped_sock.recv(100)
    first = stamped_sock.take_received_ns()
    assert first is not None and stamped_sock.take_received_ns() == first  # no read in between


def test_arrival_is_placed_on_redis_clock_by_its_age():
    clock = FixedClock(5_000_000)  # Redis's clock, whatever this host's says
    arrived = arrival_ms(realtime_ns() - 300_000_000, clock)  # received 300 ms ago
    assert 5_000_000 - 400 < arrived <= 5_000_000 - 300
    assert arrival_ms(None, clock) == 5_000_000.0  # no stamp: now


class Peers:
    """Where the gate publishes its frontiers (frontier.lua, in Redis): what it said, in order."""

    def __init__(self):
        self.said = []

    def __call__(self, campaign_id, frontier, listed):
        self.said.append((campaign_id, frontier, listed))


def hold(gate, campaign_id, *arrivals):
    """Turns of requests of a campaign let through the gate (as its dispatcher does)."""
    turns = []
    for at in arrivals:
        turn = arrival.Turn(at, campaign_id, next(gate._ids))
        gate._holding[campaign_id] = gate._holding.get(campaign_id, 0) + 1
        gate._unbid.setdefault(campaign_id, {})[turn.id] = at
        gate._listed[campaign_id] = time.monotonic()
        turns.append(turn)
    return turns


def test_a_frontier_is_the_earliest_request_of_the_campaign_held_that_has_not_bid():
    gate = ArrivalGate("w1", Peers())
    first, second = hold(gate, 7, 1_200.0, 1_300.0)
    hold(gate, 8, 1_100.0)
    assert gate.frontier(7) == 1_200.0
    assert gate.frontier(7, bidding=[first]) == 1_300.0  # its bid goes with the call this is for
    gate.placed(first)
    assert gate.frontier(7) == 1_300.0  # its bid is in Redis: others see it there
    waiting = arrival.Turn(1_250.0, 9, next(gate._ids))
    gate._waiting.append(waiting)  # not let through yet, of any campaign: counts (early, not late)
    assert gate.frontier(7) == 1_250.0
    gate._waiting.clear()
    gate.finished(second)
    assert gate.frontier(7) is None


def test_what_a_worker_has_not_read_yet_holds_its_frontier_too():
    read_through = [1_150.0]
    gate = ArrivalGate("w1", Peers(), read_through=lambda: read_through[0])
    hold(gate, 7, 1_200.0)
    assert gate.frontier(7) == 1_150.0  # a request that arrived at 1,160 may be unread still
    read_through[0] = 1_300.0
    assert gate.frontier(7) == 1_200.0
    assert gate.frontier(8) == 1_300.0  # of a campaign it holds none of: what is unread


def test_a_worker_publishes_its_frontier_from_its_first_request_of_a_campaign_until_after_its_last():
    peers = Peers()
    gate = ArrivalGate("w1", peers, read_through=lambda: 1_500.0)
    (turn,) = hold(gate, 7, 1_100.0)
    gate._share(7)
    gate.placed(turn)
    gate._share(7)  # bidding: its bid is in Redis; what it has not read yet holds the frontier
    gate.finished(turn)
    gate._share(7)  # none held: still listed, for the requests that may come
    gate._listed[7] -= arrival.LINGER
    gate._share(7)  # withdrawn
    assert peers.said == [(7, 1_100.0, True), (7, 1_500.0, True), (7, 1_500.0, True), (7, None, False)]
    assert 7 not in gate._listed


def test_a_worker_is_listed_by_its_first_request_of_a_campaign_before_that_waits_its_turn():
    # from the request itself: a greenlet started to publish would wait for its turn of the loop,
    # hundreds of ms at an opening flood, while the others passed over this worker's requests
    said_by = []
    gate = ArrivalGate("w1", lambda *said: said_by.append((threading.current_thread(), said)),
                       read_through=lambda: 1_500.0)
    turn = gate.wait_turn(1_100.0, 7)
    assert said_by[0] == (threading.current_thread(), (7, 1_100.0, True))
    gate.finished(turn)


def test_a_gate_turned_off_lets_everything_through_at_once():
    gate = ArrivalGate("w1", Peers(), enabled=False)
    assert gate.wait_turn(9_999.0, 7) is None  # at once, with nothing to wait for
    assert gate._dispatcher is None


GEVENT_ORDER = textwrap.dedent("""
    from gevent import monkey; monkey.patch_all()
    import random, gevent
    from coupon.arrival import ArrivalGate

    gate = ArrivalGate("w1", lambda *said: None)
    went = []

    def request(arrival):
        gevent.sleep(0)  # read in a turn of the loop, as connections are
        turn = gate.wait_turn(arrival, 7)
        went.append(arrival)
        gevent.sleep(0.001)  # its claim: it waits for Redis
        gate.finished(turn)

    arrivals = list(range(500))
    random.Random(7).shuffle(arrivals)  # the loop runs ready connections in no such order
    gevent.joinall([gevent.spawn(request, a) for a in arrivals])
    print(went == sorted(went), len(went))
""")


def test_under_gevent_requests_read_together_go_on_in_arrival_order():
    out = subprocess.run([sys.executable, "-c", GEVENT_ORDER], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.split() == ["True", "500"], out.stderr


READ_MARKS = textwrap.dedent("""
    from gevent import monkey; monkey.patch_all()
    import os, random, socket, sys, time, gevent
    from coupon.arrival import ReadMarks

    ReadMarks.LOOKS_BACK = int(sys.argv[1])
    marks, n = ReadMarks(), 400
    clock = lambda: time.clock_gettime_ns(time.CLOCK_REALTIME)
    pairs = [socket.socketpair() for _ in range(n)]
    written, read, late = [None] * n, [False] * n, set()

    def connection(i):
        pairs[i][0].recv(16)
        read[i] = True  # the request is read and has entered the gate: the next wait comes later

    def busy():  # a loaded worker: turns of its loop that take a while
        while not all(read):
            end = time.perf_counter() + random.uniform(0, 0.001)
            while time.perf_counter() < end:
                pass
            gevent.sleep(0)

    def check():
        while not all(read):
            through = marks.read_through_ns()
            late.update(i for i in range(n) if written[i] is not None and written[i] < through
                        and not read[i])
            gevent.sleep(0)

    def client():  # an OS thread: the bytes arrive whatever the loop does
        for i in random.sample(range(n), n):
            os.write(pairs[i][1].fileno(), b"x")
            written[i] = clock()  # after the write: the bytes were there before it
            monkey.get_original("time", "sleep")(random.uniform(0, 0.002))

    greenlets = [gevent.spawn(connection, i) for i in range(n)]
    greenlets += [gevent.spawn(busy) for _ in range(3)] + [gevent.spawn(check)]
    gevent.sleep(0.01)
    monkey.get_original("threading", "Thread")(target=client, daemon=True).start()
    gevent.joinall(greenlets, timeout=30)
    print(all(read), len(late))
""")


@pytest.mark.parametrize("looks_back, late", [(ReadMarks.LOOKS_BACK, False), (1, True)])
def test_under_gevent_a_request_that_arrived_before_the_read_through_mark_has_been_read(looks_back, late):
    """Bytes written before the mark have been read (the connection ran), while the loop is
    busy; a mark of the last look only (the loop has not run what it found) would be too late."""
    out = subprocess.run([sys.executable, "-c", READ_MARKS, str(looks_back)], capture_output=True,
                         text=True, timeout=60)
    read_all, late_count = out.stdout.split()
    assert read_all == "True", out.stderr
    assert (int(late_count) > 0) == late


@pytest.mark.parametrize("header, ns", [
    ("t=1765000000.123", 1_765_000_000_123_000_000),  # nginx: t=${msec}
    ("1765000000123", 1_765_000_000_123_000_000),  # Heroku-style routers: ms
    ("t=1765000000123456", 1_765_000_000_123_456_000),  # us
    (" t=1765000000 ", 1_765_000_000_000_000_000),
    ("", None), ("t=", None), ("soon", None), ("t=nan", None), ("t=-1", None), ("12345", None),
    ("1e300", None), ("inf", None),
])
def test_a_front_proxys_request_start_is_read_in_the_forms_proxies_write(header, ns):
    got = arrival.request_start_ns(header)
    assert got == ns if ns is None else abs(got - ns) < 1_000  # float seconds: to the us


def test_a_request_start_counts_only_from_a_trusted_proxy_else_the_kernel_stamp():
    environ = {"HTTP_X_REQUEST_START": "t=1765000000.5", arrival.RECEIVED_NS: 1_765_000_001_000_000_000}
    assert arrival.received_ns(environ) == 1_765_000_001_000_000_000  # a client's own: ignored
    assert abs(arrival.received_ns(environ, trust_request_start=True) - 1_765_000_000_500_000_000) < 1_000
    del environ["HTTP_X_REQUEST_START"]
    assert arrival.received_ns(environ, trust_request_start=True) == 1_765_000_001_000_000_000
