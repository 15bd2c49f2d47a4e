"""JWTs of the platform's IdP: keys from a JWKS (a file here; over HTTP in tests/e2e/test_jwks.py),
every check a token can fail, the refresh rules. No service needed."""
import json
import time

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coupon import jwks
from coupon.errors import Unauthorized
from coupon.jwks import Keyring
from coupon.signing import Signer
from tests.jwks_keys import KEYS, by_hand, jwks_of, rsa_public_pem

SECRET = "unit-test-secret"
ISSUER, AUDIENCE = "https://login.shop.example/", "coupon-service"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def published(tmp_path):
    """Write the JWKS file: published(kid, ...) publishes those keys."""
    path = tmp_path / "jwks.json"

    def publish(*kids):
        path.write_text(json.dumps(jwks_of(*kids)))
    publish("rsa-1", "ec-1", "ed-1")
    publish.url = path.as_uri()
    publish.path = path
    return publish


@pytest.fixture
def fetches(monkeypatch):
    """Count the JWKS fetches."""
    count = [0]
    real = jwks.fetch

    def counted(url):
        count[0] += 1
        return real(url)
    monkeypatch.setattr(jwks, "fetch", counted)
    return count


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def signer(published, clock):
    keyring = Keyring(published.url, refresh=300, min_refresh=30, clock=clock)
    return Signer(SECRET, 3600, issuer=ISSUER, audience=AUDIENCE, leeway=5, keyring=keyring)


def claims(**changes):
    now = int(time.time())
    found = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 600, **changes}
    return {k: v for k, v in found.items() if v is not None}


def signed(kid, alg=None, headers=None, **changes):
    key = KEYS[kid]
    return jwt.encode(claims(**changes), key.private, algorithm=alg or key.alg,
                      headers={"kid": kid, **(headers or {})})


def refused(signer, token, message):
    with pytest.raises(Unauthorized, match=message):
        signer.user_of(token)


@pytest.mark.parametrize("kid, alg", [("rsa-1", "RS256"), ("rsa-1", "RS512"), ("rsa-1", "PS256"),
                                      ("ec-1", "ES256"), ("ed-1", "EdDSA")])
def test_tokens_signed_under_a_published_key_name_their_user(signer, kid, alg):
    assert signer.user_of(signed(kid, alg)) == "alice"


def test_minted_tokens_carry_the_issuer_and_audience_and_verify(signer):
    token = signer.mint("bob")
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    got = jwt.decode(token, signer.hs_key, algorithms=["HS256"], audience=AUDIENCE)
    assert (got["iss"], got["aud"], got["sub"]) == (ISSUER, AUDIENCE, "bob")
    assert signer.user_of(token) == "bob"


def test_a_shared_secret_lets_the_platform_mint_hs_tokens():
    secret = "s" * 64  # as long as HS512 asks (RFC 7518)
    signer = Signer(SECRET, 3600, jwt_secret=secret)
    for alg in ("HS256", "HS384", "HS512"):
        assert signer.user_of(jwt.encode({"sub": "carol", "exp": int(time.time()) + 60}, secret, alg)) == "carol"


def test_another_user_claim():
    signer = Signer(SECRET, 3600, user_claim="uid")
    assert "uid" in jwt.decode(signer.mint("dave"), options={"verify_signature": False})
    assert signer.user_of(signer.mint("dave")) == "dave"


