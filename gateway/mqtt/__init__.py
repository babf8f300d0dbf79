"""Sans-IO MQTT 3.1.1 / 5.0 codec for the Ferry gateway.

Bytes in, typed packets out (:class:`Decoder`); packets in, bytes out
(:func:`encode`, :func:`encode_publish`).  No I/O, clocks or threads: the
broker core and the network adapter drive it.
"""

from .decoder import Decoder
from .encoder import encode, encode_properties, encode_publish, encode_publish_ack, encode_topic
from .errors import ProtocolError
from .packets import (
    EMPTY_PROPERTIES,
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    PacketType,
    Pingreq,
    Pingresp,
    Properties,
    ProtocolVersion,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Subscription,
    Unsuback,
    Unsubscribe,
    Will,
)
from .properties import decode_properties_bytes
from .reason_codes import ReasonCode
from .topics import split_shared, topic_matches, validate_topic_filter, validate_topic_name

__all__ = [
    "EMPTY_PROPERTIES",
    "Auth",
    "Connack",
    "Connect",
    "Decoder",
    "Disconnect",
    "Packet",
    "PacketType",
    "Pingreq",
    "Pingresp",
    "Properties",
    "ProtocolError",
    "ProtocolVersion",
    "Puback",
    "Pubcomp",
    "Publish",
    "Pubrec",
    "Pubrel",
    "ReasonCode",
    "Suback",
    "Subscribe",
    "Subscription",
    "Unsuback",
    "Unsubscribe",
    "Will",
    "decode_properties_bytes",
    "encode",
    "encode_publish_ack",
    "encode_properties",
    "encode_publish",
    "encode_topic",
    "split_shared",
    "topic_matches",
    "validate_topic_filter",
    "validate_topic_name",
]
