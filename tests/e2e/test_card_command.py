"""`gunicorn -k gevent app:app`, typed exactly so in the repository root (the design card), and the
same with `-w N -b ADDR` added, is the whole service: /metrics summed over the workers, serials
given back on SIGTERM, a connection whose body was left unread closed after the answer, gunicorn's
parse errors in the JSON error shape, an address in use refused at once. gunicorn reads
./gunicorn.conf.py by itself, and its hooks mix the protections into the worker class `-k` names.
"""
import json
import signal
import socket
import subprocess

import pytest

from loadtest.harness import GUNICORN, ROOT, open_campaign, users
from tests.support import flood, get_text, issue_call, outcome, samples

STOCK = 10_000
WORKERS = {False: 2, True: 3}  # the card's command: WEB_WORKERS' default; with -w: 3


@pytest.fixture(params=[False, True], ids=["gunicorn -k gevent app:app", "with -w 3 -b ADDR"])
def server(request, gunicorn):
    options = request.param
    return gunicorn(workers=WORKERS[options], options=options, private_metrics=True)


def raw(port, data, timeout=10):
    """Send bytes on a new connection; return everything the server sends until it closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def test_the_card_command_is_the_whole_service(server, svc, signer, redis_client):
    options = "-w" in server.command
    assert server.command == [GUNICORN, "-k", "gevent", *(
        ["-w", "3", "-b", f"127.0.0.1:{server.port}"] if options else []), "app:app"]
    assert len(server.worker_pids()) == WORKERS[options]
    campaign_id = open_campaign(svc, STOCK, "card command")

    # many connections at once: every worker serves some; any worker's /metrics sums them all
    results = flood([issue_call(server.url, campaign_id, u, t) for u, t in users(signer, 300, prefix="card")],
                    concurrency=60)
    assert [status for _, status, _ in results] == [201] * 300
    for _ in range(4):
        assert outcome(samples(get_text(server.url, "/metrics")), "NEW") == 300

    # gunicorn cannot parse it: the JSON error shape, and the connection closed
    answer = raw(server.port, b"NOT A REQUEST\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in head, answer
    assert json.loads(body)["error"]["code"] == "BAD_REQUEST"

    # a body announced and never sent, by a caller without a token: answered at once and closed
    # (kept alive, gunicorn would wait for the body before reading the next request)
    answer = raw(server.port, f"POST /api/v1/campaigns/{campaign_id}/issue HTTP/1.1\r\nHost: x\r\n"
                              "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n".encode())
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 ") and b"Connection: close" in head, answer
    assert json.loads(body)["error"]["code"] == "UNAUTHORIZED"

    # stopped by SIGTERM (a service manager): every lease ends, its unused serials given back
    keys = svc.keys(campaign_id)
    assert redis_client.zcard(keys.leases) >= 1
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=60) == 0
    cursor = int(redis_client.hget(keys.meta, "cursor"))
    assert redis_client.zcard(keys.leases) == 0
    assert redis_client.llen(keys.returned) == cursor - 300 > 0


def test_an_address_in_use_is_refused_at_once_with_the_options(env):
    with socket.socket() as taken:  # what another server holds
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([GUNICORN, "-k", "gevent", "-w", "2", "-b", f"127.0.0.1:{port}", "app:app"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"127.0.0.1:{port} is in use" in done.stderr, done.stderr
    assert "Connection in use" not in done.stderr  # gunicorn's five retries, a second apart


@pytest.mark.parametrize("app", ["loadtest.ceiling_app:app", "loadtest.ceiling_app:bare"])
def test_the_same_settings_serve_another_wsgi_app(gunicorn, app):
    # make bench serves its ceilings (a bare Flask app, a bare WSGI function) with these settings:
    # the hooks must not count on the service's app (they did: its ARRIVAL_ORDER setting)
    server = gunicorn(app=app, ARRIVAL_ORDER="on")  # started: its /healthz answered 200
    assert "ok" in get_text(server.url, "/healthz")
