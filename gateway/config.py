"""The gateway's configuration: one YAML file, plus drop-ins, validated into frozen models.

Errors are for people editing YAML by hand: each names the file, the line, the
key path and what was expected, in one line, never a pydantic dump.

Drop-ins (`gateway.d/*.yaml` beside `gateway.yaml`, read in name order) let a site
keep its drivers, or its secrets' settings, in files of their own: a drop-in's
mappings merge into what came before key by key, any other value replaces the one
before it, and `drivers` lists are joined, so that a drop-in can add a driver.
"""

from __future__ import annotations

import difflib
import os
import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ByteSize, Field, ValidationError, field_validator, model_validator

from drivers.ble.config import BleDriverConfig
from drivers.mqtt.config import MqttDriverConfig
from drivers.serial.lines_config import SerialLinesConfig
from drivers.serial.modbus_config import ModbusRtuConfig
from drivers.serial.nmea_config import SerialNmeaConfig
from gateway.config_types import Seconds, SecretFile, StrictModel, TlsConfig
from gateway.errors import ConfigError

SerialDriverConfig = Annotated[
    SerialLinesConfig | SerialNmeaConfig | ModbusRtuConfig, Field(discriminator="protocol")
]
DriverConfig = Annotated[
    MqttDriverConfig | SerialDriverConfig | BleDriverConfig, Field(discriminator="type")
]

ROUTING_KEY_FIELDS = frozenset({"gateway", "site", "device", "source"})


def _default_state_dir() -> Path:
    return Path(os.environ.get("STATE_DIRECTORY", "/var/lib/edge-gateway").split(":")[0])


class GatewaySection(StrictModel):
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    site: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")] = "default"
    state_dir: Path = Field(default_factory=_default_state_dir)
    """Where the buffer and status live; systemd's `StateDirectory=` sets $STATE_DIRECTORY."""


class BufferSection(StrictModel):
    max_bytes: ByteSize = ByteSize(1024**3)
    when_full: Literal["reject_new", "drop_oldest"] = "reject_new"
    commit_interval_ms: Annotated[float, Field(ge=0, le=5_000)] = 40.0
    """Least time between two commits (each one fsync): fewer fsyncs, longer waits."""


class BatchSection(StrictModel):
    max_readings: Annotated[int, Field(ge=1, le=10_000)] = 100
    max_bytes: ByteSize = ByteSize(256 * 1024)
    linger_ms: Annotated[float, Field(ge=0, le=60_000)] = 0.0
    """Group commit already gathers a commit interval of readings: linger matters when it is 0."""


class AmqpSection(StrictModel):
    url: str | list[str] = "amqp://guest:guest@127.0.0.1:5672/"
    """One broker URL, or a list tried in turn (a cluster)."""
    username: str | None = None
    password_file: SecretFile | None = None
    exchange: str = "edge-gateway"
    exchange_type: Literal["topic", "direct", "fanout", "headers"] = "topic"
    declare_exchange: bool = True
    routing_key: str = "{site}.{device}"
    batch: BatchSection = BatchSection()
    max_in_flight: Annotated[int, Field(ge=1, le=10_000)] = 64
    timeout_s: Seconds = 10.0
    heartbeat_s: Annotated[int, Field(ge=0, le=3600)] = 30
    retry_initial_s: Seconds = 0.5
    retry_max_s: Seconds = 60.0
    shutdown_grace_s: Annotated[float, Field(ge=0, le=300)] = 5.0
    tls: TlsConfig | None = None

    @property
    def urls(self) -> list[str]:
        return [self.url] if isinstance(self.url, str) else list(self.url)

    @field_validator("url")
    @classmethod
    def _amqp_urls(cls, url: str | list[str]) -> str | list[str]:
        for one in [url] if isinstance(url, str) else url:
            if not re.match(r"^amqps?://", one):
                raise ValueError(f"{one!r} is not an AMQP URL (amqp://host:5672/ or amqps://...)")
        if isinstance(url, list) and not url:
            raise ValueError("give at least one broker URL")
        return url

    @model_validator(mode="after")
    def _tls_needs_amqps(self) -> AmqpSection:
        if self.tls is not None and not all(u.startswith("amqps://") for u in self.urls):
            raise ValueError("tls is set, but a broker URL is not amqps://; use amqps://HOST:5671/")
        return self

    @field_validator("routing_key")
    @classmethod
    def _known_fields(cls, template: str) -> str:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
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
    host: str = "127.0.0.1"
    """Loopback by default: the figures name brokers and devices."""
    port: Annotated[int, Field(ge=1, le=65535)] = 9464


