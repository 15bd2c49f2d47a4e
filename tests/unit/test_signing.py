"""User ids, tokens and ticket codes: no service needed (JWKS tokens: test_tokens.py)."""
import base64
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt import DecodeError, InvalidKeyError
from jwt.algorithms import HMACAlgorithm
from jwt.api_jws import PyJWS

from coupon.errors import BadRequest, Unauthorized
from coupon.signing import PreparedHMAC, SegmentsInC, Signer, check_user_id
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
    assert signer.verify(token)[0] == "alice"
    monkeypatch.undo()
    with pytest.raises(InvalidKeyError):
        PreparedHMAC(HMACAlgorithm.SHA256, signer.hs_key).prepare_key(rsa_public_pem())
