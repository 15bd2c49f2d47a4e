"""The platform's tokens against a real gunicorn, with a JWKS served over HTTP by the test: key
rotation in the middle of a flood, every bad token, the IdP down at start and in the middle.

No timed assertions: what must happen after a refresh is waited for (bounded), and what must never
happen is checked on every answer on the way."""
import itertools
import time

import jwt
import pytest

from coupon.signing import Signer
from loadtest.harness import SECRET, open_campaign, wait_until
from tests.jwks_keys import KEYS, JwksServer, by_hand, rsa_public_pem, sign
from tests.support import flood, issue_call, request

ISSUER, AUDIENCE = "https://login.test.example/", "coupon-service"
SETTINGS = dict(AUTH_ISSUER=ISSUER, AUTH_AUDIENCE=AUDIENCE, AUTH_JWKS_REFRESH=2, AUTH_JWKS_MIN_REFRESH=1,
                RATE_LIMIT=0)  # the same users ask again and again here
users = itertools.count()  # a fresh user a call: a token never verified before


def token(kid, user=None, alg=None, **changes):
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": user or f"u{next(users)}", "iat": now, "exp": now + 600}
    return sign(kid, {k: v for k, v in {**claims, **changes}.items() if v is not None}, alg)


def issue(server, campaign_id, bearer):
    status, body, _ = request(server.url, "POST", f"/api/v1/campaigns/{campaign_id}/issue", bearer)
    return status, body


def wave(server, campaign_id, tokens):
    """Issue calls of all tokens at once; [(kid, status, body)]."""
    calls = [issue_call(server.url, campaign_id, jwt.get_unverified_header(t)["kid"], t) for t in tokens]
    return flood(calls, concurrency=50)


def unknown_kid(status, body):
    return status == 401 and "not in the JWKS" in body["error"]["message"]


def settled(server, campaign_id, kid, accepted, published):
    """Wait (bounded) until 20 fresh tokens of kid in a row are accepted (or refused as of a key
    not in the JWKS), and until every worker's refresh is due since the keys were `published`
    (time.monotonic()): a worker refreshes at its next request. (The 20 in a row alone did not
    tell: one worker may accept them all while the other still holds the keys of before.)"""
    def check():
        return all((status == 201) == accepted and (accepted or unknown_kid(status, body))
                   for status, body in (issue(server, campaign_id, token(kid)) for _ in range(20)))
    wait_until(check, timeout=60, interval=0.2, what=f"every worker to {'accept' if accepted else 'refuse'} {kid}")
    time.sleep(max(0.0, published + SETTINGS["AUTH_JWKS_REFRESH"] + 0.5 - time.monotonic()))


@pytest.fixture
def idp():
    with JwksServer("rsa-1", "ec-1", "ed-1") as server:
        yield server


def test_keys_rotated_in_the_middle_of_a_flood(idp, gunicorn, svc):
    server = gunicorn(AUTH_JWKS_URL=idp.url, **SETTINGS)
    campaign_id = open_campaign(svc, 100_000, "rotation")
    before = [token("rsa-1") for _ in range(150)]
    assert {status for _, status, _ in wave(server, campaign_id, before)} == {201}

    idp.publish("rsa-1", "rsa-2", "ec-1", "ed-1")  # the new key published first
    published = time.monotonic()
    for kid, status, body in wave(server, campaign_id, [token(k) for k in ("rsa-1", "rsa-2") * 100]):
        # the old key never fails; the new one only until a worker fetched it
        assert status == 201 or (kid == "rsa-2" and unknown_kid(status, body)), (kid, status, body)
    settled(server, campaign_id, "rsa-2", accepted=True, published=published)
    both = wave(server, campaign_id, [token(k) for k in ("rsa-1", "rsa-2") * 100] + before)
    assert {status for _, status, _ in both} == {200, 201}, both  # 200: the first wave's, held

    idp.publish("rsa-2", "ec-1", "ed-1")  # then the old one removed
    published = time.monotonic()
    for kid, status, body in wave(server, campaign_id, [token(k) for k in ("rsa-1", "rsa-2") * 100]):
        assert status == 201 or (kid == "rsa-1" and unknown_kid(status, body)), (kid, status, body)
    settled(server, campaign_id, "rsa-1", accepted=False, published=published)
    after = wave(server, campaign_id, [token(k) for k in ("rsa-1", "rsa-2") * 50] + before)
    for kid, status, body in after:  # the tokens verified before it was removed included
        assert (status in (200, 201)) == (kid == "rsa-2") and (kid == "rsa-2" or unknown_kid(status, body))


