"""CurveZMQ, on by default (``--no-curve`` turns it off): keys derived from the secret.

Signing (:mod:`taskmaster.remote.frames`) proves who sent a frame; CURVE also hides what is
in it, and above all keeps everyone without the keys out of the socket: the master's ZAP
handler (pyzmq's ThreadAuthenticator) lets in only connections made with the slaves' key,
so a peer without the secret never gets one message delivered, however big (libzmq only
buffers messages of connections whose handshake succeeded). A slave only completes the
handshake with a server holding the master's secret key.

Every key pair comes from the secret the hosts already share, so there are no key files to
copy: the master's pair, and one pair for the slaves. Whoever has the shared secret has
every key, which is the trust model of the signatures already.
"""

from __future__ import annotations

import hashlib
import hmac

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from taskmaster.errors import UsageError
from taskmaster.record import field, record
from taskmaster.remote import frames


@record
class CurveKeys:
    """Z85-encoded key pairs of the master (server) and of the slaves (clients)."""

    server_public: bytes
    server_secret: bytes = field(repr=False)
    client_public: bytes = b""
    client_secret: bytes = field(repr=False, default=b"")


def derive_keys(secret: frames.Secret) -> CurveKeys:
    if not zmq.has("curve"):
        raise UsageError(
            "this libzmq has no CURVE (pyzmq's own wheels do): install pyzmq from its "
            "wheels, or run every host with --no-curve (frames stay signed, not encrypted, "
            "and anyone who can connect can send the master data to buffer)"
        )
    server_public, server_secret = _pair(secret, b"master")
    client_public, client_secret = _pair(secret, b"slaves")
    return CurveKeys(server_public, server_secret, client_public, client_secret)


def _pair(secret: frames.Secret, role: bytes) -> tuple[bytes, bytes]:
    # Any 32 bytes make a Curve25519 secret key; the public one follows from it.
    seed = hmac.new(secret.value, b"taskmaster curve key " + role, hashlib.sha256).digest()
    secret_key = z85.encode(seed)
    return zmq.curve_public(secret_key), secret_key


class _OnlySlaves:
    """ZAP credentials check: the slaves' public key and no other."""

    def __init__(self, client_public: bytes) -> None:
        self.client_public = client_public

    def callback(self, domain: str, key: bytes) -> bool:
        return hmac.compare_digest(key, self.client_public)


def serve(
    ctx: zmq.Context[zmq.Socket[bytes]], sock: zmq.Socket[bytes], keys: CurveKeys
) -> ThreadAuthenticator:
    """Make ``sock`` a CURVE server that admits only the slaves' key; before it binds."""
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve_callback("*", _OnlySlaves(keys.client_public))
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.server_secret)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.server_public)
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    return auth


def connect_as_slave(sock: zmq.Socket[bytes], keys: CurveKeys) -> None:
    """Make ``sock`` a CURVE client that only talks to the master's key; before it connects."""
    sock.setsockopt(zmq.CURVE_SERVERKEY, keys.server_public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.client_public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.client_secret)
