"""User ids, tokens and ticket codes: no service needed (JWKS tokens: test_tokens.py)."""
import base64
import hmac
import json
import re
import time

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from jwt import DecodeError, InvalidKeyError, PyJWTError
from jwt.algorithms import HMACAlgorithm
from jwt.api_jws import PyJWS

from coupon.errors import BadRequest, Unauthorized
from coupon.signing import (HS_ALGS, HS_HASHES, PreparedHMAC, SegmentsInC, Signer, check_user_id,
                            unverified_header)
from tests.jwks_keys import forged, rsa_public_pem

SECRET = "unit-test-secret"
user_ids = st.from_regex(r"[A-Za-z0-9_.:@-]{1,64}", fullmatch=True)


@given(user_id=user_ids)
def test_user_ids_of_the_allowed_characters_are_accepted_as_they_are(user_id):
    assert check_user_id(user_id) == user_id


@pytest.mark.parametrize("user_id", [
    "", "a" * 65, "a b", "eve\n", "\neve", "a/b", "a\x00", "é", "١", "a,b", None, 5, ["a"],
])
def test_other_user_ids_are_bad_requests(user_id):
    with pytest.raises(BadRequest, match="user id must be"):
        check_user_id(user_id)


@given(user_id=user_ids)
def test_a_minted_token_names_its_user(user_id):
    signer = Signer(SECRET, 3600)
    token = signer.mint(user_id)
    assert signer.user_of(token) == user_id
    assert signer.user_of(token) == user_id  # again, remembered
    assert Signer(SECRET, 60).user_of(token) == user_id  # any worker with the secret


def test_minting_for_a_bad_user_id_is_refused():
    with pytest.raises(BadRequest):
        Signer(SECRET, 3600).mint("mallory!")


def test_an_expired_token_is_unauthorized():
    signer = Signer(SECRET, 3600)
    with pytest.raises(Unauthorized, match="expired"):
        signer.user_of(signer.mint("alice", ttl=-10))
    with pytest.raises(Unauthorized, match="expired"):
        signer.user_of(Signer(SECRET, -10).mint("alice"))


@pytest.mark.parametrize("token", [
    "garbage", "", "x" * 3000,
    Signer("another-secret", 3600).mint("alice"),
    forged({"sub": "mallory!", "exp": int(time.time()) + 600}, SECRET),  # a user id mint would refuse
    forged({"sub": "alice", "exp": None}, SECRET), forged({"sub": "alice", "exp": "soon"}, SECRET),
    forged({"sub": "alice"}, SECRET), forged({"exp": int(time.time()) + 600}, SECRET),
    forged({"sub": 5, "exp": int(time.time()) + 600}, SECRET),
])
def test_tokens_not_minted_by_this_secret_or_not_a_user_and_expiry_are_unauthorized(token):
    with pytest.raises(Unauthorized):
        Signer(SECRET, 3600).user_of(token)


def test_a_tampered_token_is_unauthorized():
    signer = Signer(SECRET, 3600)
    payload, _, signature = signer.mint("alice").rpartition(".")
    other = "A" if payload[-1] != "A" else "B"
    for token in (payload[:-1] + other + "." + signature, payload + "." + signature[::-1], payload):
        with pytest.raises(Unauthorized):
            signer.user_of(token)


@given(campaign_id=st.integers(1, 2**31 - 1), serial=st.integers(1, 10_000_000))
def test_a_ticket_code_is_80_bits_in_upper_hex_and_the_same_every_time(campaign_id, serial):
    code = Signer(SECRET, 3600).ticket_code(campaign_id, serial)
    assert re.fullmatch(r"[0-9A-F]{20}", code)
    assert Signer(SECRET, 1).ticket_code(campaign_id, serial) == code  # recomputable to verify
    assert Signer("another-secret", 3600).ticket_code(campaign_id, serial) != code


@given(tickets=st.lists(st.tuples(st.integers(1, 300), st.integers(1, 300)), min_size=2,
                        max_size=50, unique=True))
def test_different_tickets_have_different_codes(tickets):
    signer = Signer(SECRET, 3600)
    codes = [signer.ticket_code(c, s) for c, s in tickets]
    assert len(set(codes)) == len(codes)


def test_campaign_and_serial_do_not_run_together():
    signer = Signer(SECRET, 3600)
    assert signer.ticket_code(1, 23) != signer.ticket_code(12, 3)


def decoded_or_refused(decode, segment):
    try:
        return decode(segment, "payload")
    except DecodeError as e:
        return str(e)


