"""The ZeroMQ sockets of master and slave, limited before they read a byte."""

from __future__ import annotations

from typing import cast

import zmq

from taskmaster.remote import frames


def readable(sock: zmq.Socket[bytes]) -> bool:
    """Whether a frame waits on ``sock``.

    Reading EVENTS also re-arms the socket's edge-triggered file descriptor, so it must be
    the last call on the socket before blocking on that descriptor.
    """
    return bool(cast(int, sock.get(zmq.EVENTS)) & zmq.POLLIN)


def router_socket(ctx: zmq.Context[zmq.Socket[bytes]]) -> zmq.Socket[bytes]:
    """The master's socket, limited before it reads a byte from anyone."""
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.setsockopt(zmq.MAXMSGSIZE, frames.MASTER_MAX_FRAME)  # a bigger frame drops its peer
    sock.setsockopt(zmq.RCVHWM, 1000)
    sock.setsockopt(zmq.SNDHWM, 10_000)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an unreachable slave is an error, not a drop
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a reconnecting slave takes its id back
    sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)  # ZMTP pings close dead TCP connections
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5000)
    return sock


def dealer_socket(ctx: zmq.Context[zmq.Socket[bytes]], sender: str) -> zmq.Socket[bytes]:
    """A slave's socket; its routing id is its sender id, which the master checks."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.ROUTING_ID, sender.encode())
    sock.setsockopt(zmq.IMMEDIATE, 1)  # no queueing for a master not (yet) connected
    sock.setsockopt(zmq.MAXMSGSIZE, frames.SLAVE_MAX_FRAME)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)  # reconnect attempts back off to 1 s
    sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5000)
    return sock
