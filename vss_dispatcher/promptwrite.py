"""
Writes that leave at once rather than at the reactor's next poll.

A Twisted TCP transport keeps what it is given and sends it when the reactor
next polls its sockets: the rest of the current turn runs first, then the
reactor registers the socket for writing, polls, sends, and unregisters it.
For the dispatcher that delay sits between the end of a display and its
acknowledgement, and between a job's delivery and its request to VSS, about
a tenth of a millisecond each time on a quiet machine and more on a busy one.

L{send_promptly} changes one transport so that a write goes straight to the
socket when nothing is waiting to be sent before it, and so that a write
that follows data already waiting (a request's body after its headers)
sends both together.  What the socket does not take at once is kept and
sent by the reactor as before, in order; errors are left for the reactor to
find and report on its next attempt, as it would have anyway.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.abstract import FileDescriptor

__all__ = ["send_promptly"]

# The transport attributes this relies on; a transport without them keeps
# Twisted's own writing.
_NEEDED = (
    "socket",
    "dataBuffer",
    "offset",
    "_tempDataBuffer",
    "_writeDisconnected",
    "_writeDisconnecting",
    "producer",
    "producerPaused",
    "streamingProducer",
)


def send_promptly(transport: Any) -> bool:
    """
    Make C{transport} send what it is given at once where it safely can.

    @param transport: A connected TCP transport.
    @return: Whether it was changed; other transports (TLS wrappers, test
        doubles, transports of other reactors) are left as they are.
    """
    own = isinstance(transport, FileDescriptor)
    if not own or not all(hasattr(transport, name) for name in _NEEDED):
        return False
    queue = transport.write
    sock = transport.socket

    def write(data: bytes) -> None:
        if not isinstance(data, bytes) or not data or not _settled(transport):
            queue(data)
            return

        if transport._tempDataBuffer or transport.offset < len(transport.dataBuffer):
            # Send what was waiting and this together, in order.
            queue(data)
            transport.doWrite()
            return

        try:
            sent = sock.send(data)
        except OSError:
            # A full buffer or a broken connection: the reactor sends the
            # data later, or finds the same error and reports it.
            sent = 0
        if sent < len(data):
            queue(data[sent:])

    transport.write = write
    return True


def _settled(transport: Any) -> bool:
    """
    Whether C{transport} is in the plain state where sending at once is the
    same as letting the reactor send: connected, not closing, and with no
    producer that waits for its buffer to empty.
    """
    if not transport.connected or transport.disconnecting:
        return False
    if transport._writeDisconnected or transport._writeDisconnecting:
        return False
    if transport.producer is None:
        return True
    return bool(transport.streamingProducer) and not transport.producerPaused
