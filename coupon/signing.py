"""User tokens (JWTs, RFC 7519) and ticket codes (an HMAC with SECRET_KEY)."""
import base64
import binascii
import hashlib
import hmac
import json
import re
import time

import jwt
from jwt.algorithms import HMACAlgorithm
from jwt.api_jws import PyJWS

from coupon.errors import BadRequest, Unauthorized
from coupon.jwks import Keyring

USER_ID = re.compile(r"[A-Za-z0-9_.:@-]{1,64}")
BASE64URL_BYTES = re.compile(rb"[A-Za-z0-9_-]*")
HS_ALGS = ("HS256", "HS384", "HS512")
HS_HASHES = dict(zip(HS_ALGS, ("sha256", "sha384", "sha512")))
TOKEN_MAX = 4096  # bytes: an IdP's token with a few claims is well under 2 KB
KEY_HEADERS = ("jku", "x5u", "jwk", "x5c")  # a token naming its own key: never fetched, never trusted

# what failed, for the 401's message; anything else PyJWT raises is a malformed token
FAILED = [
    (jwt.ExpiredSignatureError, "the token has expired (exp)"),
    (jwt.ImmatureSignatureError, "the token is not valid yet (nbf, or iat in the future)"),
    (jwt.InvalidIssuedAtError, "the token's issue time (iat) is not a number"),
    (jwt.InvalidIssuerError, "the token's issuer (iss) is not AUTH_ISSUER"),
    (jwt.InvalidAudienceError, "the token's audience (aud) is not AUTH_AUDIENCE"),
    (jwt.InvalidSignatureError, "the token's signature does not verify"),
    (jwt.InvalidAlgorithmError, "the token's alg is not the one of its key"),
    (jwt.InvalidKeyError, "the token's key does not fit its alg"),
    (jwt.exceptions.InvalidSubjectError, "the token's sub claim is not a user id"),
]


def check_user_id(user_id):
    if not isinstance(user_id, str) or not USER_ID.fullmatch(user_id):
        raise BadRequest("user id must be 1-64 characters of A-Z a-z 0-9 _ . : @ -")
    return user_id


def unverified_header(token):
    """A token's header, to choose its key by; jwt.decode then checks the whole token.

    PyJWT's get_unverified_header decodes and checks all three parts, in Python a character at a
    time: a third of a new user's token check. The header's segment is decoded by PyJWT's rules
    (SegmentsInC), once: the everyday check (EverydayHS) takes it as PyJWT would read it."""
    head = SegmentsInC._decode_base64url_segment(token.split(".", 1)[0].encode(), "header")
    try:
        header = json.loads(head)
    except (ValueError, RecursionError):  # (UnicodeDecodeError and JSONDecodeError are ValueErrors)
        raise jwt.DecodeError("Invalid header string") from None
    if not isinstance(header, dict):
        raise jwt.DecodeError("Invalid header string: must be a json object")
    return header


class PreparedHMAC(HMACAlgorithm):
    """PyJWT's HMAC algorithm, with its checks of our one HS key done once, not at every decode.

    PyJWT checks an HMAC key (not a PEM, DER or SSH key, not a JWK; its length) each time it
    verifies with it: ~15 us of a ~90 us token check (BENCHMARKS.md, "What a new ticket costs the
    web worker"). Any other key is checked as PyJWT does."""

    def __init__(self, hash_alg, key):
        super().__init__(hash_alg)
        self.key, self.prepared = key, super().prepare_key(key)
        self.too_short = super().check_key_length(self.prepared)  # a warning's text, or None

    def prepare_key(self, key):
        return self.prepared if key is self.key else super().prepare_key(key)

    def check_key_length(self, key):
        return self.too_short if key is self.prepared else super().check_key_length(key)


class SegmentsInC(PyJWS):
    """PyJWT's JWS, whose check of a segment's characters is one regular expression.

    PyJWT checks each character of the three segments in a Python loop: ~20 us of a ~90 us token
    check (BENCHMARKS.md, "What a new ticket costs the web worker"). The same rules, in the same
    order (tests/unit/test_signing.py holds the two to the same answers)."""

    @staticmethod
    def _decode_base64url_segment(segment, name):
        stripped = segment.rstrip(b"=")
        padding = len(segment) - len(stripped)
        if padding > 2 or (padding and len(segment) % 4) or len(stripped) % 4 == 1 \
                or not BASE64URL_BYTES.fullmatch(stripped):
            raise jwt.DecodeError(f"Invalid {name} padding")
        try:
            decoded = base64.urlsafe_b64decode(stripped + b"=" * (-len(stripped) % 4))
        except (TypeError, binascii.Error) as err:
            raise jwt.DecodeError(f"Invalid {name} padding") from err
        if base64.urlsafe_b64encode(decoded).rstrip(b"=") != stripped:  # one encoding of each value
            raise jwt.DecodeError(f"Invalid {name} padding")
        return decoded