class GatewayConfig(StrictModel):
    gateway: GatewaySection
    buffer: BufferSection = BufferSection()
    amqp: AmqpSection = AmqpSection()
    drivers: list[DriverConfig] = Field(default_factory=list)
    logging: LoggingSection = LoggingSection()
    metrics: MetricsSection = MetricsSection()

    @field_validator("drivers")
    @classmethod
    def _unique_driver_names(cls, drivers: list[DriverConfig]) -> list[DriverConfig]:
        seen: set[str] = set()
        for driver in drivers:
            if driver.name in seen:
                raise ValueError(f"two drivers are named {driver.name!r}; names must be unique")
            seen.add(driver.name)
        return drivers


# --- loading -----------------------------------------------------------------

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
KeyPath = tuple[str | int, ...]


def load_config(path: Path | str, check_files: bool = True) -> GatewayConfig:
    """Read, substitute `${ENV}` and validate a configuration file and its drop-ins; raise
    `ConfigError`.

    `check_files=False` skips checking that secret and TLS files are readable: for
    commands that only look (status), run by users who may not read the secrets.
    Relative file paths, in drop-ins too, are relative to the main file's directory.
    """
    path = Path(path)
    files = config_files(path)
    data, where = _read(path)
    if data is None:
        raise ConfigError(f"{path}: the file is empty; see config/gateway.example.yaml")
    for drop_in in files[1:]:
        more, more_where = _read(drop_in)
        if more is not None:
            _merge(data, where, more, more_where)
    try:
        return GatewayConfig.model_validate(
            data, context={"base_dir": path.parent, "check_files": check_files}
        )
    except ValidationError as exc:
        raise ConfigError(_describe(f"{path}:1", data, where, exc)) from None


def config_files(path: Path | str) -> list[Path]:
    """The main file, then its drop-ins (`<name>.d/*.yaml` and `*.yml`) in name order."""
    path = Path(path)
    drop_ins = path.with_suffix(".d")
    if not drop_ins.is_dir():
        return [path]
    found = [p for p in drop_ins.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()]
    return [path, *sorted(found, key=lambda p: p.name)]


def _read(path: Path) -> tuple[dict[str, Any] | None, dict[KeyPath, str]]:
    """One file's data (None when it holds nothing) and the `file:line` of each key path."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: the file is not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from None
    data, lines = _parse_yaml(path, text)
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}:1: the top level must be a mapping of keys (gateway, amqp, ...)")
    return data, {at: f"{path}:{line}" for at, line in lines.items()}


def _merge(
    into: dict[str, Any],
    where: dict[KeyPath, str],
    more: dict[str, Any],
    more_where: dict[KeyPath, str],
    at: KeyPath = (),
) -> None:
    """Merge a drop-in's data (and where each key came from) into what was read before."""
    for key, value in more.items():
        here = (*at, key)
        before = into.get(key)
        if here == ("drivers",) and isinstance(value, list) and isinstance(before, list):
            offset = len(before)
            before.extend(value)
            for path, location in more_where.items():
                if path[:1] == here and len(path) > 1 and isinstance(path[1], int):
                    where[(*here, offset + path[1], *path[2:])] = location
        elif isinstance(value, dict) and isinstance(before, dict):
            _merge(before, where, value, more_where, here)
        else:
            into[key] = value
            for path in [path for path in where if path[: len(here)] == here]:
                del where[path]
            where.update(
                (path, location)
                for path, location in more_where.items()
                if path[: len(here)] == here
            )


