"""The platform's public keys: its JWKS (AUTH_JWKS_URL), fetched and kept per worker.

PyJWKClient does the fetching too, but it forgets its keys when a fetch fails and refetches on
every unknown kid; here the last good set stays in use while the IdP is unreachable, and a fetch
happens at most once per `min_refresh` seconds whatever tokens arrive. Only the configured URL is
ever fetched: never one a token names (jku, x5u).
"""
import http.client
import json
import logging
import threading
import time
import urllib.request

from jwt import PyJWK, PyJWTError

from coupon.errors import Unauthorized

log = logging.getLogger("coupon")

RSA_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
FETCH_TIMEOUT = 5.0  # seconds; one request (of one worker) waits this long at worst per refresh
MAX_JWKS_BYTES = 1 << 20


def keys_of(jwks):
    """{kid: {alg: PyJWK}} of a JWKS document: its signing keys with a kid.

    Each key is for the algorithm it names, or (an RSA key naming none) for every RSA algorithm;
    symmetric keys are left out (HS tokens verify with AUTH_JWT_SECRET only)."""
    keys = {}
    for data in jwks.get("keys", []) if isinstance(jwks, dict) else []:
        if not isinstance(data, dict) or not isinstance(data.get("kid"), str) \
                or data.get("kty") == "oct" or data.get("use", "sig") != "sig":
            continue
        algs = RSA_ALGS if data.get("kty") == "RSA" and "alg" not in data else (None,)
        try:
            by_alg = {key.algorithm_name: key for key in (PyJWK(data, alg) for alg in algs)}
        except PyJWTError:
            continue  # a key type this library cannot use: skipped, as PyJWKSet does
        keys[data["kid"]] = by_alg
    return keys


def fetch(url):
    """The JWKS document at url (https://, http:// on loopback, file://)."""
    with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as answer:
        return json.loads(answer.read(MAX_JWKS_BYTES))


class Keyring:
    def __init__(self, url, refresh, min_refresh, clock=time.monotonic):
        self.url, self.refresh_every, self.min_refresh, self.clock = url, refresh, min_refresh, clock
        self.keys, self.document = {}, None
        self.version = 0  # raised whenever the published keys change
        self.next_refresh = 0.0  # the first use fetches
        self.last_attempt = float("-inf")
        self.fetching = threading.Lock()  # one fetch at a time (a greenlet's lock under gevent)

    def refresh_if_due(self):
        if self.clock() >= self.next_refresh and not self.fetching.locked():
            self.refresh()

    def refresh(self):
        """Fetch the JWKS; on failure keep the keys held and try again after min_refresh."""
        with self.fetching:
            now = self.clock()
            # set before the fetch: the other greenlets go on with the keys held meanwhile
            self.last_attempt, self.next_refresh = now, now + self.min_refresh
            try:
                document = fetch(self.url)
                keys = keys_of(document)
                if not keys:
                    raise ValueError("no usable signing key with a kid")
            except (OSError, ValueError, http.client.HTTPException) as e:  # a cut answer: no OSError
                log.warning("JWKS %s not refreshed (keeping %d keys): %s", self.url, len(self.keys), e)
                return
            if document != self.document:
                self.version += 1
            self.keys, self.document = keys, document
            self.next_refresh = now + self.refresh_every

    def key(self, kid, alg):
        """The key named kid, for alg; an unknown kid fetches the JWKS again (rate-limited)."""
        if not isinstance(kid, str):
            raise Unauthorized("the token names no key (kid) of the JWKS")
        if kid not in self.keys:
            if self.fetching.locked():
                with self.fetching:
                    pass  # a fetch under way (the first one, say): its keys may have kid
            elif self.clock() - self.last_attempt >= self.min_refresh:
                self.refresh()
        by_alg = self.keys.get(kid)
        if by_alg is None:
            raise Unauthorized(f"the token's key {kid[:40]!r} (kid) is not in the JWKS")
        if alg not in by_alg:
            raise Unauthorized(f"alg {alg} is not the algorithm of key {kid[:40]!r} ({', '.join(by_alg)})")
        return by_alg[alg]
