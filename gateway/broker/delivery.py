"""How a message is put on the wire for one subscriber, and which of its properties travel.

Kept apart from the core so the fan-out hot path is easy to see and measure:
one call per delivery, reusing the message's pre-encoded topic and, for MQTT 5
subscribers without per-delivery properties, its pre-encoded property block.
"""

from __future__ import annotations

import dataclasses
import math

from ferry.gateway.broker.session import Delivery
from ferry.gateway.mqtt import (
    EMPTY_PROPERTIES, Properties, ProtocolVersion, decode_properties_bytes, encode_properties, encode_publish,
)

V5 = ProtocolVersion.V5
_NO_PROPERTIES = b"\x00"


def forwarded_properties(props: Properties) -> Properties:
    """The PUBLISH properties a broker passes on unchanged [MQTT-3.3.2-15..20]."""
    if props is EMPTY_PROPERTIES:
        return props
    kept = Properties(
        payload_format_indicator=props.payload_format_indicator,
        content_type=props.content_type,
        response_topic=props.response_topic,
        correlation_data=props.correlation_data,
        user_properties=props.user_properties,
    )
    return EMPTY_PROPERTIES if kept == EMPTY_PROPERTIES else kept


def expiry_at(props: Properties, wall: float) -> float | None:
    """Wall-clock deadline of a message with a Message Expiry Interval."""
    interval = props.message_expiry_interval
    return None if interval is None else wall + interval


def stored_properties(props: Properties) -> bytes:
    """The forwarded properties as the store keeps them (an MQTT 5 property block)."""
    return b"" if props is EMPTY_PROPERTIES else encode_properties(props)


def load_properties(blob: bytes) -> Properties:
    """Inverse of `stored_properties`."""
    return decode_properties_bytes(blob)


def publish_bytes(item: Delivery, version: ProtocolVersion, dup: bool, wall: float) -> bytes:
    """The PUBLISH packet for one delivery."""
    message = item.message
    packet_id = item.packet_id or None
    if version is not V5:
        return encode_publish(message.topic_bytes, message.payload, item.qos, item.retain, dup, packet_id)
    if message.expiry_at is None and not item.subscription_ids:
        props = message.props_v5
        if props is None:
            props = message.props_v5 = (_NO_PROPERTIES if message.properties is EMPTY_PROPERTIES
                                        else encode_properties(message.properties))
    else:
        extra = {}
        if message.expiry_at is not None:
            # The remaining lifetime; a message already in flight is resent even if it has expired.
            extra["message_expiry_interval"] = max(1, math.ceil(message.expiry_at - wall))
        if item.subscription_ids:
            extra["subscription_identifiers"] = item.subscription_ids
        props = encode_properties(dataclasses.replace(message.properties, **extra))
    return encode_publish(message.topic_bytes, message.payload, item.qos, item.retain, dup, packet_id,
                          props, V5)
