"""coupon/worker.py, as gunicorn's master meets it: imported by gunicorn.conf.py before the gevent
workers fork and monkey-patch, it must not bring Flask in (with Flask imported in the master,
gevent warns "Monkey-patching ssl after ssl has already been imported" in every worker)."""
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def modules_after(code):
    """Which of Flask, werkzeug and coupon/app.py a fresh interpreter in the repository root has
    imported after running `code`."""
    watched = ("flask", "werkzeug", "coupon.app")
    probe = f"{code}\nimport sys\nprint(sorted(m for m in {watched!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                          check=True, env=dict(os.environ, PROMETHEUS_MULTIPROC_DIR=os.devnull))
    return done.stdout.strip()


def test_reading_the_gunicorn_settings_imports_no_flask():
    assert modules_after("import runpy; runpy.run_path('gunicorn.conf.py')") == "[]"


def test_create_app_is_still_imported_from_the_package():
    assert modules_after("from coupon import create_app") == "['coupon.app', 'flask', 'werkzeug']"


ACCEPTED_MARKS = textwrap.dedent("""
    from gevent import monkey; monkey.patch_all()
    import random, socket, sys, time, gevent
    from gevent.pool import Pool
    from gevent.server import StreamServer
    from coupon.arrival import ReadMarks
    from coupon.worker import DrainingStreamServer

    marks, n = ReadMarks(), 400
    clock = lambda: time.clock_gettime_ns(time.CLOCK_REALTIME)
    written, read, late = {}, set(), set()

    def handle(connection, address):
        read.add(int(connection.recv(16)))  # the request is read and has entered the gate

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    if sys.argv[1] == "drain":
        server = DrainingStreamServer(listener, handle, spawn=Pool(1000))
    else:
        server = StreamServer(listener, handle, spawn=Pool(1000))
        server.max_accept = 1  # as gunicorn has a gevent worker with siblings accept
    server.start()

    def busy():  # a loaded worker: turns of its loop that take a while
        while len(read) < n:
            end = time.perf_counter() + random.uniform(0, 0.001)
            while time.perf_counter() < end:
                pass
            gevent.sleep(0)

    def check():
        while len(read) < n:
            through = marks.read_through_ns()
            late.update(i for i, at in list(written.items()) if at < through and i not in read)
            gevent.sleep(0)

    def client():  # an OS thread: new connections arrive whatever the loop does
        for i in range(n):
            connection = monkey.get_original("socket", "socket")()
            connection.connect(listener.getsockname())
            connection.sendall(b"%d" % i)
            written[i] = clock()  # after the write: the bytes were there before it
            monkey.get_original("time", "sleep")(random.uniform(0, 0.0005))

    greenlets = [gevent.spawn(busy) for _ in range(3)] + [gevent.spawn(check)]
    gevent.sleep(0.01)
    monkey.get_original("threading", "Thread")(target=client, daemon=True).start()
    gevent.joinall(greenlets, timeout=30)
    print(len(read) == n, len(late))
""")


@pytest.mark.parametrize("server, late", [("drain", False), ("one a look", True)])
def test_in_arrival_order_a_worker_accepts_every_waiting_connection_each_time_it_looks(server, late):
    """A new connection's request that arrived before the read-through mark has been read.

    Accepted one a look, as gunicorn has it, a flood of new connections waits in the accept
    queue, unread, behind the mark (arrival.ReadMarks)."""
    out = subprocess.run([sys.executable, "-c", ACCEPTED_MARKS, server], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    read_all, late_count = out.stdout.split()
    assert read_all == "True", out.stderr
    assert (int(late_count) > 0) == late
