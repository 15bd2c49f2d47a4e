"""A ticket, and its one rendering: the JSON body of the issue and ticket calls."""
import functools
from dataclasses import dataclass

from coupon.clock import iso_ms

# Formatted rather than json.dumps'ed: every field is an int or a string of a charset that needs
# no JSON escaping (user ids: signing.USER_ID; codes: hex; the time: ISO). Compact and one line,
# as every other body (jsonify, errors.error_body).
BODY = '{"campaign_id":%d,"user_id":"%s","serial":%d,"code":"%s","issued_at":"%s"}\n'


@functools.lru_cache(maxsize=4)  # the tickets of one second share all but the ms
def _iso_second(second):
    return iso_ms(second * 1000)[:-5]  # without ".000Z"


@dataclass
class Ticket:
    campaign_id: int
    user_id: str
    serial: int
    code: str
    issued_at_ms: int
    new: bool = True  # issued by this request (201), not held already (200)

    def body(self):
        """The ticket as the API answers it: one line of compact JSON, as bytes."""
        second, millis = divmod(self.issued_at_ms, 1000)
        issued_at = "%s.%03dZ" % (_iso_second(second), millis)
        return (BODY % (self.campaign_id, self.user_id, self.serial, self.code, issued_at)).encode()
