"""What gunicorn.conf.py's hooks do to a gunicorn server and its workers.

They are: the protections mixed into whatever worker class `-k` names (WorkerProtections), the
address-in-use refusal, the metric files of dead processes removed, a Connection header that
lists close, and what a worker does with the app's gateways as it starts and stops.

gunicorn's master imports this module with its settings, before it forks the workers and the
gevent worker monkey-patches: it must not import Flask, ssl or the app's modules at import time
(coupon/__init__.py imports nothing). What a worker needs of the app it imports inside the
methods that run in the worker.
"""
import errno
import os
import socket
import sys
import time
from functools import partial

import gevent
from gevent.event import Event
from gevent.pool import Pool
from gevent.server import StreamServer
from gunicorn import util
from gunicorn.http import errors as http_errors
from gunicorn.sock import ssl_context
from gunicorn.workers import ggevent
from gunicorn.workers.ggevent import GeventWorker

# gunicorn's errors for a request it cannot parse, as our error codes (any other: BadRequest)
PARSE_ERRORS = {
    http_errors.LimitRequestLine: "UriTooLong",
    http_errors.LimitRequestHeaders: "HeaderFieldsTooLarge",
    http_errors.UnsupportedTransferCoding: "UnsupportedTransferCoding",
}
# ParseExceptions that are our fault, not the client's: gunicorn's own 500
OUR_PARSE_ERRORS = (http_errors.ConfigurationProblem, http_errors.InvalidResponseHeader,
                    http_errors.InvalidResponseHeaderName)


class WorkerProtections:
    """Protections mixed into the worker class, for its requests, its connections and Ctrl-C.

    Note when each request arrived (coupon.arrival), yield to the other connections after each
    request (a gevent worker), answer the requests gunicorn cannot parse in the JSON error shape,
    let the app close a connection, quit once on Ctrl-C.

    A keep-alive connection whose client sends the next request at once is otherwise served
    again and again before the others: a p99 of ~1 s at 100 connections on a bare endpoint,
    ~170 ms with the yield (loadtest/bench.py, BENCHMARKS.md, "Where a request's time goes").
    """

    _quitting = False
    exits_with_0 = False  # told to quit, or stopped cleanly (PromptStop): worker_stopping

    def handle_quit(self, sig, frame):
        # Ctrl-C reaches a worker twice, SIGINT from the terminal and SIGQUIT from the master:
        # a second exiting greenlet would run during the interpreter's shutdown and print a
        # "SystemExit: 0" traceback
        if not self._quitting:
            self._quitting = self.exits_with_0 = True  # (base Worker.handle_quit; worker_stopping)
            super().handle_quit(sig, frame)

    def handle(self, listener, client, addr):
        # imported here, in the worker (as below): each connection notes when its requests arrived
        import ssl

        from coupon.arrival import stamped

        if not isinstance(client, ssl.SSLSocket):  # TLS reads its records itself: no stamps
            client = stamped(client)
        return super().handle(listener, client, addr)

    def handle_request(self, *args):
        try:
            return super().handle_request(*args)
        finally:
            if isinstance(self, GeventWorker):
                gevent.sleep(0)

    def load_wsgi(self):
        super().load_wsgi()
        app = self.served_app = self.wsgi  # the Flask app (services_of below)
        from coupon.arrival import RECEIVED_NS, stamp_listener  # in the worker, as in handle()

        for listener in self.sockets:
            stamp_listener(listener)
        if getattr(app, "config", {}).get("ARRIVAL_ORDER"):  # (another app: loadtest's bare one)
            ggevent.StreamServer = DrainingStreamServer  # what GeventWorker.run listens with

        def closable(environ, start_response):
            # start_response is bound to gunicorn's Response: force_close() answers with
            # "Connection: close" and closes after (coupon.bodies: a body left unread)
            environ["coupon.close_connection"] = start_response.__self__.force_close
            stamps = environ.get("gunicorn.socket")  # coupon.arrival: when the request arrived
            if hasattr(stamps, "take_received_ns"):
                environ[RECEIVED_NS] = stamps.take_received_ns()
            return app(environ, start_response)

        self.wsgi = closable

    def handle_error(self, req, client, addr, exc):
        if not isinstance(exc, http_errors.ParseException) or isinstance(exc, OUR_PARSE_ERRORS):
            return super().handle_error(req, client, addr, exc)
        # imported here, in the worker: gevent patches it before the app (and ssl) is imported
        from werkzeug.http import HTTP_STATUS_CODES

        from coupon import errors

        error = getattr(errors, PARSE_ERRORS.get(type(exc), "BadRequest"))()
        self.log.warning("Invalid request from ip=%s: %s", (addr or ("",))[0], exc)
        body = errors.error_body(error.code, error.message)
        head = (f"HTTP/1.1 {error.status} {HTTP_STATUS_CODES[error.status]}\r\n"
                f"Connection: close\r\nContent-Type: {errors.JSON}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")
        try:
            util.write_nonblock(client, head.encode("latin-1") + body)
        except OSError:
            self.log.debug("Failed to send error message.")


class DrainingStreamServer(StreamServer):
    """gevent's StreamServer, accepting every connection that waits each time it looks.

    gunicorn has a gevent worker with siblings accept one connection a look (max_accept 1, to
    spread them among the workers); under a flood the rest waited in the kernel's accept queue,
    unread, which the worker's read marks (arrival.ReadMarks: what arrived before a look three
    looks back has been read) took as read, and later requests were served before them
    (BENCHMARKS.md, "New connections accepted all at once"). Its pool (worker_connections) still
    bounds it: with that many connections open, it accepts none until one closes."""

    def start(self):
        self.max_accept = self.pool.size
        super().start()


