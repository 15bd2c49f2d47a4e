"""Starting a second server where one runs, and stopping the service the way people and service
managers do. Ctrl-C in `make run`'s terminal
sends SIGINT to every process of the group, and gunicorn's master then sends its workers SIGQUIT
as well; systemd or `docker stop` send SIGTERM to the group, and `make run`'s trap sends the
scheduler its own. Each process stops once, cleanly, without a traceback, and `make run` without
an error from make."""
import os
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from coupon.keys import SCHEDULER_LEADER
from loadtest.harness import GUNICORN, ROOT, free_port, open_campaign, wait_until
from tests.support import issue_call
from tests.support_http import RawConnection, issue_head


def test_an_address_in_use_is_refused_at_once_with_a_hint(env):
    with socket.socket() as taken:  # what another `make run` holds
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [GUNICORN, "-k", "gevent", "app:app"],
            cwd=ROOT, env=dict(env, BIND=f"127.0.0.1:{port}"), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"127.0.0.1:{port} is in use" in done.stderr and "BIND=" in done.stderr, done.stderr
    assert "Connection in use" not in done.stderr  # gunicorn's five retries, a second apart


def test_ctrl_c_stops_gunicorn_and_its_workers_without_a_traceback(gunicorn):
    server = gunicorn(workers=2)
    for pid in server.worker_pids() + [server.proc.pid]:  # as the terminal does: the whole group
        os.kill(pid, signal.SIGINT)
    server.proc.wait(timeout=30)
    assert server.proc.returncode == 0
    with open(server.log_path) as f:
        log = f.read()
    assert "Traceback" not in log and "SystemExit" not in log, log


def test_sigterm_answers_the_request_in_flight_then_the_worker_ends_without_the_timeout(
        gunicorn, svc, signer, redis_client):
    """A worker told to stop (SIGTERM, as systemd and a deploy do) answers the request it is
    reading, gives its unused serials back, and ends as soon as its connections are done, not
    at graceful_timeout (coupon.worker.PromptStop)."""
    server = gunicorn(workers=1, GRACEFUL_TIMEOUT=120)
    campaign_id = open_campaign(svc, 10_000)
    assert issue_call(server.url, campaign_id, "first", signer.mint("first"))()[1] == 201
    keys = svc.keys(campaign_id)
    leased = int(redis_client.hget(keys.meta, "cursor"))
    assert leased > 2  # the worker holds a block of serials
    [worker] = server.worker_pids()
    with RawConnection(server.port) as conn:
        conn.send(issue_head(campaign_id, signer.mint("second"), "Content-Length: 2"))
        wait_until(lambda: f"pid={worker}," in held_by(server.port, conn), what="the worker to accept")
        server.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: refused(server.port), what="the worker to stop listening")
        conn.send(b"{}")  # the body it waits for
        answer = conn.answer()
    assert answer.status == 201, answer
    # well before graceful_timeout: ended once its only connection closed
    assert server.proc.wait(timeout=60) == 0
    assert redis_client.zcard(keys.leases) == 0  # the block given back, as below
    assert redis_client.llen(keys.returned) == leased - 2
    with open(server.log_path) as f:
        log = f.read()
    assert "Traceback" not in log and "graceful timeout" not in log, log


def held_by(port, conn):
    """ss's line for the server's end of this connection: names the process once one accepted it."""
    client_port = conn.sock.getsockname()[1]
    return subprocess.run(["ss", "-tnpH", f"( sport = :{port} and dport = :{client_port} )"],
                          capture_output=True, text=True).stdout


def refused(port):
    """No process listens on the port any more."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_scheduler_stops_once_on_two_terms_and_resigns(scheduler, redis_client):
    jobs = scheduler(SCHEDULER_LEASE=30)
    wait_until(lambda: "leads" in jobs.output(), timeout=30, what="the scheduler to lead")
    assert redis_client.get(SCHEDULER_LEADER)
    # the group's, make run's trap's, and more, a few ms apart (signals at the same instant are
    # handled as one), so that some arrive while it shuts down and resigns
    for _ in range(10):
        if jobs.proc.poll() is None:
            jobs.proc.send_signal(signal.SIGTERM)
        time.sleep(0.005)
    # 0, or a TERM that came after Python had restored the default handlers on its way out
    assert jobs.proc.wait(timeout=30) in (0, -signal.SIGTERM)
    out = jobs.output()
    assert "Traceback" not in out and "SchedulerNotRunningError" not in out, out
    assert "stopped" in out
    assert redis_client.get(SCHEDULER_LEADER) is None  # resigned: a standby leads at once
    assert "Adding job tentatively" not in out  # APScheduler's chatter at each start


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_make_run_stopped_ends_cleanly_without_an_error_from_make(env, tmp_path, stop):
    """Ctrl-C in its terminal, or SIGTERM to its process group (systemd, `docker stop` of a shell
    that runs it): every process stops, and make reports no "Error 130/143" of a clean stop."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "make-run.log", "w+") as log:
        make = subprocess.Popen(
            ["make", "run"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env=dict(env, BIND=f"127.0.0.1:{port}", PROMETHEUS_MULTIPROC_DIR=str(tmp_path)))
        try:
            wait_until(lambda: urllib.request.urlopen(url + "/healthz", timeout=5).status == 200,
                       timeout=60, what="make run to serve")
            wait_until(lambda: "leads" in open(log.name).read(), timeout=30, what="the scheduler to lead")
            os.killpg(make.pid, stop)
            make.wait(timeout=60)
            # make may end (killed by the signal) while its recipe's trap still waits for gunicorn
            # to finish its graceful stop: every process of the group ends soon after, by itself
            wait_until(lambda: not subprocess.run(["ps", "-o", "pid=", "-g", str(make.pid)],
                                                  capture_output=True, text=True).stdout.split(),
                       timeout=60, what="every process of make run to end")
            out = open(log.name).read()
            assert "make: ***" not in out and "Traceback" not in out, out
            assert "Shutting down: Master" in out and "stopped" in out, out
        finally:
            if make.poll() is None:
                os.killpg(make.pid, signal.SIGKILL)
