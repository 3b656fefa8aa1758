"""The ZeroMQ sockets of master and slave, limited before they read a byte.

Limits (see also README "Several hosts"):

- ``MAXMSGSIZE`` per message part: 4 MiB on the master (it receives only JSON results),
  64 MiB on a slave (batches). A bigger part drops the connection unread.
- ``HANDSHAKE_IVL``: a connection that has not completed its ZMTP (and CURVE) handshake
  within :data:`HANDSHAKE_SECONDS` is closed, so idle connections do not pile up.
- No ``ROUTER_HANDOVER`` and no ``ROUTING_ID`` on the slave: the master's ROUTER gives every
  connection its own routing id, which a peer cannot choose or take over.
- ``RCVHWM``: at most 1000 messages queued per connection before ZeroMQ stops reading it.

libzmq has no cap on the number of connections to a bound socket; what holds is the
handshake timeout, the CURVE handshake (nothing reaches the application before it
succeeds) and a file descriptor limit raised to its hard limit at start
(:func:`raise_fd_limit`).
"""

from __future__ import annotations

import contextlib
import resource
from typing import cast

import zmq

from taskmaster.remote import frames

HANDSHAKE_SECONDS = 5.0


def readable(sock: zmq.Socket[bytes]) -> bool:
    """Whether a frame waits on ``sock``.

    Reading EVENTS also re-arms the socket's edge-triggered file descriptor, so it must be
    the last call on the socket before blocking on that descriptor.
    """
    return bool(cast(int, sock.get(zmq.EVENTS)) & zmq.POLLIN)


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the (soft, hard) limits after.

    With the usual soft limit of 1024, a thousand idle connections from anyone would leave
    no descriptor for the checkpoint.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard


def router_socket(ctx: zmq.Context[zmq.Socket[bytes]]) -> zmq.Socket[bytes]:
    """The master's socket, limited before it reads a byte from anyone."""
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.setsockopt(zmq.MAXMSGSIZE, frames.MASTER_MAX_FRAME)  # a bigger part drops its peer
    sock.setsockopt(zmq.RCVHWM, 1000)
    sock.setsockopt(zmq.SNDHWM, 10_000)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an unreachable slave is an error, not a drop
    sock.setsockopt(zmq.HANDSHAKE_IVL, int(HANDSHAKE_SECONDS * 1000))
    sock.setsockopt(zmq.BACKLOG, 1024)
    sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)  # ZMTP pings close dead TCP connections
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5000)
    return sock


def dealer_socket(ctx: zmq.Context[zmq.Socket[bytes]]) -> zmq.Socket[bytes]:
    """A slave's socket. It sets no routing id: the master's socket assigns one."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IMMEDIATE, 1)  # no queueing for a master not (yet) connected
    sock.setsockopt(zmq.MAXMSGSIZE, frames.SLAVE_MAX_FRAME)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.setsockopt(zmq.HANDSHAKE_IVL, int(HANDSHAKE_SECONDS * 1000))
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)  # reconnect attempts back off to 1 s
    sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5000)
    return sock
