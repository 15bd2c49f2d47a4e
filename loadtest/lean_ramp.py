"""The opening ramp from a lean client: `python -m loadtest.lean_ramp [--users 1000]`.

The same load as `make loadtest SCENARIO=ramp` (the four k6 stages of the second post, each
virtual user asking again 1 s after each answer, on its own keep-alive connection), sent from
plain gevent sockets instead of Locust. Locust spends a few hundred microseconds of its own per
request in one process that shares the cores with the service; this client spends a few, so its
percentiles are the service's (BENCHMARKS.md, "The opening ramp"). It creates and opens a fresh
campaign against the running service (`make run`), closes it at the end and prints the close
report. Settings (SECRET_KEY, REDIS_URL, DATABASE_URL) are the service's, as for `make loadtest`.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402

import gevent  # noqa: E402

from coupon import create_app  # noqa: E402
from loadtest.harness import open_campaign  # noqa: E402
from loadtest.run import RAMP_SHARES, close  # noqa: E402


def schedule(users, duration):
    """(start, stop) in seconds for each virtual user, as the ramp's stages move the number of
    users: they come in order while it rises and go, the last first, while it falls."""
    stage = duration / len(RAMP_SHARES)
    start, stop = [0.0] * users, [duration] * users
    before = 0
    for i, share in enumerate(RAMP_SHARES):
        target = round(users * share)
        for k in range(min(before, target), max(before, target)):
            at = (i + abs(k - before) / abs(target - before)) * stage
            if target > before:
                start[k] = at
            else:
                stop[k] = at
        before = target
    return list(zip(start, stop))


def read_answer(sock):
    """Read one HTTP answer (with Content-Length) from a keep-alive socket; return its status."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split(b" ", 2)[1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=1000, help="virtual users at the peak")
    p.add_argument("--stock", type=int, help="coupons of the fresh campaign [half the users]")
    p.add_argument("--duration", type=float, default=30,
                   help="seconds of the whole ramp (as make loadtest)")
    p.add_argument("--host", default="127.0.0.1:8000")
    args = p.parse_args()
    svc = create_app().extensions["coupon"]
    stock = args.stock or max(1, args.users // 2)
    campaign_id = open_campaign(svc, stock, "lean ramp")
    host, port = args.host.rsplit(":", 1)
    took, answers = [], Counter()
    began = time.monotonic()

    def user(k, start, stop):
        token = svc.signer.mint(f"lean{campaign_id}-{k}")
        request = (f"POST /api/v1/campaigns/{campaign_id}/issue HTTP/1.1\r\nHost: {args.host}\r\n"
                   f"Authorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n").encode()
        gevent.sleep(max(0.0, began + start - time.monotonic()))
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            while time.monotonic() < began + stop:
                sent = time.perf_counter()
                sock.sendall(request)
                answers[read_answer(sock)] += 1
                took.append(time.perf_counter() - sent)
                gevent.sleep(1.0)  # the think time

    print(f"lean ramp: {args.users} users, {args.duration:g} s, campaign {campaign_id} ...",
          flush=True)
    try:
        times = schedule(args.users, args.duration)
        gevent.joinall([gevent.spawn(user, k, *t) for k, t in enumerate(times)], raise_error=True)
    finally:
        closed = close(svc, campaign_id, said="")
    took.sort()
    n = len(took)
    ms = {q: took[min(n - 1, int(n * q))] * 1000 for q in (0.5, 0.95, 0.99)}
    print(f"requests {n}  answers " + "  ".join(f"{s}: {c}" for s, c in sorted(answers.items())))
    print(f"latency ms  p50 {ms[0.5]:.1f}  p95 {ms[0.95]:.1f}  p99 {ms[0.99]:.1f}  "
          f"max {took[-1] * 1000:.1f}")
    print(f"close       {closed}")
    svc.engine.dispose()


if __name__ == "__main__":
    main()
