"""Signing keys of a test IdP and their JWKS, made once per test process, and a JWKS served over
HTTP on a loopback port (a stdlib http.server thread) that a test can rotate or take down; tokens
forged with the service's own secret."""
import hashlib
import hmac
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import get_default_algorithms

from coupon.signing import Signer


@dataclass
class Key:
    private: object
    alg: str
    public: dict  # its JWK


def make(kid, private, alg, jwk_alg=None):
    public = json.loads(get_default_algorithms()[alg].to_jwk(private.public_key()))
    public.update(kid=kid, use="sig", **({"alg": jwk_alg} if jwk_alg else {}))
    return Key(private, alg, public)


KEYS = {k.public["kid"]: k for k in (
    make("rsa-1", rsa.generate_private_key(65537, 2048), "RS256"),  # no alg: RS* and PS*
    make("rsa-2", rsa.generate_private_key(65537, 2048), "RS256", "RS256"),
    make("ec-1", ec.generate_private_key(ec.SECP256R1()), "ES256", "ES256"),
    make("ed-1", ed25519.Ed25519PrivateKey.generate(), "EdDSA"),
)}


def jwks_of(*kids):
    return {"keys": [KEYS[kid].public for kid in kids]}


def sign(kid, claims, alg=None):
    return jwt.encode(claims, KEYS[kid].private, algorithm=alg or KEYS[kid].alg, headers={"kid": kid})


def rsa_public_pem(kid="rsa-1"):
    return KEYS[kid].private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def forged(claims, secret):
    """A token signed as a Signer of `secret` signs (HS256), carrying any claims."""
    return jwt.encode(claims, Signer(secret, 3600).hs_key, algorithm="HS256")


def by_hand(header, claims, key=None):
    """A token of any header and claims, HMAC-SHA256-signed with key (PyJWT refuses a PEM as an
    HMAC secret: the classic confusion, built here), or unsigned."""
    b64 = lambda data: jwt.utils.base64url_encode(data).decode()  # noqa: E731
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    return head + "." + (b64(hmac.digest(key, head.encode(), hashlib.sha256)) if key else "")


class JwksServer:
    """GET /jwks.json answers the keys of `publish(...)`; `down()` answers 503 until published again."""

    def __init__(self, *kids):
        self.document, self.fetches = json.dumps(jwks_of(*kids)).encode(), 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.fetches += 1
                body = server.document
                self.send_response(200 if body is not None else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def publish(self, *kids):
        self.document = json.dumps(jwks_of(*kids)).encode()

    def down(self):
        self.document = None

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)
