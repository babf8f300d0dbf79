"""The one exception a peer's bytes can cause: :class:`ProtocolError`.

Each error names the conformance statement it enforces (``rule``, e.g.
``"MQTT-3.3.2-2"``) and carries the MQTT 5.0 reason code the broker should put
in its CONNACK or DISCONNECT before closing the connection.  Where the spec has
no numbered statement, ``rule`` is ``""`` and ``section`` cites the section.

Errors made by the local program (asking the encoder for an impossible packet)
are ``ValueError``s, not ``ProtocolError``s.
"""

from __future__ import annotations

from .reason_codes import ReasonCode

__all__ = ["ProtocolError"]


class ProtocolError(Exception):
    """A peer broke the MQTT protocol; the connection must be closed.

    Attributes:
        reason_code: MQTT 5.0 reason code for the CONNACK/DISCONNECT (for 3.1.1
            peers the broker simply closes, or maps it to a CONNACK return code).
        rule: conformance statement id such as ``"MQTT-3.8.3-4"``, or ``""``.
        section: spec section cited when there is no numbered rule, else ``""``
            (a ``section`` passed together with a ``rule`` is dropped).
        message: human-readable detail.
        packets: packets decoded successfully from the same ``feed()`` call
            before the error; the caller may still act on them.
    """

    __slots__ = ("reason_code", "rule", "section", "message", "packets")

    def __init__(
        self,
        reason_code: ReasonCode,
        rule: str,
        message: str,
        *,
        section: str = "",
    ) -> None:
        self.reason_code = reason_code
        self.rule = rule
        self.section = "" if rule else section
        self.message = message
        self.packets: tuple = ()
        super().__init__(reason_code, rule, message)

    def __str__(self) -> str:
        cite = f"[{self.rule}]" if self.rule else f"[section {self.section}]"
        return f"{cite} {self.message} ({self.reason_code.name})"

    def __repr__(self) -> str:
        return (
            f"ProtocolError({self.reason_code.name}, rule={self.rule!r}, "
            f"section={self.section!r}, message={self.message!r})"
        )


def malformed(rule: str, message: str, *, section: str = "") -> ProtocolError:
    """A Malformed Packet (0x81): the bytes cannot be parsed as the spec says."""
    return ProtocolError(ReasonCode.MALFORMED_PACKET, rule, message, section=section)


def protocol_error(rule: str, message: str, *, section: str = "") -> ProtocolError:
    """A Protocol Error (0x82): parsed, but not allowed by the spec."""
    return ProtocolError(ReasonCode.PROTOCOL_ERROR, rule, message, section=section)