def decoder(hs_key, options):
    """A PyJWT of our own: options set once, segments checked in C, hs_key prepared once."""
    decoder = jwt.PyJWT(options)
    # the PyJWS it verifies signatures with (jwt.decode's is set the same way, in api_jwt.py)
    decoder._jws = SegmentsInC()
    for alg, hash_alg in zip(HS_ALGS, (HMACAlgorithm.SHA256, HMACAlgorithm.SHA384,
                                       HMACAlgorithm.SHA512)):
        decoder._jws.unregister_algorithm(alg)
        decoder._jws.register_algorithm(alg, PreparedHMAC(hash_alg, hs_key))
    return decoder


class EverydayHS:
    """An everyday HS token checked in a few calls into C, not through PyJWT's decode.

    Everyday: a header of alg (and typ) only, three segments, a signature that verifies, an exp
    and an optional iat that are whole numbers and say it is valid now, and the iss and aud asked
    for. claims() answers those exactly as PyJWT does, and anything else None: then PyJWT decides,
    and says why it refuses (tests/unit/test_signing.py holds the two to the same answers). A new
    user's token check took 0.61-0.89 of its time through PyJWT (BENCHMARKS.md, "An everyday HS
    token checked without PyJWT's decode")."""

    def __init__(self, decoder, hs_key, issuer, audience, leeway):
        # an alg whose key is too short is left to PyJWT, which warns of it at every check
        self.hashes = {alg: name for alg, name in HS_HASHES.items()
                       if not decoder._jws.get_algorithm_by_name(alg).too_short}
        self.hs_key, self.issuer, self.audience, self.leeway = hs_key, issuer, audience, leeway

    def claims(self, token, header):
        """The claims of `token` (whose header is `header`) if it is an everyday one, else None."""
        hash_name = self.hashes.get(header.get("alg"))
        if hash_name is None or not header.keys() <= {"alg", "typ"}:  # (PyJWT reads no typ)
            return None
        signed = token.encode()
        segments = signed.split(b".")
        if len(segments) != 3:
            return None
        decode = SegmentsInC._decode_base64url_segment  # PyJWT's rules (unverified_header's too)
        try:
            claims = json.loads(decode(segments[1], "payload"))
            signature = decode(segments[2], "crypto")
        except (jwt.DecodeError, ValueError, RecursionError):
            return None
        mac = hmac.digest(self.hs_key, signed[:len(signed) - len(segments[2]) - 1], hash_name)
        if not hmac.compare_digest(signature, mac):
            return None
        if type(claims) is not dict or not claims.keys().isdisjoint(("nbf", "jti")):
            return None
        exp, iat, now = claims.get("exp"), claims.get("iat", 0), time.time()
        if type(exp) is not int or type(iat) is not int or exp <= now - self.leeway \
                or iat > now + self.leeway or type(claims.get("sub", "")) is not str:
            return None
        if self.issuer and claims.get("iss") != self.issuer:
            return None
        aud = claims.get("aud")
        if self.audience and aud != self.audience and not (
                type(aud) is list and self.audience in aud and all(type(a) is str for a in aud)):
            return None
        return claims


def failure(error):
    if isinstance(error, jwt.MissingRequiredClaimError):
        return f"the token has no {error.claim} claim"
    for kind, message in FAILED:
        if isinstance(error, kind):
            return message
    return "the token is malformed"