def test_every_bad_token_is_a_401_naming_its_check_and_fetches_nothing_it_names(idp, gunicorn, svc):
    server = gunicorn(AUTH_JWKS_URL=idp.url, **SETTINGS)
    campaign_id = open_campaign(svc, 1000, "bad tokens")
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": now + 600}
    with JwksServer("rsa-2") as elsewhere:
        bad = {
            "alg 'none' is not accepted": by_hand({"alg": "none", "kid": "rsa-1"}, claims),
            "signature does not verify": by_hand({"alg": "HS256", "kid": "rsa-1"}, claims, rsa_public_pem()),
            "names a key of its own (jku)": jwt.encode(claims, KEYS["rsa-2"].private, "RS256",
                                                       headers={"kid": "rsa-2", "jku": elsewhere.url}),
            "names a key of its own (x5u)": jwt.encode(claims, KEYS["rsa-2"].private, "RS256",
                                                       headers={"kid": "rsa-2", "x5u": elsewhere.url}),
            "names a key of its own (jwk)": jwt.encode(claims, KEYS["rsa-2"].private, "RS256",
                                                       headers={"kid": "rsa-2", "jwk": KEYS["rsa-2"].public}),
            "over 4096 bytes": token("rsa-1", pad="x" * 5000),
            "malformed": token("rsa-1")[:-12] + "%%%%$$$$!!!!",
            "not in the JWKS": token("rsa-2"),
            "expired (exp)": token("rsa-1", exp=now - 60),
            "no exp claim": token("rsa-1", exp=None),
            "not valid yet (nbf": token("ec-1", nbf=now + 60),
            "iat in the future": token("ed-1", iat=now + 60),
            "issuer (iss)": token("rsa-1", iss="https://elsewhere.example/"),
            "audience (aud)": token("rsa-1", aud="another-service"),
            "sub claim is not a user id": token("rsa-1", user="eve\n"),
        }
        for message, bearer in bad.items():
            for method, path in (("POST", "issue"), ("GET", "ticket")):
                status, body, _ = request(server.url, method, f"/api/v1/campaigns/{campaign_id}/{path}", bearer)
                assert status == 401 and body["error"]["code"] == "UNAUTHORIZED", (message, status, body)
                assert message in body["error"]["message"], (message, body)
        assert elsewhere.fetches == 0  # never a key fetched because a token said where
    for kid, alg in (("rsa-1", "RS256"), ("rsa-1", "PS384"), ("ec-1", "ES256"), ("ed-1", "EdDSA")):
        assert issue(server, campaign_id, token(kid, alg=alg))[0] == 201  # and the good ones still work


def test_the_idp_down_at_start_and_in_the_middle(idp, gunicorn, svc):
    idp.down()
    server = gunicorn(AUTH_JWKS_URL=idp.url, **SETTINGS)  # starts all the same
    campaign_id = open_campaign(svc, 100_000, "idp down")
    status, body = issue(server, campaign_id, token("rsa-1"))
    assert unknown_kid(status, body), body
    minted = Signer(SECRET, 3600, issuer=ISSUER, audience=AUDIENCE)  # as flask token mints
    assert issue(server, campaign_id, minted.mint("walkthrough"))[0] == 201  # HS tokens need no IdP

    idp.publish("rsa-1", "ec-1", "ed-1")
    settled(server, campaign_id, "rsa-1", accepted=True, published=time.monotonic())

    idp.down()
    fetched, deadline = idp.fetches, time.monotonic() + 120
    while idp.fetches < fetched + 6:  # both workers try again and again (every 1-2 s): all fail
        answers = wave(server, campaign_id, [token(k) for k in ("rsa-1", "ec-1", "ed-1") * 10])
        assert {status for _, status, _ in answers} == {201}, answers
        assert time.monotonic() < deadline, "the workers stopped fetching the JWKS"
    idp.publish("rsa-1", "ec-1", "ed-1")
    assert issue(server, campaign_id, token("ec-1"))[0] == 201
