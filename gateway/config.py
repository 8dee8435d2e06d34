"""The gateway's configuration: one YAML file, plus drop-ins, validated into frozen models.

The models live here; reading the files (line numbers, `${ENV}`, drop-ins) and turning
validation errors into `file:line: key.path: problem` lines live in gateway.config_loader.
"""

from __future__ import annotations

import functools
import os
import re
import string
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import (
    AfterValidator,
    ByteSize,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from yarl import URL

from drivers.ble.config import BleDriverConfig
from drivers.mqtt.config import MqttDriverConfig
from drivers.serial.lines_config import SerialLinesConfig
from drivers.serial.modbus_config import ModbusRtuConfig
from drivers.serial.nmea_config import SerialNmeaConfig
from gateway.config_loader import config_files as config_files  # where callers find it
from gateway.config_loader import describe, read_config
from gateway.config_types import Host, Name, OptionalTls, PasswordFile, Seconds, StrictModel
from gateway.errors import ConfigError
from gateway.state_dir import problem_with

SerialDriverConfig = Annotated[
    SerialLinesConfig | SerialNmeaConfig | ModbusRtuConfig, Field(discriminator="protocol")
]
DriverConfig = Annotated[
    MqttDriverConfig | SerialDriverConfig | BleDriverConfig, Field(discriminator="type")
]
_DRIVER_TYPES: dict[str, object] = {
    "mqtt": MqttDriverConfig,
    "serial": SerialDriverConfig,
    "ble": BleDriverConfig,
}
"""DriverConfig's members by their `type`."""

ROUTING_KEY_FIELDS = frozenset({"gateway", "site", "device", "source"})

UNIT_STOP_TIMEOUT_S = 45.0
"""`TimeoutStopSec=` of systemd/edge-gateway.service: systemd SIGKILLs a longer stop."""
UNIT_WATCHDOG_S = 60.0
"""`WatchdogSec=` of systemd/edge-gateway.service: what `check` assumes the gateway runs with."""
CLOSE_AT_STOP_S = 2.0
"""A stop's goodbye to the broker (AMQP Connection.Close): one that does not answer, often the
reason confirms were missing, gets no longer than this."""
LAST_COMMIT_S = 5.0
"""Left at the end of a stop for the buffer's last commit and the exit, on a slow SD card."""


def _default_state_dir() -> Path:
    return Path(os.environ.get("STATE_DIRECTORY", "/var/lib/edge-gateway").split(":")[0])


def _usable_state_dir(path: Path, info: ValidationInfo) -> Path:
    """Absolute (systemd starts the gateway in /), and not under a file (when files are
    checked); whether the service's user may write there only the start can tell."""
    if not path.is_absolute():
        raise ValueError(
            f"{str(path)!r} is relative: give an absolute path (relative to what? the gateway "
            "is started from / by systemd)"
        )
    problem = problem_with(path) if (info.context or {}).get("check_files", True) else None
    if problem is not None:
        raise ValueError(f"{path} cannot be used: {problem}")
    return path


class GatewaySection(StrictModel):
    id: Name
    site: Name = "default"
    state_dir: Annotated[Path, AfterValidator(_usable_state_dir)] = Field(
        default_factory=_default_state_dir
    )
    """Where the buffer and status live; systemd's `StateDirectory=` sets $STATE_DIRECTORY."""


MIN_BUFFER_BYTES = 1000
SMALL_BUFFER_BYTES = 1024**2
"""Below this `check` and the start warn: a few thousand readings at most, minutes of outage."""

AMQP_NAME = re.compile(r"[a-zA-Z0-9-_.:@#,/+ ]{0,127}")
"""What the AMQP client library (pamqp) sends as an exchange name; it refuses others."""


class BufferSection(StrictModel):
    max_bytes: ByteSize = ByteSize(1024**3)
    when_full: Literal["reject_new", "drop_oldest"] = "reject_new"
    commit_interval_ms: Annotated[float, Field(ge=0, le=5_000)] = 40.0
    """Least time between two commits (each one fsync): fewer fsyncs, longer waits."""

    @field_validator("max_bytes")
    @classmethod
    def _holds_readings(cls, size: ByteSize) -> ByteSize:
        if size < MIN_BUFFER_BYTES:  # 0, or "512" meant as MB: the buffer would refuse all
            raise ValueError(
                f"{int(size)} bytes hold no readings; sizes take a unit: write e.g. 512MiB"
            )
        return size


class BatchSection(StrictModel):
    max_readings: Annotated[int, Field(ge=1, le=10_000)] = 100
    max_bytes: ByteSize = ByteSize(256 * 1024)
    linger_ms: Annotated[float, Field(ge=0, le=60_000)] = 0.0
    """Group commit already gathers a commit interval of readings: linger matters when it is 0."""


def broker_url_problem(url: str) -> str | None:
    """Why `url` is no usable broker URL, or None. The URL is not quoted: it may hold a
    password (the caller names where it is written)."""
    if not re.match(r"^amqps?://", url):
        return "is not an AMQP URL: write amqp://host:5672/ or amqps://host:5671/"
    try:
        parsed = URL(url)
        host, port = parsed.host, parsed.port  # yarl checks the port when asked for it
    except ValueError as exc:
        return (
            f"cannot be read ({exc}): write it as amqp://user:password@host:5672/vhost; in "
            "the user or password write : / ? # @ % as %3A %2F %3F %23 %40 %25, or put the "
            "password in amqp.password_file"
        )
    if not host or port == 0:
        return "names no host or port: write amqp://host:5672/ or amqps://host:5671/"
    return None


def exchange_name_problem(name: str) -> str | None:
    """Why the AMQP client (pamqp) would refuse to send `name` as an exchange, or None."""
    if AMQP_NAME.fullmatch(name):
        return None
    return (
        f"{name!r} cannot be an AMQP exchange name: up to 127 of the characters "
        "A-Z a-z 0-9 - _ . : @ # , / + and space"
    )


class AmqpSection(StrictModel):
    url: str | list[str] = "amqp://guest:guest@127.0.0.1:5672/"
    """One broker URL, or a list tried in turn (a cluster)."""
    username: str | None = None
    password_file: PasswordFile | None = None
    exchange: str = "edge-gateway"
    exchange_type: Literal["topic", "direct", "fanout", "headers"] = "topic"
    declare_exchange: bool = True
    routing_key: str = "{site}"
    batch: BatchSection = BatchSection()
    max_in_flight: Annotated[int, Field(ge=1, le=10_000)] = 64
    timeout_s: Seconds = 10.0
    heartbeat_s: Annotated[int, Field(ge=0, le=3600)] = 30
    retry_initial_s: Seconds = 0.5
    retry_max_s: Seconds = 15.0
    """A broker back after an outage is found within this (at 60 s the gateway stayed away
    26 to 41 s longer than a 60 s outage); trying a connect every 15 s costs nothing."""
    shutdown_grace_s: Annotated[float, Field(ge=0, le=300)] = 5.0
    tls: OptionalTls = None

    @property
    def urls(self) -> list[str]:
        return [self.url] if isinstance(self.url, str) else list(self.url)

    @field_validator("exchange")
    @classmethod
    def _sendable_name(cls, name: str) -> str:
        problem = exchange_name_problem(name)
        if problem is not None:
            raise ValueError(problem)
        return name

    @field_validator("url")
    @classmethod
    def _amqp_urls(cls, url: str | list[str]) -> str | list[str]:
        for one in [url] if isinstance(url, str) else url:
            problem = broker_url_problem(one)
            if problem is not None:
                raise ValueError(problem)
        if isinstance(url, list) and not url:
            raise ValueError("give at least one broker URL")
        return url

    @model_validator(mode="after")
    def _a_password_for_the_user(self) -> AmqpSection:
        for url in self.urls:
            parsed = URL(url)
            if (
                parsed.user not in (None, "", "guest")  # guest's password is guest
                and not parsed.password
                and self.password_file is None
            ):
                raise ValueError(
                    f"a broker URL names the user {parsed.user!r} but no password (the client "
                    "would send 'guest'): write amqp://user:password@host/ or set "
                    "amqp.password_file"
                )
        return self

    @model_validator(mode="after")
    def _tls_needs_amqps(self) -> AmqpSection:
        if self.tls is not None and not all(u.startswith("amqps://") for u in self.urls):
            raise ValueError("tls is set, but a broker URL is not amqps://; use amqps://HOST:5671/")
        return self

    @field_validator("routing_key")
    @classmethod
    def _known_fields(cls, template: str) -> str:
        try:
            fields = [f for f in string.Formatter().parse(template) if f[1] is not None]
        except ValueError as exc:  # "{site" or a lone "}"
            raise ValueError(
                f"{exc}; write placeholders as {{site}}, braces as {{{{ }}}}"
            ) from None
        for _, name, spec, conversion in fields:
            if spec or conversion:
                raise ValueError(f"routing key placeholders take no ! or : here: write {{{name}}}")
        names = {name for _, name, _, _ in fields if name is not None}
        unknown = names - ROUTING_KEY_FIELDS
        if unknown:
            raise ValueError(
                f"unknown placeholder {{{sorted(unknown)[0]}}} in routing key; "
                f"use {', '.join('{' + n + '}' for n in sorted(ROUTING_KEY_FIELDS))}"
            )
        return template


class LoggingSection(StrictModel):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"
    """auto: JSON lines when stdout is not a terminal (journald), readable text when it is."""


class MetricsSection(StrictModel):
    """An optional Prometheus endpoint (the `prometheus` extra) with the figures of `status`."""

    enabled: bool = False
    host: Host = "127.0.0.1"
    """Loopback by default: the figures name brokers and devices."""
    port: Annotated[int, Field(ge=1, le=65535)] = 9464


class GatewayConfig(StrictModel):
    gateway: GatewaySection
    buffer: BufferSection = BufferSection()
    amqp: AmqpSection = AmqpSection()
    drivers: list[DriverConfig] = Field(default_factory=list)
    logging: LoggingSection = LoggingSection()
    metrics: MetricsSection = MetricsSection()

    @property
    def longest_stop_s(self) -> float:
        """How long a stop may take: the drivers stop (together: the slowest counts),
        in-flight publishes get `amqp.shutdown_grace_s`, the connection is closed, the
        buffer commits."""
        drivers_s = max((d.longest_stop_s for d in self.drivers), default=0.0)
        return drivers_s + self.amqp.shutdown_grace_s + CLOSE_AT_STOP_S + LAST_COMMIT_S

    @property
    def stop_overrun_s(self) -> float:
        """By how much the longest stop may exceed the unit's `TimeoutStopSec=` (<= 0: it fits).

        Past the timeout, systemd kills the gateway: nothing accepted is lost (the buffer
        keeps it), but what was confirmed and not yet deleted goes again as duplicates, and
        the journal shows a SIGKILL.
        """
        return self.longest_stop_s - UNIT_STOP_TIMEOUT_S

    def service_warnings(
        self, watchdog_s: float, under_systemd: bool
    ) -> list[tuple[str, dict[str, object]]]:
        """(message, fields) of what may go wrong under the unit: a confirm may take
        `amqp.timeout_s`, which the watchdog must not call a stall; a stop must end within
        the unit's `TimeoutStopSec=`, or systemd kills it. Warnings, not errors: a
        configuration that ran before an upgrade still runs, and a unit whose timeouts were
        raised in a drop-in is right to ignore them."""
        found: list[tuple[str, dict[str, object]]] = []
        if self.buffer.max_bytes < SMALL_BUFFER_BYTES:
            found.append(
                (
                    "buffer.max_bytes is small: an outage of minutes fills it",
                    {
                        "max_bytes": int(self.buffer.max_bytes),
                        "hint": "sizes take a unit: write e.g. 512MiB (the default is 1GiB)",
                    },
                )
            )
        if self.amqp.timeout_s >= watchdog_s:
            found.append(
                (
                    "amqp.timeout_s is not below the watchdog period: a slow confirm may cause "
                    "a restart",
                    {
                        "timeout_s": self.amqp.timeout_s,
                        "watchdog_s": watchdog_s,
                        "hint": "lower amqp.timeout_s or raise WatchdogSec= in the unit",
                    },
                )
            )
        overrun_s = self.stop_overrun_s
        if under_systemd and overrun_s > 0:
            limit = self.amqp.shutdown_grace_s - overrun_s
            found.append(
                (
                    "amqp.shutdown_grace_s is too long for the unit's stop timeout: systemd may "
                    "kill a stop before the last confirms arrive",
                    {
                        "shutdown_grace_s": self.amqp.shutdown_grace_s,
                        "overrun_s": overrun_s,
                        "hint": f"lower amqp.shutdown_grace_s to {limit:g} or less, or raise "
                        "TimeoutStopSec= with `systemctl edit edge-gateway`",
                    },
                )
            )
        return found

    @field_validator("drivers")
    @classmethod
    def _distinct_drivers(cls, drivers: list[DriverConfig]) -> list[DriverConfig]:
        """Unique names, and nothing claimed twice; an error points at the second driver,
        in its own file."""
        seen: set[str] = set()
        claimed: dict[str, str] = {}
        for i, driver in enumerate(drivers):
            if driver.name in seen:
                raise PydanticCustomError(
                    "duplicate_name",
                    "two drivers are named '{name}'; names must be unique",
                    {"name": driver.name, "at": (i, "name")},
                )
            seen.add(driver.name)
            for claim in driver.claims:
                if claim.what in claimed:
                    raise PydanticCustomError(
                        "claimed_twice",
                        "{what} is used by driver '{other}' too; {advice}",
                        {
                            "what": claim.what,
                            "other": claimed[claim.what],
                            "advice": claim.advice,
                            "at": (i, claim.key),
                        },
                    )
                claimed[claim.what] = driver.name
        return drivers


def state_dir_of(path: Path | str) -> Path:
    """Where the gateway of a configuration keeps its state: all that `status` needs.

    Environment variables that only the service has (`Environment=` in the unit) may be
    unset here, and nothing else is validated: neither must hide the status.
    """
    path = Path(path)
    data, where = read_config(path, keep_unset_env=True)
    section = data.get("gateway")
    if not isinstance(section, dict):
        raise ConfigError(f"{where.get(('gateway',), f'{path}:1')}: gateway: a section is needed")
    for key in section:
        if key not in GatewaySection.model_fields:
            raise ConfigError(
                f"{where[('gateway', key)]}: gateway.{key}: unknown key; allowed here: "
                + ", ".join(GatewaySection.model_fields)
            )
    state_dir = section.get("state_dir")
    if state_dir is None:
        return _default_state_dir()
    if not isinstance(state_dir, str) or "${" in state_dir:
        raise ConfigError(
            f"{where[('gateway', 'state_dir')]}: gateway.state_dir: {state_dir!r} is no path "
            "(an environment variable in it is not set?); set it as the unit does"
        )
    return Path(state_dir)


def load_config(path: Path | str, check_files: bool = True) -> GatewayConfig:
    """Read, substitute `${ENV}` and validate a configuration file and its drop-ins; raise
    `ConfigError`.

    `check_files=False` skips checking that secret and TLS files are readable and loadable,
    for callers that only look at the settings.
    Relative file paths, in drop-ins too, are relative to the main file's directory.
    """
    path = Path(path)
    data, where = read_config(path)
    try:
        return _model_for(_driver_types(data)).model_validate(
            data, context={"base_dir": path.parent, "check_files": check_files}
        )
    except ValidationError as exc:
        raise ConfigError(describe(f"{path}:1", data, where, exc, GatewayConfig)) from None


def _driver_types(data: object) -> frozenset[str | None]:
    """The drivers' `type`s; None for a driver without one, or with one that is no text."""
    drivers = data.get("drivers") if isinstance(data, dict) else None
    if not isinstance(drivers, list):
        return frozenset()
    kinds = (d.get("type") if isinstance(d, dict) else None for d in drivers)
    return frozenset(kind if isinstance(kind, str) else None for kind in kinds)


@functools.cache
def _model_for(types: frozenset[str | None]) -> type[GatewayConfig]:
    """GatewayConfig whose drivers can be only of these types.

    pydantic builds a validator for every member of the drivers' union, and the serial and
    BLE ones hold ~1 MB of memory that a gateway reading MQTT alone never uses (its target
    is 50 MB; docs/performance.md). The errors are those of GatewayConfig: the same union,
    narrowed; a file with every type, none, or one it does not know gets GatewayConfig
    itself (whose error lists the types).
    """
    if not types or not types < _DRIVER_TYPES.keys():
        return GatewayConfig
    members = tuple(_DRIVER_TYPES[t] for t in sorted(_DRIVER_TYPES) if t in types)
    drivers = Annotated[Union[members], Field(discriminator="type")]  # type: ignore[valid-type]  # noqa: UP007
    return create_model(
        "GatewayConfig",
        __base__=GatewayConfig,
        __module__=__name__,
        drivers=(list[drivers], Field(default_factory=list)),
    )
