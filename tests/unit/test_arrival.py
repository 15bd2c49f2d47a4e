"""coupon.arrival: the kernel's receive stamps, their place on Redis's clock, and the gate that
lets a worker's requests go on in arrival order without running ahead of the others'."""
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from coupon import arrival
from coupon.arrival import ArrivalGate, arrival_ms, stamped


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

    def __call__(self, campaign_id, frontier, holding):
        self.said.append((campaign_id, frontier, holding))


def hold(gate, campaign_id, *arrivals):
    """Turns of requests of a campaign let through the gate (as its dispatcher does)."""
    turns = []
    for at in arrivals:
        turn = arrival.Turn(at, campaign_id, next(gate._ids))
        gate._holding[campaign_id] = gate._holding.get(campaign_id, 0) + 1
        gate._unbid.setdefault(campaign_id, {})[turn.id] = at
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


def test_a_worker_publishes_its_frontier_while_it_holds_requests_of_a_campaign_then_withdraws():
    peers = Peers()
    gate = ArrivalGate("w1", peers)
    (turn,) = hold(gate, 7, 1_100.0)
    gate._share()
    gate.placed(turn)
    gate._share()  # still held, bidding: it keeps its place, with no frontier
    gate.finished(turn)
    gate._share()
    gate._share()  # withdrawn once
    assert peers.said == [(7, 1_100.0, True), (7, None, True), (7, None, False)]


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
