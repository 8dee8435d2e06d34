"""Configuration of an MQTT source (`type: mqtt`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from drivers.mqtt.topics import covers, overlaps, shared_parts
from gateway.config_types import (
    Claim,
    Host,
    Name,
    OptionalTls,
    PasswordFile,
    Seconds,
    StrictModel,
    number_from_text,
)

CONNECT_TIMEOUT_S = 10.0
"""paho's connect timeout, for the TCP connect and again for a TLS handshake. The connect
blocks a thread that a stop cannot interrupt (see `MqttDriverConfig.longest_stop_s`)."""


class FieldSpec(StrictModel):
    """Where a value sits in a JSON payload (`path`, dotted for nested objects) and its unit."""

    path: str
    unit: str | None = None


class Subscription(StrictModel):
    """A topic filter and how to turn its messages into readings."""

    topic: str = Field(min_length=1)
    device: str | None = None
    """Template matched against the topic, e.g. `sensors/{device}/state`; default: the topic."""
    format: Literal["json", "number", "senml"] = "json"
    fields: dict[str, FieldSpec | str] | None = None
    """json: value name -> path (or {path, unit}); default: every top-level scalar."""
    timestamp: str | None = None
    """json: path of the sample's time (epoch seconds or milliseconds, or RFC 3339)."""
    value: str = "value"
    """number: the value's name."""
    unit: str | None = None
    """number: the value's unit."""
    units: dict[str, str] = Field(default_factory=dict)
    """Units by value name, for values picked without a `fields` entry of their own."""
    qos: Annotated[Literal[0, 1], BeforeValidator(number_from_text)] = 1
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("topic")
    @classmethod
    def _valid_filter(cls, topic: str) -> str:
        group, topic_filter = shared_parts(topic)
        if group is not None and (not group or not topic_filter or "+" in group or "#" in group):
            raise ValueError(
                f"invalid shared subscription {topic!r}: write $share/<group>/<filter>, "
                "the group a name without '+' or '#'"
            )
        levels = topic_filter.split("/")
        for i, level in enumerate(levels):
            if ("#" in level and (level != "#" or i != len(levels) - 1)) or (
                "+" in level and level != "+"
            ):
                raise ValueError(
                    f"invalid MQTT topic filter {topic!r}: '+' must fill a whole level "
                    "and '#' must be the last level"
                )
        return topic

    @field_validator("device")
    @classmethod
    def _valid_template(cls, template: str | None) -> str | None:
        if template is None:
            return None
        levels = template.split("/")
        if "{device}" not in levels or any(
            "{" in level and level not in ("{device}", "{_}") for level in levels
        ):
            raise ValueError(
                f"device template {template!r}: one level must be exactly {{device}}; "
                "{_} stands for any other level, e.g. sensors/{device}/state"
            )
        return template

    @model_validator(mode="after")
    def _template_fits_the_filter(self) -> Subscription:
        """A template that no topic of the filter fits makes every message malformed."""
        if self.device is None:
            return self
        levels = shared_parts(self.topic)[1].split("/")
        template = self.device.split("/")
        if levels[-1] == "#":
            levels = levels[:-1]
            fits = len(template) >= len(levels)
        else:
            fits = len(template) == len(levels)
        if not fits:
            raise ValueError(
                f"device template {self.device!r} has {len(template)} levels, which no topic "
                f"of {self.topic!r} has: write one template level per topic level"
            )
        for level, pattern in zip(levels, template, strict=False):
            if level != "+" and pattern not in ("{device}", "{_}") and pattern != level:
                raise ValueError(
                    f"device template {self.device!r} says {pattern!r} where topic filter "
                    f"{self.topic!r} says {level!r}: no topic fits both"
                )
        return self