# what a segment may be: an encoding, unpadded or followed by 0-3 "=" (right or wrong), or any
# run of base64's characters, either alphabet's, "=" and others
encoded = st.builds(lambda b, pad: base64.urlsafe_b64encode(b).rstrip(b"=") + b"=" * pad,
                    st.binary(max_size=40), st.sampled_from([0, 0, 1, 2, 3]))


@settings(max_examples=500)  # ~1.5 s
@given(segment=encoded | st.from_regex(rb"[A-Za-z0-9_=+/!-]{0,12}", fullmatch=True))
def test_a_segment_decodes_or_is_refused_as_pyjwt_would(segment):
    assert decoded_or_refused(SegmentsInC._decode_base64url_segment, segment) == \
        decoded_or_refused(PyJWS._decode_base64url_segment, segment)


def test_the_hs_key_is_checked_once_and_any_other_key_as_pyjwt_does(monkeypatch):
    signer = Signer(SECRET, 3600)
    token = signer.mint("alice")
    monkeypatch.setattr(HMACAlgorithm, "prepare_key", None)  # a check per decode would fail loudly
    assert signer.decoder.decode(token, signer.hs_key, algorithms=["HS256"])["sub"] == "alice"
    monkeypatch.undo()
    with pytest.raises(InvalidKeyError):
        PreparedHMAC(HMACAlgorithm.SHA256, signer.hs_key).prepare_key(rsa_public_pem())


ISSUER, AUDIENCE = "https://idp.example", "coupon"


class Since:
    """A time `offset` seconds from when the test runs (as `kind`): strategies are built at import,
    and a suite runs for minutes. Every one is at least 100 s from then: no check on the edge."""

    def __init__(self, offset, kind=int):
        self.offset, self.kind = offset, kind

    def __repr__(self):
        return f"Since({self.offset}, {self.kind.__name__})"

    def at(self, now):
        return self.kind(now + self.offset)


def at_now(claims):
    now = int(time.time())
    return {name: value.at(now) if isinstance(value, Since) else value
            for name, value in claims.items()}


def listed(value):
    return [value]


times = st.sampled_from([Since(-10_000), Since(-100), Since(100), Since(10_000)])
claim_values = {
    "exp": times | st.sampled_from([Since(100, float), Since(100, str), None, True,
                                    Since(100, listed)]),
    "iat": times | st.sampled_from([Since(-100, float), Since(-100, str), None, False]),
    "nbf": times | st.just(None),
    "jti": st.sampled_from(["j1", 7]),
    "sub": user_ids | st.sampled_from([7, None, ["alice"]]),
    "iss": st.sampled_from([ISSUER, ISSUER + "/", 7, None, [ISSUER]]),
    "aud": st.sampled_from([AUDIENCE, "other", "", [], [AUDIENCE], [AUDIENCE, "other"], ["other"],
                            [AUDIENCE, 7], 7, None, {"aud": AUDIENCE}]),
    "role": st.just("user"),
}
header_values = {
    "alg": st.sampled_from([*HS_ALGS, "none", "RS256", "hs256", None]),
    "typ": st.sampled_from(["JWT", "jwt", "at+jwt", 1]),
    "kid": st.sampled_from(["k1", 1]),
    "crit": st.sampled_from([["b64"], []]),
    "b64": st.sampled_from([False, True]),
}


# what an IdP's usual token holds (a change of one or more claims: claim_values)
everyday_claims = st.fixed_dictionaries(
    {"exp": st.sampled_from([Since(100), Since(10_000)]), "sub": user_ids},
    optional={"iat": st.just(Since(-100)), "iss": st.just(ISSUER),
              "aud": st.sampled_from([AUDIENCE, [AUDIENCE, "other"]])})


def one_of(values):
    """A dict of one of the keys of `values` (or none), with a value its strategy draws."""
    return st.sampled_from([None, *values]).flatmap(
        lambda key: st.just({}) if key is None else values[key].map(lambda value: {key: value}))


def some_of(values):
    """A dict of some of the keys of `values`, each with a value its strategy draws."""
    return st.fixed_dictionaries({}, optional=values)