class Signer:
    VERIFIED_MAX = 10_000  # tokens whose verification is remembered (per process)

    def __init__(self, secret_key, token_ttl, *, jwt_secret="", issuer="", audience="", leeway=0,
                 user_claim="sub", keyring=None):
        # HS tokens: AUTH_JWT_SECRET, or else a key derived from SECRET_KEY (32 bytes, as RFC 7518
        # asks of HS256; and never the key of the ticket codes)
        self.hs_key = jwt_secret.encode() if jwt_secret else hashlib.sha256(
            b"coupon-user-token:" + secret_key.encode()).digest()
        self.code_key = hashlib.sha256(b"coupon-ticket-code:" + secret_key.encode()).digest()
        self.token_ttl, self.issuer, self.audience = token_ttl, issuer, audience
        self.leeway, self.user_claim, self.keyring = leeway, user_claim, keyring
        self.decoder = decoder(self.hs_key, {"require": ["exp"], "verify_iss": bool(issuer),
                                             "verify_aud": bool(audience)})
        self.everyday = EverydayHS(self.decoder, self.hs_key, issuer, audience, leeway)
        # token -> (user id, expires): a user pressing again costs a dict lookup, not a signature
        # check; the expiry is still checked on every hit, and a change of the JWKS forgets them all
        self._verified, self._keys_version = {}, 0

    @classmethod
    def from_config(cls, config):
        keyring = None
        if config["AUTH_JWKS_URL"]:
            keyring = Keyring(config["AUTH_JWKS_URL"], config["AUTH_JWKS_REFRESH"],
                              config["AUTH_JWKS_MIN_REFRESH"])
        return cls(config["SECRET_KEY"], config["TOKEN_TTL"], jwt_secret=config["AUTH_JWT_SECRET"],
                   issuer=config["AUTH_ISSUER"], audience=config["AUTH_AUDIENCE"],
                   leeway=config["AUTH_LEEWAY"], user_claim=config["AUTH_USER_CLAIM"], keyring=keyring)

    def mint(self, user_id, ttl=None):
        """Return an HS256 JWT for user_id, valid for ttl seconds (default TOKEN_TTL)."""
        check_user_id(user_id)
        now = int(time.time())
        claims = {self.user_claim: user_id, "iat": now, "exp": now + (self.token_ttl if ttl is None else ttl)}
        if self.issuer:
            claims["iss"] = self.issuer
        if self.audience:
            claims["aud"] = self.audience
        return jwt.encode(claims, self.hs_key, algorithm="HS256")

    def user_of(self, token):
        """Return the user id a token names; raise Unauthorized, saying why, if it is not valid now."""
        if self.keyring is not None:
            self.keyring.refresh_if_due()
            if self.keyring.version != self._keys_version:
                self._verified.clear()
                self._keys_version = self.keyring.version
        known = self._verified.get(token)
        if known is not None:
            user_id, expires = known
            if expires < time.time():
                raise Unauthorized("the token has expired (exp)")
            return user_id
        user_id, expires = self.verify(token)
        if len(self._verified) >= self.VERIFIED_MAX:
            self._verified.clear()  # the simplest bound: the next requests verify again
        self._verified[token] = (user_id, expires)
        return user_id

    def verify(self, token):
        """(user id, expiry with the leeway) of a token whose signature and claims check out."""
        if len(token) > TOKEN_MAX:
            raise Unauthorized(f"the token is over {TOKEN_MAX} bytes")
        try:
            header = unverified_header(token)
            key, algs = self.key_for(header)
            claims = self.everyday.claims(token, header) if key is self.hs_key else None
            if claims is None:
                claims = self.decoder.decode(token, key, algorithms=algs,
                                             issuer=self.issuer or None,
                                             audience=self.audience or None, leeway=self.leeway)
        except jwt.PyJWTError as e:
            raise Unauthorized(failure(e)) from None
        user_id = claims.get(self.user_claim)
        if not isinstance(user_id, str) or not USER_ID.fullmatch(user_id):
            raise Unauthorized(f"the token's {self.user_claim} claim is not a user id "
                               "(1-64 characters of A-Z a-z 0-9 _ . : @ -)")
        if not isinstance(claims["exp"], (int, float)):
            raise Unauthorized("the token has no exp claim")
        return user_id, claims["exp"] + self.leeway

    def key_for(self, header):
        """The key and algorithms a token may verify with: chosen by our keys, never the token's."""
        named = [name for name in KEY_HEADERS if name in header]
        if named:
            raise Unauthorized(f"the token's header names a key of its own ({', '.join(named)}): "
                               "keys come from AUTH_JWT_SECRET and AUTH_JWKS_URL only")
        alg = header.get("alg")
        if alg in HS_ALGS:
            return self.hs_key, HS_ALGS
        if self.keyring is not None and isinstance(alg, str) and alg.upper() != "NONE":
            return self.keyring.key(header.get("kid"), alg), [alg]
        accepted = "HS256/384/512" + (", or those of the JWKS keys" if self.keyring else "")
        raise Unauthorized(f"the token's alg {str(alg)[:20]!r} is not accepted ({accepted})")

    def ticket_code(self, campaign_id, serial):
        """Return the code of a ticket: unguessable without SECRET_KEY, recomputable to verify."""
        mac = hmac.digest(self.code_key, b"%d:%d" % (campaign_id, serial), "sha256")  # one-shot, in C
        return mac[:10].hex().upper()  # 80 bits; hex is done in C (base32 is pure Python: ~7 us)