class PromptStop:
    """gunicorn's gevent worker, stopping as soon as it is told to and its connections are done.

    GeventWorker.run looks whether it was told to stop once a second, then whether its
    connections are done once a second: after SIGTERM a worker with nothing in flight took
    1.35 s to exit (every deploy's restart, every test's server). Here the signal wakes it, and
    its connections' end does, up to graceful_timeout; it tells the master it lives each second
    as before. The rest is GeventWorker.run's, for its plain StreamServer."""

    def init_signals(self):
        self.told_to_stop = Event()
        super().init_signals()

    def handle_exit(self, sig, frame):
        super().handle_exit(sig, frame)
        self.told_to_stop.set()

    def run(self):
        ssl_args = {"ssl_context": ssl_context(self.cfg)} if self.cfg.is_ssl else {}
        servers = []
        for listener in self.sockets:
            listener.setblocking(1)
            handle = partial(self.handle, ListenerName(listener))
            server = ggevent.StreamServer(listener, handle=handle,
                                          spawn=Pool(self.worker_connections), **ssl_args)
            if self.cfg.workers > 1:
                server.max_accept = 1  # (DrainingStreamServer takes every one that waits)
            server.start()
            servers.append(server)
        while self.alive:
            self.notify()
            self.told_to_stop.wait(1.0)
        for server in servers:
            server.close()  # accept no more
        deadline = time.monotonic() + self.cfg.graceful_timeout
        for server in servers:
            while not server.pool.join(timeout=1.0):
                if time.monotonic() >= deadline:
                    self.log.warning("Worker graceful timeout (pid:%s)", self.pid)
                    server.stop(timeout=1)  # end the handlers still running
                    break
                self.notify()
        self.exits_with_0 = True


class ListenerName:
    """What gunicorn's handler asks of the listener a connection came from: its address.

    A connection accepted just before the worker stops listening is handled after the listener
    has closed, whose getsockname() would fail (a traceback, the request dropped)."""

    def __init__(self, listener):
        self.address = listener.getsockname()

    def getsockname(self):
        return self.address


def protected(worker_class):
    """worker_class with the service's protections mixed in (and, a gevent worker, PromptStop)."""
    if issubclass(worker_class, WorkerProtections):
        return worker_class
    mixins = (WorkerProtections,)
    if worker_class.run is GeventWorker.run and worker_class.server_class is None:
        mixins += (PromptStop,)
    return type(f"Protected{worker_class.__name__}", (*mixins, worker_class), {})


def protect(server):
    """Mix the protections into the server's worker class; warn if it is not gevent's."""
    server.worker_class = protected(server.worker_class)
    if not issubclass(server.worker_class, GeventWorker):
        server.log.warning(
            "worker class %s: this service is built for -k gevent (one worker serves thousands "
            "of connections and shares Redis round trips between them)", server.cfg.worker_class_str)


def refuse_address_in_use(addresses):
    """Say at once which setting to change, instead of gunicorn's five "Connection in use"."""
    if "GUNICORN_FD" in os.environ or "LISTEN_FDS" in os.environ:
        return  # a re-exec (USR2) or systemd hands the sockets over: they are in use by design
    for address in addresses:
        if not isinstance(address, tuple):  # a unix socket: gunicorn's own checks
            continue
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        with socket.socket(family) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
            try:
                probe.bind(address)
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    raise
                raise RuntimeError(
                    f"{address[0]}:{address[1]} is in use (another `make run`?): stop that one, "
                    f"or serve elsewhere with BIND, e.g. BIND=127.0.0.1:{address[1] + 1} make run"
                ) from None


def remove_dead_metric_files(folder):
    """Make the metrics folder; remove the files of processes that are gone, keep live ones'.

    Processes that are gone: those of a previous run."""
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        pid = name.rsplit(".", 1)[0].rsplit("_", 1)[-1]
        if name.endswith(".db") and not (pid.isdigit() and _alive(int(pid))):
            os.remove(os.path.join(folder, name))


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def asks_to_close(headers):
    """Whether any Connection header among (NAME, value) pairs lists the option "close"."""
    return any(name == "CONNECTION" and "close" in (o.strip(" \t").lower() for o in value.split(","))
               for name, value in headers)


def worker_started(worker):
    """What a worker does as it starts.

    Say what in Redis's settings would lose claims (coupon.redis_guard), measure the clock's
    offset to Redis's while the loop is idle (coupon.clock), watch how late the loop runs
    (coupon.metrics) and, in arrival order, keep the worker's name on the roll of workers
    serving (coupon.arrival.WorkerRoll)."""
    services = services_of(worker)
    if services is not None:
        services.redis_guard.verdict()
        services.clock.calibrate()
        services.metrics.watch_loop_lag()
        if services.gate.enabled:
            services.roll.start()


def worker_stopping(worker):
    """Give the unused serials of the worker's blocks back to Redis, and leave the roll.

    Then a worker that stopped cleanly (PromptStop) or was told to quit ends at once, with the
    status it would have: what is left is the interpreter's teardown, ~0.85 s of CPU collecting
    the app's garbage (py-spy), in a process that ends anyway; a forked child leaves with
    os._exit, as Python's docs advise."""
    services = services_of(worker)
    if services is not None:
        services.issuer.give_back_all()
        if services.gate.enabled:
            services.roll.leave()
    if getattr(worker, "exits_with_0", False):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def services_of(worker):
    """The coupon app's gateways in this worker (None before the app is loaded, or another app)."""
    app = getattr(worker, "served_app", None)
    return getattr(app, "extensions", {}).get("coupon") if app else None
