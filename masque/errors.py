"""Errors raised by the protocol core.

Every error raised because of *peer input* derives from :class:`MasqueError`, so
callers can catch one type, count it by ``rule``/``reason`` and keep serving.
Programming mistakes (wrong argument types, calling an API in the wrong state)
raise the usual ``TypeError``/``ValueError``/``RuntimeError`` instead.
"""

from __future__ import annotations


class MasqueError(Exception):
    """Base class for errors caused by bytes or headers received from a peer.

    ``rule`` is a short, stable, machine-readable identifier (used as a metrics
    label); the message says in words what was wrong.
    """

    rule: str

    def __init__(self, message: str, *, rule: str = "malformed") -> None:
        super().__init__(message)
        self.rule = rule


class VarintError(MasqueError):
    """A QUIC variable-length integer (RFC 9000 §16) is truncated or out of range."""


class CapsuleError(MasqueError):
    """A capsule breaks RFC 9297 §3 framing or an RFC 9484 §4.7 rule.

    The CONNECT-IP stream must be aborted (RFC 9484 §4.7: H3_GENERAL_PROTOCOL_ERROR
    / "malformed capsule") when this is raised for a received capsule.
    """


class DatagramError(MasqueError):
    """An HTTP Datagram payload (RFC 9297 §2.1) cannot be decoded."""


class TemplateError(MasqueError):
    """A URI template configured by the operator is not a valid CONNECT-IP template."""


class RequestError(MasqueError):
    """A CONNECT-IP request must be refused; ``http_status`` is the status to answer."""

    http_status: int

    def __init__(self, message: str, *, http_status: int, rule: str = "bad-request") -> None:
        super().__init__(message, rule=rule)
        self.http_status = http_status


class PacketError(MasqueError):
    """An IP packet is malformed (bad version, length, header) and must be dropped."""
