"""gunicorn's settings and hooks: `gunicorn -k gevent app:app`, typed in the repository root,
reads this file by itself (and so does `-c gunicorn.conf.py`). Environment variables override.

The service's protections live in hooks, which every way of starting gunicorn keeps, rather than
in a worker class, which `-k` on the command line replaces: on_starting mixes them into whatever
worker class gunicorn was told. What the hooks do is in coupon/worker.py, which imports neither
Flask nor the app: this file is read in the master, before the gevent workers fork and
monkey-patch.
"""
import os

import coupon.worker

bind = os.environ.get("BIND", "127.0.0.1:8000")
worker_class = "gevent"  # the protections are mixed in by on_starting, whatever -k says
workers = int(os.environ.get("WEB_WORKERS", "2"))
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "2000"))
# connections waiting to be accepted (the kernel caps it at net.core.somaxconn): an opening
# flood of new connections overflowed gunicorn's 2,048, and each one dropped was tried again
# a second later, late for first come, first served (BENCHMARKS.md)
backlog = 4096
keepalive = int(os.environ.get("KEEPALIVE", "5"))
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", "20"))
max_requests = int(os.environ.get("MAX_REQUESTS", "0"))
max_requests_jitter = int(os.environ.get("MAX_REQUESTS_JITTER", "0"))
accesslog = os.environ.get("ACCESS_LOG") or None  # off by default: it costs at a flood
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
# gunicornc's control socket would be one per user ($HOME/.gunicorn/gunicorn.ctl), shared by
# every gunicorn of that user: a second server takes it over. This service is run by signals
# (TERM, HUP, TTIN/TTOU) and its service manager, so it has none.
control_socket_disable = True
# No header sets the WSGI environ: by default gunicorn takes SCRIPT_NAME and PATH_INFO headers from
# a peer in forwarded_allow_ips (loopback: any proxy on this host that passes headers on), and a
# SCRIPT_NAME header moved the routes or drew gunicorn's HTML 500. With none listed, they are
# dropped as every header with "_" in its name is (header_map "drop"); the service is at the root.
forwarder_headers = ""

# /metrics sums the workers' values from files here (prometheus-client multiprocess mode); set
# before any worker forks, so each imports prometheus-client in that mode. The jobs process shares
# it to publish its flush rate.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", os.path.join("instance", "prometheus"))


def on_starting(server):
    """Mix the protections into the worker class; refuse an address in use; remove the metric
    files of processes that are gone (a previous run), keep live ones'."""
    on_reload(server)
    coupon.worker.refuse_address_in_use(server.cfg.address)
    coupon.worker.remove_dead_metric_files(os.environ["PROMETHEUS_MULTIPROC_DIR"])


def on_reload(server):
    """Mix the protections into the worker class (again after SIGHUP, which reads it anew)."""
    coupon.worker.protect(server)


def pre_request(worker, req):
    """Close the connection after a request whose Connection header lists "close" among other
    options (RFC 9112 9.6): gunicorn itself closes only for a value that is exactly "close", and
    would serve the request pipelined behind it."""
    worker.log.debug("%s %s", req.method, req.path)  # gunicorn's own pre_request
    if coupon.worker.asks_to_close(req.headers):
        req.force_close()


def child_exit(server, worker):
    """Drop a dead worker's live gauges (its counters still count)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):
    """A worker that starts checks Redis's settings and its clock, and watches its loop
    (coupon.worker.worker_started)."""
    coupon.worker.worker_started(worker)


def worker_exit(server, worker):
    """A worker that stops cleanly gives its serials back, leaves the roll, and ends at once."""
    coupon.worker.worker_stopping(worker)