class MqttDriverConfig(StrictModel):
    """One MQTT broker connection with its subscriptions."""

    type: Literal["mqtt"]
    name: Name
    host: Host = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    """Default 1883, or 8883 with `tls`."""
    client_id: str | None = None
    """Fixed id of the persistent session; default `edge-gateway-<gateway.id>-<name>`."""
    protocol: Annotated[Literal["5", "3.1.1"], BeforeValidator(str)] = "5"
    username: str | None = None
    password_file: PasswordFile | None = None
    tls: OptionalTls = None
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    session_expiry_s: Annotated[int, Field(ge=0, le=2**32 - 1)] = 7 * 86_400
    """MQTT 5: how long the broker keeps our session (and queues QoS 1 messages) while away."""
    receive_maximum: Annotated[int, Field(ge=1, le=65_535)] = 2_000
    """MQTT 5: QoS 1 messages the broker may have in flight to us, waiting for our PUBACK."""
    max_payload_bytes: Annotated[int, Field(ge=1)] = 65_536
    reconnect_min_s: Seconds = 1.0
    reconnect_max_s: Seconds = 60.0
    subscriptions: list[Subscription] = Field(min_length=1)

    def broker_filters(self) -> list[tuple[str, int]]:
        """What to subscribe to at the broker, with the QoS: the filters that no other one
        covers. A broker sends a message once per matching subscription (MQTT 5 says so), and
        a message is decoded by the first subscription that matches it, so a filter that
        another covers is left to that one (two readings per message otherwise)."""
        subs = self.subscriptions
        kept: list[tuple[str, int]] = []
        for i, sub in enumerate(subs):
            if any(
                covers(other.topic, sub.topic) and (j < i or not covers(sub.topic, other.topic))
                for j, other in enumerate(subs)
                if j != i
            ):
                continue
            kept.append((sub.topic, max(o.qos for o in subs if covers(sub.topic, o.topic))))
        return kept

    def partial_overlaps(self) -> list[tuple[str, str]]:
        """Broker filters that share topics without one covering the other: a message on
        such a topic comes once per subscription (MQTT 5), and each copy is a reading."""
        filters = [topic for topic, _ in self.broker_filters()]
        return [(a, b) for i, a in enumerate(filters) for b in filters[i + 1 :] if overlaps(a, b)]

    @property
    def longest_stop_s(self) -> float:
        """A stop waits for a connect in progress, to a broker that does not answer: the TCP
        connect, then the TLS handshake, each up to `CONNECT_TIMEOUT_S` (a host name with
        several addresses, or a resolver that does not answer, can take longer)."""
        return CONNECT_TIMEOUT_S * (2 if self.tls else 1)

    @property
    def broker_port(self) -> int:
        """`port`, or MQTT's standard port for the transport (8883 with TLS, 1883 without)."""
        return self.port or (8883 if self.tls else 1883)

    @property
    def max_packet_bytes(self) -> int:
        """MQTT 5's Maximum Packet Size, announced at connect: the broker does not send us
        larger messages (it drops them). Payloads up to four times `max_payload_bytes` still
        come, to be counted as oversized; a far larger one (Mosquitto takes up to 256 MB)
        would be read whole into memory first."""
        return min(4 * self.max_payload_bytes + 65_536, 268_435_455)

    @property
    def claims(self) -> tuple[Claim, ...]:
        """A client id is one session at the broker: a second connection with it ends the
        first, over and over. (Without `client_id`, the unique driver name makes one.)"""
        if self.client_id is None:
            return ()
        return (
            Claim(
                "client_id",
                f"the MQTT client id {self.client_id!r} at {self.host}:{self.broker_port}",
                "each driver needs its own client_id",
            ),
        )

    def summary(self) -> str:
        """One line for `edge-gateway check`."""
        topics = ", ".join(s.topic for s in self.subscriptions)
        return f"mqtt {self.host}:{self.broker_port} [{topics}]"

    @model_validator(mode="after")
    def _credentials(self) -> MqttDriverConfig:
        if self.password_file is not None and self.username is None:
            raise ValueError("password_file needs a username")
        return self
