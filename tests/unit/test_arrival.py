"""coupon.arrival: the kernel's receive stamps, their place on Redis's clock, and the gate that
lets a worker's requests go on in arrival order without running ahead of the others'."""
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from coupon import arrival
from coupon.arrival import LEAD_MS, ArrivalGate, StampedSocket, arrival_ms


class FixedClock:
    def __init__(self, now_ms):
        self.now = now_ms

    def now_ms(self, measure=True):
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
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        yield client, accepted
        client.close()
        accepted.close()


def realtime_ns():
    return time.clock_gettime_ns(time.CLOCK_REALTIME)


def test_a_read_says_when_the_kernel_received_its_bytes_not_when_it_was_read(connection):
    client, accepted = connection
    stamped = StampedSocket(accepted)
    sent = realtime_ns()
    client.sendall(b"GET / HTTP/1.1\r\n\r\n")
    time.sleep(0.2)  # the request waits, as for a busy worker
    assert stamped.recv(100) == b"GET / HTTP/1.1\r\n\r\n"
    received = stamped.take_received_ns()
    assert sent - 10_000_000 <= received <= sent + 100_000_000  # at its sending, not 200 ms later

    client.sendall(b"next")
    stamped.recv(100)
    assert stamped.take_received_ns() > received  # the next request has its own


def test_a_request_read_with_the_one_before_it_has_that_reads_time(connection):
    client, accepted = connection
    stamped = StampedSocket(accepted)
    client.sendall(b"first and second")
    stamped.recv(100)
    first = stamped.take_received_ns()
    assert first is not None and stamped.take_received_ns() == first  # no read in between


def test_arrival_is_placed_on_redis_clock_by_its_age():
    clock = FixedClock(5_000_000)  # Redis's clock, whatever this host's says
    arrived = arrival_ms(realtime_ns() - 300_000_000, clock)  # received 300 ms ago
    assert 5_000_000 - 400 < arrived <= 5_000_000 - 300
    assert arrival_ms(None, clock) == 5_000_000.0  # no stamp: now


class Peers:
    """What the other workers publish, as frontier.lua would answer (the gate's publish)."""

    def __init__(self, earliest=None):
        self.earliest = earliest
        self.published = []

    def __call__(self, frontier):
        self.published.append(frontier)
        return self.earliest


def test_a_request_waits_while_another_worker_holds_one_that_arrived_earlier(monkeypatch):
    peers = Peers(earliest=1_000.0)
    gate = ArrivalGate(peers, FixedClock(2_000))
    assert gate._may_go(1_000.0 + LEAD_MS)  # within the lead
    assert not gate._may_go(1_000.0 + LEAD_MS + 1)
    assert peers.published[-1] == 1_000.0 + LEAD_MS  # ours waits long: published
    peers.earliest = 1_005.0  # the other worker caught up
    monkeypatch.setattr(gate, "_next_publish", 0.0)
    assert gate._may_go(1_000.0 + LEAD_MS + 1)


def test_a_fresh_request_holds_nobody_back_so_it_is_not_published():
    peers = Peers()
    gate = ArrivalGate(peers, FixedClock(2_000))
    assert gate._may_go(2_000 - LEAD_MS / 2)
    assert peers.published == [None]


def test_a_peer_whose_frontier_does_not_move_holds_a_worker_back_only_so_long(monkeypatch):
    peers = Peers(earliest=1_000.0)
    gate = ArrivalGate(peers, FixedClock(5_000))
    now = [100.0]
    monkeypatch.setattr(arrival.time, "monotonic", lambda: now[0])
    assert not gate._may_go(3_000.0)
    now[0] += arrival.MAX_HOLD / 2
    assert not gate._may_go(3_000.0)
    now[0] += arrival.MAX_HOLD
    assert gate._may_go(3_000.0)  # stuck: no longer waited for
    assert gate._may_go(3_500.0)
    peers.earliest = 1_200.0  # it moves again: it counts again
    now[0] += 1
    assert not gate._may_go(3_500.0)


def test_a_gate_turned_off_lets_everything_through_at_once():
    gate = ArrivalGate(Peers(earliest=0.0), FixedClock(10_000), enabled=False)
    gate.wait_turn(9_999.0)
    assert gate.waiting == 0


GEVENT_ORDER = textwrap.dedent("""
    from gevent import monkey; monkey.patch_all()
    import random, gevent
    from coupon.arrival import ArrivalGate

    class Clock:
        def now_ms(self): return 0
    gate = ArrivalGate(lambda frontier: None, Clock())
    went = []

    def request(arrival):
        gevent.sleep(0)  # read in a turn of the loop, as connections are
        gate.wait_turn(arrival)
        went.append(arrival)
        gevent.sleep(0.001)  # its claim: it waits for Redis

    arrivals = list(range(500))
    random.Random(7).shuffle(arrivals)  # the loop runs ready connections in no such order
    gevent.joinall([gevent.spawn(request, a) for a in arrivals])
    print(went == sorted(went), len(went))
""")


def test_under_gevent_requests_read_together_go_on_in_arrival_order():
    out = subprocess.run([sys.executable, "-c", GEVENT_ORDER], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.split() == ["True", "500"], out.stderr
