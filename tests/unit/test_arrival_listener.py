"""coupon.arrival.stamp_listener: a fresh connection's first request has its receive stamp even
when it came before the accept and no other socket asked the kernel to stamp packets. (Apart from
test_arrival.py, whose tests keep a socket asking throughout.)"""
import socket
import time

from coupon.arrival import stamp_listener, stamped

# the kernel stops stamping a moment after the last socket that asked is gone, and starts a
# moment after the first asks (a deferred switch)
STAMPS_OFF_AFTER = 1.5
STAMPS_ON_AFTER = 0.5


def test_a_request_sent_before_its_accept_has_the_time_it_was_received():
    time.sleep(STAMPS_OFF_AFTER)  # no socket of these tests asks any more
    with socket.create_server(("127.0.0.1", 0)) as listener:
        stamp_listener(listener)
        time.sleep(STAMPS_ON_AFTER)  # (a worker's listener asks as it starts, long before a flood)
        with socket.create_connection(listener.getsockname()) as client:
            sent = time.clock_gettime_ns(time.CLOCK_REALTIME)
            client.sendall(b"GET / HTTP/1.1\r\n\r\n")
            time.sleep(0.2)  # in the accept queue, as at a flood
            accepted, _ = listener.accept()
            with stamped(accepted) as connection:
                assert connection.recv(100) == b"GET / HTTP/1.1\r\n\r\n"
                received = connection.take_received_ns()
    assert received is not None  # (without the listener's option: None, "when it was served")
    assert sent - 10_000_000 <= received <= sent + 100_000_000  # at its sending, not 200 ms later
