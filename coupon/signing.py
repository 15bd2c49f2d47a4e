"""User tokens and ticket codes: both signed with SECRET_KEY, under different salts."""
import hashlib
import hmac
import re
import time

from itsdangerous import BadData, URLSafeSerializer

from coupon.errors import BadRequest, Unauthorized

USER_ID = re.compile(r"[A-Za-z0-9_.:@-]{1,64}")


def check_user_id(user_id):
    if not isinstance(user_id, str) or not USER_ID.fullmatch(user_id):
        raise BadRequest("user id must be 1-64 characters of A-Z a-z 0-9 _ . : @ -")
    return user_id


class Signer:
    VERIFIED_MAX = 10_000  # tokens whose verification is remembered (per process)

    def __init__(self, secret_key, token_ttl):
        self.tokens = URLSafeSerializer(secret_key, salt="coupon-user-token")
        # loads() builds a new signer and derives its key on every call: do it once
        self._unsigner = self.tokens.make_signer(self.tokens.salt)
        self.code_key = hashlib.sha256(b"coupon-ticket-code:" + secret_key.encode()).digest()
        self.token_ttl = token_ttl
        # token -> (user id, expires): a user pressing again costs a dict lookup, not an HMAC and
        # a JSON parse; the expiry is still checked on every hit
        self._verified = {}

    def mint(self, user_id, ttl=None):
        """Return a bearer token for user_id, valid for ttl seconds (default TOKEN_TTL)."""
        check_user_id(user_id)
        expires = int(time.time() + (self.token_ttl if ttl is None else ttl))
        return self.tokens.dumps([user_id, expires])

    def user_of(self, token):
        """Return the user id a token was minted for; raise Unauthorized if it is not valid now."""
        known = self._verified.get(token)
        if known is not None:
            user_id, expires = known
            if expires < time.time():
                raise Unauthorized("the token has expired")
            return user_id
        try:
            user_id, expires = self.tokens.load_payload(self._unsigner.unsign(token))
        except (BadData, ValueError, TypeError):
            raise Unauthorized("the token is not valid") from None
        if not isinstance(expires, int) or expires < time.time():
            raise Unauthorized("the token has expired")
        if not isinstance(user_id, str) or not USER_ID.fullmatch(user_id):
            raise Unauthorized("the token is not valid")
        if len(self._verified) >= self.VERIFIED_MAX:
            self._verified.clear()  # the simplest bound: the next requests verify again
        self._verified[token] = (user_id, expires)
        return user_id

    def ticket_code(self, campaign_id, serial):
        """Return the code of a ticket: unguessable without SECRET_KEY, recomputable to verify."""
        mac = hmac.digest(self.code_key, b"%d:%d" % (campaign_id, serial), "sha256")  # one-shot, in C
        return mac[:10].hex().upper()  # 80 bits; hex is done in C (base32 is pure Python: ~7 us)