def everyday_token(claims, header, key=None, tamper=""):
    """A token signed as its header says (HS256 if no HS alg), then perhaps tampered with.

    tamper "unusual": the header's segment is another encoding of the same bytes (signed as it is),
    which PyJWT refuses (one encoding of each value)."""
    encode = lambda data: base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=")  # noqa: E731
    head = encode(header)
    if tamper == "unusual" and len(head) % 4:  # the last character's unused low bits set
        alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        head = head[:-1] + alphabet[alphabet.index(head[-1]) | 1:][:1]
    signed = head + b"." + encode(claims)
    hash_name = HS_HASHES.get(header.get("alg"), "sha256")
    mac = hmac.digest(key or Signer(SECRET, 60).hs_key, signed, hash_name)
    token = (signed + b"." + base64.urlsafe_b64encode(mac).rstrip(b"=")).decode()
    return {"": token, "unusual": token, "pad": token + "=", "dot": token + ".",
            "flip": token[:-2] + "AA", "head": "=" + token}[tamper]


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # HS384/512, PyJWT's
@settings(max_examples=2_000)  # ~5 s
@given(claims=everyday_claims.flatmap(lambda c: (one_of(claim_values) | some_of(claim_values)).map(
           lambda changed: {**c, **changed})),
       header=st.fixed_dictionaries({"alg": st.sampled_from(HS_ALGS)}) | some_of(header_values),
       asks=st.sampled_from([("", ""), (ISSUER, ""), ("", AUDIENCE), (ISSUER, AUDIENCE)]),
       leeway=st.sampled_from([0, 1_000]), wrong_key=st.sampled_from([False, False, True]),
       tamper=st.sampled_from(["", "", "", "", "unusual", "pad", "dot", "flip", "head"]))
def test_an_everyday_hs_token_is_accepted_as_pyjwt_accepts_it_and_anything_else_is_left_to_pyjwt(
        claims, header, asks, leeway, wrong_key, tamper):
    issuer, audience = asks
    signer = Signer(SECRET, 3600, issuer=issuer, audience=audience, leeway=leeway)
    token = everyday_token(at_now(claims), header, b"another key" * 4 if wrong_key else None, tamper)
    try:
        expected = signer.decoder.decode(token, signer.hs_key, algorithms=HS_ALGS,
                                         issuer=issuer or None, audience=audience or None,
                                         leeway=leeway)
    except PyJWTError:
        expected = None
    try:
        read = unverified_header(token)
    except DecodeError:
        return  # refused before a key is chosen, whichever way the token is checked
    everyday = signer.everyday.claims(token, read)
    assert everyday in (None, expected)
    event("everyday" if everyday else "left to PyJWT")


@pytest.mark.parametrize("issuer, audience", [("", ""), (ISSUER, AUDIENCE)])
def test_the_tokens_minted_here_and_an_idps_usual_ones_are_everyday(issuer, audience):
    signer = Signer(SECRET, 3600, issuer=issuer, audience=audience)
    minted = signer.mint("alice")
    assert signer.everyday.claims(minted, unverified_header(minted))["sub"] == "alice"
    now = int(time.time())
    usual = {"sub": "bob", "iat": now, "exp": now + 600, "iss": issuer, "aud": [audience, "other"]}
    token = everyday_token(usual, {"alg": "HS256", "typ": "JWT"}, signer.hs_key)
    assert signer.everyday.claims(token, unverified_header(token)) == usual
    # an alg whose key is too short (HS512 wants 64 bytes: this one has 32) is PyJWT's, which warns
    token = everyday_token(usual, {"alg": "HS512"}, signer.hs_key)
    assert signer.everyday.claims(token, unverified_header(token)) is None
    with pytest.warns(Warning, match="(?i)key"):
        assert signer.verify(token)[0] == "bob"


@pytest.mark.parametrize("changed", [
    {"aud": [AUDIENCE, 7]}, {"aud": ""}, {"aud": []}, {"aud": ["other"]}, {"aud": {"aud": AUDIENCE}},
    {"iss": [ISSUER]}, {"iss": ISSUER + "/"}, {"iat": Since(10_000)}, {"iat": None},
    {"exp": Since(-100)}, {"exp": Since(100, str)}, {"exp": True}, {"sub": 7},
    {"nbf": Since(10_000)}, {"jti": 7},
])
def test_a_near_miss_is_left_to_pyjwt_and_refused(changed):
    signer = Signer(SECRET, 3600, issuer=ISSUER, audience=AUDIENCE)
    claims = at_now({"sub": "bob", "iat": Since(-100), "exp": Since(600), "iss": ISSUER,
                     "aud": AUDIENCE, **changed})
    token = everyday_token(claims, {"alg": "HS256", "typ": "JWT"})
    assert signer.everyday.claims(token, unverified_header(token)) is None
    with pytest.raises(Unauthorized):
        signer.verify(token)