@pytest.mark.parametrize("make, message", [
    (lambda: by_hand({"alg": "none", "kid": "rsa-1"}, claims()), "alg 'none' is not accepted"),
    (lambda: by_hand({"alg": "None"}, claims()), "alg 'None' is not accepted"),
    # the classic confusion: HS256 with the RSA public key as the secret
    (lambda: by_hand({"alg": "HS256", "kid": "rsa-1"}, claims(), rsa_public_pem()), "signature does not verify"),
    (lambda: signed("rsa-1", headers={"jku": "http://127.0.0.1:1/evil.json"}), r"names a key of its own \(jku\)"),
    (lambda: signed("rsa-1", headers={"x5u": "http://127.0.0.1:1/evil.pem"}), r"names a key of its own \(x5u\)"),
    (lambda: signed("rsa-1", headers={"jwk": KEYS["rsa-2"].public}), r"names a key of its own \(jwk\)"),
    (lambda: signed("rsa-1", pad="x" * 5000), "over 4096 bytes"),
    (lambda: "a.b.c", "malformed"), (lambda: "only-one-segment", "malformed"),
    (lambda: signed("rsa-1")[:-10] + "!!!!!!!!!!", "malformed"),
    (lambda: "e30." + signed("rsa-1").split(".", 1)[1], "alg 'None' is not accepted"),  # header {}
    (lambda: signed("rsa-1").rsplit(".", 1)[0] + "." + signed("rsa-2").rsplit(".", 1)[1], "signature"),
    (lambda: signed("rsa-2"), r"key 'rsa-2' \(kid\) is not in the JWKS"),
    (lambda: by_hand({"alg": "RS256"}, claims()) + "c2ln", r"names no key \(kid\)"),
    (lambda: by_hand({"alg": "ES384", "kid": "ec-1"}, claims()) + "c2ln", "not the algorithm of key 'ec-1'"),
    (lambda: signed("rsa-1", exp=None), "no exp claim"),
    (lambda: signed("rsa-1", exp=int(time.time()) - 60), r"expired \(exp\)"),
    (lambda: signed("rsa-1", nbf=int(time.time()) + 60), r"not valid yet \(nbf"),
    (lambda: signed("rsa-1", iat=int(time.time()) + 60), r"iat in the future"),
    (lambda: signed("rsa-1", iss="https://evil.example/"), r"issuer \(iss\)"),
    (lambda: signed("rsa-1", iss=None), "no iss claim"),
    (lambda: signed("rsa-1", aud="another-service"), r"audience \(aud\)"),
    (lambda: signed("rsa-1", sub="mallory!"), "sub claim is not a user id"),
    (lambda: signed("rsa-1", sub=None), "sub claim is not a user id"),
    (lambda: signed("rsa-1", sub=5), "sub claim is not a user id"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_tokens_are_unauthorized_naming_the_check_and_fetch_nothing(signer, fetches, make, message):
    signer.user_of(signed("rsa-1"))  # the first fetch
    refused(signer, make(), message)
    assert fetches[0] == 1


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200) | st.from_regex(r"[A-Za-z0-9_=.-]{0,300}", fullmatch=True))
def test_any_text_is_a_user_or_unauthorized_never_another_error(signer, text):
    with pytest.raises(Unauthorized):
        signer.user_of(text)


def test_within_the_leeway_a_token_is_still_good(signer):
    assert signer.user_of(signed("rsa-1", exp=int(time.time()) - 2, iat=int(time.time()) + 2)) == "alice"


def test_a_verified_token_is_remembered_and_still_expires(signer, monkeypatch):
    token = signed("rsa-1", exp=int(time.time()) + 600)
    assert signer.user_of(token) == "alice"
    monkeypatch.setattr(signer.decoder, "decode", None)  # a second verification would fail loudly
    assert signer.user_of(token) == "alice"
    signer._verified[token] = ("alice", time.time() - 1)  # as if its exp (and leeway) had passed
    refused(signer, token, "expired")


def test_an_unknown_kid_fetches_again_at_most_once_per_min_refresh(signer, published, fetches, clock):
    signer.user_of(signed("rsa-1"))
    published("rsa-1", "rsa-2")  # rotated in, but fetched just now
    for i in range(50):  # a flood of made-up kids and the new one
        refused(signer, signed("rsa-1", headers={"kid": f"made-up-{i}"}), "not in the JWKS")
    assert fetches[0] == 1
    clock.now += 30
    assert signer.user_of(signed("rsa-2")) == "alice"  # fetched again for it
    refused(signer, signed("rsa-1", headers={"kid": "made-up"}), "not in the JWKS")
    assert fetches[0] == 2


def test_a_removed_key_stops_working_at_the_scheduled_refresh(signer, published, fetches, clock):
    old = signed("rsa-1")
    assert signer.user_of(old) == "alice"
    published("rsa-2")
    clock.now += 299
    assert signer.user_of(old) == "alice"
    clock.now += 1
    refused(signer, old, "not in the JWKS")  # remembered no more: the JWKS changed
    assert signer.user_of(signed("rsa-2")) == "alice"
    assert fetches[0] == 2


def test_keys_keep_working_while_the_jwks_is_unreachable(signer, published, fetches, clock):
    assert signer.user_of(signed("ec-1")) == "alice"
    published.path.unlink()
    clock.now += 300  # due: fails, retried after min_refresh
    assert signer.user_of(signed("ec-1", sub="bob")) == "bob"
    clock.now += 30
    assert signer.user_of(signed("ed-1", sub="carol")) == "carol"
    published.path.write_text("not json")
    clock.now += 30
    assert signer.user_of(signed("rsa-1", sub="dave")) == "dave"
    assert fetches[0] == 4


def test_an_unreachable_jwks_at_start_is_fetched_when_a_kid_asks(signer, published, fetches, clock):
    published.path.unlink()
    refused(signer, signed("rsa-1"), "not in the JWKS")
    published("rsa-1")
    refused(signer, signed("rsa-1"), "not in the JWKS")  # too soon after the failed fetch
    clock.now += 30
    assert signer.user_of(signed("rsa-1")) == "alice"
    assert fetches[0] == 2


def test_without_a_jwks_only_hs_tokens_are_accepted():
    refused(Signer(SECRET, 3600), signed("rsa-1"), r"alg 'RS256' is not accepted \(HS256/384/512\)")


def test_symmetric_and_encryption_keys_of_a_jwks_are_ignored():
    oct_key = {"kty": "oct", "kid": "hs", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}
    enc = {**KEYS["rsa-2"].public, "use": "enc"}
    keys = jwks.keys_of({"keys": [oct_key, enc, KEYS["rsa-1"].public, {"kty": "RSA"}, "junk"]})
    assert list(keys) == ["rsa-1"]
    assert set(keys["rsa-1"]) == set(jwks.RSA_ALGS)
    assert jwks.keys_of({"keys": [KEYS["ec-1"].public, KEYS["ed-1"].public]}).keys() == {"ec-1", "ed-1"}
    assert jwks.keys_of([]) == {} and jwks.keys_of({"keys": "x"}) == {}

