"""Topic helpers: which subscription a topic belongs to, and the device id it names."""

from __future__ import annotations

from gateway.errors import DecodeError

_MAX_KNOWN = 10_000


SHARED = "$share/"
"""A shared subscription, `$share/<group>/<filter>`: the broker hands each message to one
subscriber of the group (MQTT 5, and Mosquitto for 3.1.1 too), on its own topic."""


def shared_parts(topic_filter: str) -> tuple[str | None, str]:
    """A filter's share group (None when it is not a shared subscription) and the filter
    inside, which is what matches topics."""
    if not topic_filter.startswith(SHARED):
        return None, topic_filter
    parts = topic_filter.split("/", 2)
    return parts[1], parts[2] if len(parts) > 2 else ""


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching (`+` one level, `#` the rest), as the broker does it."""
    topic_filter = shared_parts(topic_filter)[1]
    filter_levels = topic_filter.split("/")
    levels = topic.split("/")
    if topic.startswith("$") and not topic_filter.startswith("$"):
        return False  # $SYS and friends only match filters that name them
    for i, pattern in enumerate(filter_levels):
        if pattern == "#":
            return True
        if i >= len(levels) or (pattern != "+" and pattern != levels[i]):
            return False
    return len(levels) == len(filter_levels)


def _parts(topic_filter: str) -> tuple[str | None, list[str]]:
    """A filter's share group (None if not shared) and the levels of the filter inside."""
    group, inner = shared_parts(topic_filter)
    return group, inner.split("/")


def covers(outer: str, inner: str) -> bool:
    """Every topic that `inner` matches, `outer` matches too (within one share group)."""
    outer_group, outer_levels = _parts(outer)
    inner_group, inner_levels = _parts(inner)
    if outer_group != inner_group:
        return False  # other subscriptions: the broker delivers to each
    for i, pattern in enumerate(outer_levels):
        dollar = i == 0 and inner_levels[0].startswith("$")  # wildcards do not match $SYS/...
        if pattern == "#":
            return not dollar
        if i >= len(inner_levels) or inner_levels[i] == "#":
            return False
        if pattern == "+":
            if dollar:
                return False
        elif pattern != inner_levels[i]:
            return False
    return len(inner_levels) == len(outer_levels)


def overlaps(a: str, b: str) -> bool:
    """Some topic matches both filters (whatever their share groups)."""
    a_levels, b_levels = _parts(a)[1], _parts(b)[1]
    for i in range(max(len(a_levels), len(b_levels))):
        x = a_levels[i] if i < len(a_levels) else None
        y = b_levels[i] if i < len(b_levels) else None
        if i == 0 and x is not None and y is not None:
            if (x in ("+", "#") and y.startswith("$")) or (y in ("+", "#") and x.startswith("$")):
                return False  # wildcards do not match $SYS/...
        if x == "#" or y == "#":
            return True
        if x is None or y is None:
            return False
        if x != "+" and y != "+" and x != y:
            return False
    return True


class DeviceTemplate:
    """`sensors/{device}/state`: the level holding `{device}` names the device; `{_}` is any."""

    def __init__(self, template: str | None) -> None:
        self.template = template
        self._levels = template.split("/") if template else []
        self._known: dict[str, str] = {}
        """Topics seen before and their devices: a sensor publishes on the same topic for ever."""

    def device(self, topic: str) -> str:
        if not self._levels:
            return topic
        device = self._known.get(topic)
        if device is None:
            device = self._parse(topic)
            if len(self._known) >= _MAX_KNOWN:
                self._known.clear()
            self._known[topic] = device
        return device

    def _parse(self, topic: str) -> str:
        levels = topic.split("/")
        if len(levels) != len(self._levels):
            raise DecodeError(f"topic {topic!r} does not fit the device template {self.template!r}")
        device = ""
        for pattern, level in zip(self._levels, levels, strict=True):
            if pattern == "{device}":
                device = level
            elif pattern != "{_}" and pattern != level:
                raise DecodeError(
                    f"topic {topic!r} does not fit the device template {self.template!r}"
                )
        if not device:
            raise DecodeError(f"topic {topic!r} has an empty device level")
        return device
