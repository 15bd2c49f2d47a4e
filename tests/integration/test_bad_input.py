"""Hostile input: a clear JSON error with a stable code, never a 500, and nothing written."""
import time

import pytest

from coupon.signing import Signer
from loadtest.harness import SECRET
from tests.jwks_keys import forged
from tests.support import assert_error, campaign_ids_in_keys, issue


def redis_snapshot(redis_client):
    """Every key with its type and size: enough to see that a request wrote nothing."""
    snapshot = {}
    for key in redis_client.scan_iter(count=1000):
        kind = redis_client.type(key)
        size = {"hash": redis_client.hlen, "stream": redis_client.xlen, "set": redis_client.scard,
                "list": redis_client.llen, "zset": redis_client.zcard}.get(kind, redis_client.strlen)
        snapshot[key] = (kind, size(key))
    return snapshot


def campaign_ids_in_redis(redis_client):
    return campaign_ids_in_keys(redis_client.scan_iter(count=1000))


def test_bad_tokens_are_401_and_write_nothing(client, signer, open_id, redis_client):
    good = signer.mint("alice")
    payload, _, signature = good.rpartition(".")
    bad_tokens = {
        "garbage": "garbage",
        "empty payload": "." + signature,
        "tampered payload": payload[:-1] + ("A" if payload[-1] != "A" else "B") + "." + signature,
        "tampered signature": payload + "." + signature[::-1],
        "no signature": payload,
        "other secret": Signer("another-secret", 3600).mint("alice"),
        "expired": Signer(SECRET, -10).mint("alice"),
        "bad user id": forged({"sub": "mallory!", "exp": int(time.time()) + 60}, SECRET),
        "no expiry": forged({"sub": "alice"}, SECRET),
        "no user": forged({"user_id": "alice", "exp": int(time.time()) + 60}, SECRET),
        "alg none": "eyJhbGciOiJub25lIn0." + payload.split(".")[1] + ".",  # {"alg":"none"}
        "very long": "x" * 3000, "over 4 KB": "x" * 5000,
    }
    before = redis_snapshot(redis_client)
    for token in bad_tokens.values():
        assert_error(issue(client, open_id, token), 401, "UNAUTHORIZED")
        response = client.get(f"/api/v1/campaigns/{open_id}/ticket",
                              headers={"Authorization": f"Bearer {token}"})
        assert_error(response, 401, "UNAUTHORIZED")
    for header in ("", "Bearer", "Bearer    ", f"Basic {good}", f"Token {good}", good):
        response = client.post(f"/api/v1/campaigns/{open_id}/issue", headers={"Authorization": header})
        assert_error(response, 401, "UNAUTHORIZED")
    assert redis_snapshot(redis_client) == before
    assert client.get(f"/api/v1/campaigns/{open_id}").json["issued"] == 0
    assert issue(client, open_id, good).status_code == 201  # and the real token still works


BOGUS_IDS = [
    "abc", "-1", "0", "00", "01", "1.5", "1e3", "+1", " 1", "1 ", "0x10", "%20", "%00", "NaN",
    "\u0661",  # ARABIC-INDIC DIGIT ONE: str.isdigit() says yes, the API must say no
    "2147483648", "99999999999999999999", "9" * 400, "424242", "2147483647",
]


@pytest.mark.parametrize("route", ["issue", "status", "ticket"])
def test_bogus_campaign_ids_are_404_and_never_become_keys(route, client, signer, open_id, redis_client):
    token = signer.mint("alice")
    auth = {"Authorization": f"Bearer {token}"}
    before = redis_snapshot(redis_client)
    for raw in BOGUS_IDS:
        if route == "issue":
            response = issue(client, raw, token)
        elif route == "status":
            response = client.get(f"/api/v1/campaigns/{raw}")
        else:
            response = client.get(f"/api/v1/campaigns/{raw}/ticket", headers=auth)
        assert_error(response, 404, "CAMPAIGN_NOT_FOUND")
    assert redis_snapshot(redis_client) == before
    assert campaign_ids_in_redis(redis_client) == {open_id}


def test_bodies_over_the_limit_are_413(client, signer, open_id, svc):
    limit = svc.config["MAX_CONTENT_LENGTH"]
    token = signer.mint("alice")
    for body in (b"{" + b" " * limit + b"}", b"x" * (limit + 1), b"\x00" * 100_000):
        for content_type in ("application/json", "application/octet-stream"):
            response = issue(client, open_id, token, data=body, content_type=content_type)
            assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    at_limit = b"{" + b" " * (limit - 2) + b"}"
    assert issue(client, open_id, token, data=at_limit, content_type="application/json").status_code == 201


def test_bad_bodies_are_400_and_write_nothing(client, signer, open_id, redis_client):
    token = signer.mint("alice")
    before = redis_snapshot(redis_client)
    for body in (b"{", b"null", b"1", b'"x"', b"[]", b"\xff\xfe", b"user_id=mallory", b"{}{}"):
        response = issue(client, open_id, token, data=body, content_type="application/json")
        assert_error(response, 400, "BAD_REQUEST")
    response = issue(client, open_id, token, data={"user_id": "mallory"})  # a form
    assert_error(response, 400, "BAD_REQUEST")
    assert redis_snapshot(redis_client) == before


def test_wrong_methods_are_405_with_allow(client, open_id):
    routes = {
        f"/api/v1/campaigns/{open_id}/issue": {"POST"},
        f"/api/v1/campaigns/{open_id}": {"GET", "HEAD", "OPTIONS"},
        f"/api/v1/campaigns/{open_id}/ticket": {"GET", "HEAD", "OPTIONS"},
        "/healthz": {"GET", "HEAD", "OPTIONS"},
        "/openapi.json": {"GET", "HEAD", "OPTIONS"},
    }
    for path, allowed in routes.items():
        for method in {"GET", "POST", "PUT", "PATCH", "DELETE"} - allowed:
            response = client.open(path, method=method)
            assert_error(response, 405, "METHOD_NOT_ALLOWED")
            assert method not in response.headers["Allow"]