def _parse_yaml(path: Path, text: str) -> tuple[Any, dict[KeyPath, int]]:
    """YAML to plain data plus the line of every key path, for error messages."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    lines: dict[KeyPath, int] = {}
    constructor = yaml.SafeLoader("")

    def scalar(node: yaml.Node) -> Any:
        try:
            return constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError) as exc:
            raise ConfigError(
                f"{path}:{node.start_mark.line + 1}: cannot read the value {node.value!r}: "
                f"{getattr(exc, 'problem', None) or exc}"
            ) from None

    def build(node: yaml.Node, at: KeyPath) -> Any:
        lines.setdefault(at, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            result: dict[Any, Any] = {}
            merged: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`
                    for source in _merge_sources(path, value_node):
                        for key, value in build(source, at).items():
                            merged.setdefault(key, value)
                    continue
                key = scalar(key_node) if isinstance(key_node, yaml.ScalarNode) else None
                if not isinstance(key, str | int):
                    raise ConfigError(
                        f"{path}:{key_node.start_mark.line + 1}: {_dotted(at)}: "
                        "keys must be plain words, not lists or mappings"
                    )
                if key in result:
                    raise ConfigError(
                        f"{path}:{key_node.start_mark.line + 1}: "
                        f"{_dotted((*at, key))}: the key appears twice"
                    )
                lines[(*at, key)] = key_node.start_mark.line + 1
                result[key] = build(value_node, (*at, key))
            return {**merged, **result}
        if isinstance(node, yaml.SequenceNode):
            return [build(item, (*at, i)) for i, item in enumerate(node.value)]
        value = scalar(node)
        if isinstance(value, str):
            value = _substitute_env(value, f"{path}:{node.start_mark.line + 1}", at)
        return value

    return (build(root, ()) if root is not None else None), lines


def _merge_sources(path: Path, node: yaml.Node) -> list[yaml.Node]:
    """The mappings a YAML merge key (`<<`) names: one alias or a list of them."""
    sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
    if not all(isinstance(source, yaml.MappingNode) for source in sources):
        raise ConfigError(
            f"{path}:{node.start_mark.line + 1}: '<<' must name a mapping (<<: *anchor)"
        )
    return list(sources)


def _substitute_env(value: str, where: str, at: KeyPath) -> str:
    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(
            f"{where}: {_dotted(at)}: environment variable {name} is not set; "
            f"set it or write ${{{name}:-default}}"
        )

    return _ENV_REF.sub(replace, value)


def _dotted(at: KeyPath) -> str:
    out = ""
    for part in at:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _describe(fallback: str, data: Any, where: dict[KeyPath, str], exc: ValidationError) -> str:
    """One line per problem: `file:line: key.path: what is wrong (got X)`."""
    located = [
        (_data_path(data, error["loc"], error["type"] in ("missing", "extra_forbidden")), error)
        for error in exc.errors()
    ]
    messages = []
    for at, error in located:
        if any(len(other) > len(at) and other[: len(at)] == at for other, _ in located):
            continue  # a union's other branch failing less specifically: noise
        location = next(
            (where[at[:n]] for n in range(len(at), -1, -1) if at[:n] in where), fallback
        )
        message = f"{location}: {_dotted(at)}: {_explain(error, data, at)}"
        if message not in messages:
            messages.append(message)
    return "\n".join(messages)


def _data_path(data: Any, loc: tuple[str | int, ...], key_error: bool) -> KeyPath:
    """Pydantic's error location without union tags, so it matches the YAML's keys.

    `key_error`: the error is about a key itself (missing or unknown), so the last
    location part names a key that is not in the data.
    """
    at: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        elif i < len(loc) - 1 or not isinstance(node, dict) or not key_error:
            continue  # a discriminated union's tag, not a key in the file
        at.append(part)
    return tuple(at)


def _explain(error: Any, data: Any, at: KeyPath) -> str:
    kind: str = error["type"]
    msg: str = error["msg"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(data, at[:-1])
        hint = difflib.get_close_matches(str(at[-1]), allowed, n=1)
        if hint:
            return f"unknown key; did you mean {hint[0]!r}?"
        return "unknown key" + (f"; allowed here: {', '.join(allowed)}" if allowed else "")
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        ctx = error["ctx"]
        key = ctx["discriminator"].strip("'")
        return f"unknown {key} {ctx['tag']!r}; expected one of: {ctx['expected_tags']}"
    if kind == "union_tag_not_found":
        key = error["ctx"]["discriminator"].strip("'")
        return f"the key {key!r} is missing ({_TAG_HINTS.get(key, '')})"
    if kind == "value_error":
        return str(error["ctx"]["error"])
    got = error.get("input")
    shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
    return msg[0].lower() + msg[1:] + shown


_TAG_HINTS = {
    "type": "for a driver: mqtt, serial or ble",
    "protocol": "for a serial driver: lines, nmea or modbus-rtu",
}


def _allowed_keys(data: Any, at: KeyPath) -> list[str]:
    """The keys the model accepts at a path, for 'unknown key' hints."""
    annotation: Any = GatewayConfig
    node = data
    for part in at:
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
        model = _model_in(annotation, node)
        container = _container(annotation)
        if container is not None:
            annotation = get_args(container)[-1]  # a user's key or a list index
        elif model is not None and part in model.model_fields:
            annotation = model.model_fields[part].annotation
        else:
            return []
    model = _model_in(annotation, node)
    return sorted(model.model_fields) if model is not None else []


def _container(annotation: Any) -> Any:
    """`dict[...]` or `list[...]` inside an annotation like `dict[str, X] | None`, else None."""
    for candidate in (annotation, *get_args(annotation)):
        if get_origin(candidate) in (dict, list):
            return candidate
    return None


def _model_in(annotation: Any, node: Any) -> Any:
    """The model an annotation like `X | None`, `X | str` or a driver union means for `node`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (dict, list):
        return None
    models = [m for m in (_model_in(arg, node) for arg in get_args(annotation)) if m is not None]
    if isinstance(node, dict) and len(models) > 1:
        for candidate in models:
            tags = [
                (key, candidate.model_fields[key].annotation)
                for key in ("type", "protocol")
                if key in candidate.model_fields
            ]
            if tags and all(node.get(key) in get_args(tag) for key, tag in tags):
                return candidate
    return models[0] if models else None
