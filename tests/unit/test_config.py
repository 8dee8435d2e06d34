"""Loading the YAML configuration: defaults, one-line errors a person can act on, the CLI.

Every error must name `file:line`, the dotted key path and the problem; tests check the
line and the path exactly and the problem by its key words.
"""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from textwrap import dedent, indent
from typing import get_args

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from drivers.mqtt.config import MqttDriverConfig
from drivers.mqtt.source import MqttSource
from gateway import config as config_module
from gateway.cli import main
from gateway.config import DriverConfig, GatewayConfig, load_config
from gateway.config_types import read_secret
from gateway.errors import ConfigError
from gateway.model import Encoded, Reading

MINIMAL = """\
gateway:
  id: gw-1
"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("STATE_DIRECTORY", "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)


def write(tmp_path: Path, *parts: str) -> Path:
    """Write gateway.yaml from parts, each dedented on its own (a part may be MINIMAL)."""
    path = tmp_path / "gateway.yaml"
    path.write_text("".join(dedent(part) for part in parts), encoding="utf-8")
    return path


def local_mqtt(tmp_path: Path, settings: str) -> Path:
    """MINIMAL and one MQTT driver named `local` with `settings` (its keys, as YAML lines)."""
    driver = "drivers:\n  - type: mqtt\n    name: local\n"
    return write(tmp_path, MINIMAL, driver + indent(dedent(settings), "    "))


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


def assert_one_error(message: str, path: Path, line: int, key_path: str, *words: str) -> None:
    """`file:line: key.path: problem`, on one line, with the problem's key words."""
    assert "\n" not in message, message
    prefix = f"{path}:{line}: {key_path}: "
    assert message.startswith(prefix), f"{message!r} does not start with {prefix!r}"
    for word in words:
        assert word in message[len(prefix) :], f"{word!r} not in {message!r}"


# --- a valid file --------------------------------------------------------------------


def test_minimal_file_loads_with_the_documented_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config.model_dump() == {
        "gateway": {"id": "gw-1", "site": "default", "state_dir": Path("/var/lib/edge-gateway")},
        "buffer": {"max_bytes": 1024**3, "when_full": "reject_new", "commit_interval_ms": 40.0},
        "amqp": {
            "url": "amqp://guest:guest@127.0.0.1:5672/",
            "username": None,
            "password_file": None,
            "exchange": "edge-gateway",
            "exchange_type": "topic",
            "declare_exchange": True,
            "routing_key": "{site}",
            "batch": {"max_readings": 100, "max_bytes": 256 * 1024, "linger_ms": 0.0},
            "max_in_flight": 64,
            "timeout_s": 10.0,
            "heartbeat_s": 30,
            "retry_initial_s": 0.5,
            "retry_max_s": 15.0,
            "shutdown_grace_s": 5.0,
            "tls": None,
        },
        "drivers": [],
        "logging": {"level": "info", "format": "auto"},
        "metrics": {"enabled": False, "host": "127.0.0.1", "port": 9464},
    }
    assert config.amqp.urls == ["amqp://guest:guest@127.0.0.1:5672/"]


def test_state_dir_defaults_to_systemds_state_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/run/state/one:/run/state/two")
    assert load_config(write(tmp_path, MINIMAL)).gateway.state_dir == Path("/run/state/one")


def test_a_state_dir_the_gateway_could_not_use_is_refused_where_it_is_written(
    tmp_path: Path,
) -> None:
    (tmp_path / "afile").write_text("")
    relative = write(tmp_path, "gateway: {id: gw, state_dir: state}\n")
    assert_one_error(config_error(relative), relative, 1, "gateway.state_dir", "relative")
    under_a_file = write(tmp_path, f"gateway: {{id: gw, state_dir: {tmp_path}/afile/state}}\n")
    assert_one_error(
        config_error(under_a_file),
        under_a_file,
        1,
        "gateway.state_dir",
        f"{tmp_path}/afile is not a directory",
    )
    missing = write(tmp_path, f"gateway: {{id: gw, state_dir: {tmp_path}/new/state}}\n")
    assert load_config(missing).gateway.state_dir == tmp_path / "new/state"  # made at start
    assert not (tmp_path / "new").exists()  # not by check


def test_mqtt_driver_defaults_and_human_sizes(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        gateway: {id: gw-1}
        buffer: {max_bytes: 512 MiB, when_full: drop_oldest}
        amqp:
          url: [amqp://a:5672/, amqps://b:5671/]
        drivers:
          - type: mqtt
            name: local
            subscriptions:
              - topic: sensors/+/state
                device: sensors/{device}/state
        """,
    )
    config = load_config(path)
    assert config.buffer.max_bytes == 512 * 1024**2
    assert config.amqp.urls == ["amqp://a:5672/", "amqps://b:5671/"]
    [driver] = config.drivers
    assert driver.model_dump(exclude={"subscriptions"}) == {  # docs/configuration.md
        "type": "mqtt",
        "name": "local",
        "host": "127.0.0.1",
        "port": None,  # 1883, or 8883 with tls, chosen when connecting
        "client_id": None,
        "protocol": "5",
        "username": None,
        "password_file": None,
        "tls": None,
        "keepalive_s": 30,
        "session_expiry_s": 7 * 86_400,
        "receive_maximum": 2_000,
        "max_payload_bytes": 65_536,
        "reconnect_min_s": 1.0,
        "reconnect_max_s": 60.0,
    }
    [subscription] = driver.subscriptions
    assert subscription.model_dump() == {
        "topic": "sensors/+/state",
        "device": "sensors/{device}/state",
        "format": "json",
        "fields": None,
        "timestamp": None,
        "value": "value",
        "unit": None,
        "units": {},
        "qos": 1,
        "tags": {},
    }


# --- drop-ins: gateway.d/*.yaml -------------------------------------------------------------

MQTT_DRIVER = """\
drivers:
  - type: mqtt
    name: {name}
    subscriptions:
      - topic: sensors/+/state
"""


def drop_in(tmp_path: Path, name: str, text: str) -> Path:
    folder = tmp_path / "gateway.d"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(dedent(text), encoding="utf-8")
    return path


def test_drop_ins_add_drivers_and_override_settings_in_name_order(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL, "amqp: {url: amqp://main/, exchange: main}\n")
    path.write_text(path.read_text() + MQTT_DRIVER.format(name="main-driver"))
    drop_in(tmp_path, "20-later.yaml", "amqp: {url: amqp://later/}\n")
    drop_in(tmp_path, "10-sensors.yml", MQTT_DRIVER.format(name="shed"))
    drop_in(tmp_path, "README", "not: yaml: at all: [")  # only *.yaml and *.yml are read
    drop_in(tmp_path, "30-empty.yaml", "# everything commented out\n")
    drop_in(tmp_path, "40-upper.YAML", "gateway: {site: shed}\n")  # as a Windows editor saves it
    config = load_config(path)
    assert [d.name for d in config.drivers] == ["main-driver", "shed"]
    assert config.amqp.urls == ["amqp://later/"]
    assert config.amqp.exchange == "main"  # mappings merge key by key
    assert config.gateway.id == "gw-1"
    assert config.gateway.site == "shed"


def test_an_error_in_a_drop_in_names_the_drop_in_and_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL, MQTT_DRIVER.format(name="main-driver"))
    extra = drop_in(tmp_path, "shed.yaml", MQTT_DRIVER.format(name="shed") + "    colour: red\n")
    assert_one_error(config_error(path), extra, 6, "drivers[1].colour", "unknown key")


def test_a_setting_replaced_by_a_drop_in_is_reported_at_the_drop_in(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL, "buffer: {when_full: reject_new}\n")
    extra = drop_in(tmp_path, "buffer.yaml", "buffer:\n  when_full: block\n")
    assert_one_error(config_error(path), extra, 2, "buffer.when_full", "drop_oldest")


def test_a_driver_name_used_in_two_files_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL, MQTT_DRIVER.format(name="shed"))
    extra = drop_in(tmp_path, "shed.yaml", MQTT_DRIVER.format(name="shed"))
    # named where the second one is, in the drop-in (it used to be the main file's drivers:)
    assert_one_error(config_error(path), extra, 3, "drivers[1].name", "two drivers are named")


def test_an_unreadable_drop_in_directory_is_a_configuration_error(tmp_path: Path) -> None:
    """An admin's 0700 root-owned gateway.d: `check` (and a start or reload) name the
    directory instead of crashing with a traceback."""
    path = write(tmp_path, MINIMAL)
    folder = drop_in(tmp_path, "shed.yaml", MQTT_DRIVER.format(name="shed")).parent
    folder.chmod(0)
    try:
        checked = unprivileged([sys.executable, "-m", "gateway.cli", "check", "--config", path])
    finally:
        folder.chmod(0o755)
    assert checked.returncode == 2, checked.stderr  # a configuration error
    assert checked.stderr.strip() == (
        f"configuration error:\n{folder}: cannot list the drop-in directory: Permission denied; "
        "check that the user running the gateway may read it"
    )


def unprivileged(args: list[str | Path]) -> subprocess.CompletedProcess[str]:
    """Run without the power to override file permissions: root runs it without the
    capabilities that bypass them (tests run as root in CI)."""
    if os.geteuid() == 0:
        args = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *args]
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def test_a_drop_in_that_is_not_a_mapping_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    extra = drop_in(tmp_path, "list.yaml", "- a\n- b\n")
    assert config_error(path).startswith(f"{extra}:1: the top level must be a mapping")


# --- errors: file:line, key path, problem ------------------------------------------------


def test_unknown_key_suggests_the_closest_known_key(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "amqp:\n  exchnage: readings\n")
    assert_one_error(config_error(path), path, 4, "amqp.exchnage", "unknown key", "'exchange'")


def test_unknown_top_level_key_suggests_the_section(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "bufer:\n  max_bytes: 1 GiB\n")
    assert_one_error(config_error(path), path, 3, "bufer", "unknown key", "'buffer'")


def test_unknown_key_without_close_match_lists_the_allowed_keys(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "logging:\n  zzzzzz: 1\n")
    assert_one_error(config_error(path), path, 4, "logging.zzzzzz", "unknown key", "format, level")


def test_unknown_key_in_a_driver_suggests_the_drivers_key(tmp_path: Path) -> None:
    path = local_mqtt(
        tmp_path,
        """\
        hots: broker.lan
        subscriptions: [{topic: a/b}]
        """,
    )
    assert_one_error(config_error(path), path, 6, "drivers[0].hots", "unknown key", "'host'")


def test_wrong_type_names_the_value_given(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "amqp:\n  max_in_flight: lots\n")
    assert_one_error(
        config_error(path), path, 4, "amqp.max_in_flight", "valid integer", "(got 'lots')"
    )


def test_bad_enum_value_lists_the_choices(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "buffer:\n  when_full: drop_newest\n")
    assert_one_error(
        config_error(path),
        path,
        4,
        "buffer.when_full",
        "'reject_new' or 'drop_oldest'",
        "(got 'drop_newest')",
    )


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "gateway:\n  id: gw-1\n   site: x\nlogging: {}\n")
    message = config_error(path)
    assert message.startswith(f"{path}:3: invalid YAML: ")
    assert "mapping values are not allowed" in message


def test_duplicate_key_names_the_second_occurrence(tmp_path: Path) -> None:
    path = write(tmp_path, "gateway:\n  id: gw-1\n  site: a\n  id: gw-2\n")
    assert_one_error(config_error(path), path, 4, "gateway.id", "appears twice")


def test_duplicate_section_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "logging: {}\nlogging: {level: debug}\n")
    assert_one_error(config_error(path), path, 4, "logging", "appears twice")


def test_missing_gateway_id_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "logging: {}\ngateway:\n  site: plant-3\n")
    assert_one_error(config_error(path), path, 2, "gateway.id", "required key is missing")


def test_missing_gateway_section_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "logging: {}\n")
    assert_one_error(config_error(path), path, 1, "gateway", "required key is missing")


def test_bad_gateway_id_characters(tmp_path: Path) -> None:
    path = write(tmp_path, "gateway:\n  id: gw 1/2\n")
    assert_one_error(
        config_error(path), path, 2, "gateway.id", "'gw 1/2'", "letters A-Z a-z, digits and _ . -"
    )


TWO_DRIVERS_NAMED_A = """\
gateway: {id: gw-1}
drivers:
  - type: mqtt
    name: a
    subscriptions: [{topic: x}]
  - type: mqtt
    name: a
    subscriptions: [{topic: y}]
"""


def test_duplicate_driver_names_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, TWO_DRIVERS_NAMED_A)
    message = config_error(path)
    assert_one_error(message, path, 7, "drivers[1].name", "two drivers are named 'a'", "unique")


@pytest.mark.parametrize(
    ("drivers", "line", "key_path", "words"),
    [
        (
            "  - {type: ble, name: a}\n  - {type: ble, name: b}\n",
            4,
            "drivers[1]",  # the adapter is the default: the driver is named
            ("the Bluetooth adapter hci0 is used by driver 'a' too", "merge the two ble drivers"),
        ),
        (
            "  - {type: serial, name: a, protocol: nmea, port: /dev/ttyUSB0}\n"
            "  - {type: serial, name: b, protocol: lines, format: kv, port: /dev/ttyUSB0}\n",
            4,
            "drivers[1].port",
            ("the serial port /dev/ttyUSB0 is used by driver 'a' too", "one driver per port"),
        ),
        (
            "  - {type: mqtt, name: a, client_id: gw, subscriptions: [{topic: x}]}\n"
            "  - {type: mqtt, name: b, client_id: gw, subscriptions: [{topic: y}]}\n",
            4,
            "drivers[1].client_id",
            (
                "the MQTT client id 'gw' at 127.0.0.1:1883 is used by driver 'a' too",
                "own client_id",
            ),
        ),
    ],
)
def test_two_drivers_claiming_one_adapter_port_or_session_are_refused(
    tmp_path: Path, drivers: str, line: int, key_path: str, words: tuple[str, ...]
) -> None:
    """At run time the second would fail (BlueZ: one scan per adapter; a port's lock) or the
    two would end each other's MQTT session on every connect: `check` says so first."""
    path = write(tmp_path, "gateway: {id: gw-1}\ndrivers:\n" + drivers)
    assert_one_error(config_error(path), path, line, key_path, *words)


def test_drivers_that_share_nothing_but_a_broker_or_a_glob_load(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "gateway: {id: gw-1}\ndrivers:\n"
        "  - {type: mqtt, name: a, subscriptions: [{topic: x}]}\n"
        "  - {type: mqtt, name: b, subscriptions: [{topic: y}]}\n"
        "  - {type: mqtt, name: c, client_id: gw, host: other, subscriptions: [{topic: y}]}\n"
        "  - {type: mqtt, name: d, client_id: gw, subscriptions: [{topic: z}]}\n"
        "  - {type: serial, name: e, protocol: nmea, port: '/dev/ttyUSB*'}\n"
        "  - {type: serial, name: f, protocol: nmea, port: '/dev/ttyUSB*'}\n"
        "  - {type: ble, name: g}\n  - {type: ble, name: h, adapter: hci1}\n",
    )
    assert [d.name for d in load_config(path, check_files=False).drivers] == list("abcdefgh")


def test_a_session_expiry_mqtt_5_cannot_carry_is_refused(tmp_path: Path) -> None:
    """paho would fail at every connect ('L' format requires 0 <= number <= 4294967295)."""
    path = write(
        tmp_path,
        "gateway: {id: gw-1}\ndrivers:\n  - type: mqtt\n    name: a\n"
        "    session_expiry_s: 4294967296\n    subscriptions: [{topic: x}]\n",
    )
    assert_one_error(
        config_error(path),
        path,
        5,
        "drivers[0].session_expiry_s",
        "less than or equal to 4294967295",
    )


def test_unknown_driver_type_lists_the_known_types(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "drivers:\n  - type: modbus\n    name: plc\n")
    assert_one_error(config_error(path), path, 4, "drivers[0]", "unknown type 'modbus'", "'mqtt'")


def test_driver_without_type_says_so(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "drivers:\n  - name: plc\n")
    assert_one_error(config_error(path), path, 4, "drivers[0]", "'type' is missing")


@pytest.mark.parametrize(
    ("topic", "problem"),
    [
        ("sensors/#/state", "invalid MQTT topic filter"),
        ("sensors/a+", "invalid MQTT topic filter"),
        ("sensors/#x", "invalid MQTT topic filter"),
        ("a/b+/c", "invalid MQTT topic filter"),
        ("$share/g/a/#/b", "invalid MQTT topic filter"),
        ("$share//a/b", "invalid shared subscription"),
        ("$share/g+/a", "invalid shared subscription"),
        ("$share/g/", "invalid shared subscription"),
    ],
)
def test_bad_mqtt_topic_filter(tmp_path: Path, topic: str, problem: str) -> None:
    path = local_mqtt(
        tmp_path,
        f"""\
        subscriptions:
          - topic: {topic}
        """,
    )
    assert_one_error(
        config_error(path),
        path,
        7,
        "drivers[0].subscriptions[0].topic",
        f"{problem} {topic!r}",
    )


def test_a_filter_another_covers_is_not_subscribed_at_the_broker(tmp_path: Path) -> None:
    path = local_mqtt(
        tmp_path,
        """\
        subscriptions:
          - {topic: sensors/+/state, qos: 0}
          - {topic: meters/+/power, qos: 0}
          - {topic: sensors/#, qos: 1}
          - {topic: sensors/#, qos: 0}
        """,
    )
    (driver,) = load_config(path).drivers
    assert isinstance(driver, MqttDriverConfig)
    assert driver.broker_filters() == [("meters/+/power", 0), ("sensors/#", 1)]


async def test_filters_that_share_topics_without_covering_are_warned_about(
    tmp_path: Path,
) -> None:
    path = local_mqtt(
        tmp_path,
        """\
        subscriptions: [{topic: a/+/x}, {topic: a/b/+}, {topic: c/#}]
        """,
    )
    (driver,) = load_config(path).drivers
    assert isinstance(driver, MqttDriverConfig)
    assert driver.partial_overlaps() == [("a/+/x", "a/b/+")]
    with capture_logs() as logs:
        MqttSource(driver, "gw", _Discard())
    assert [(e["event"], e["filters"]) for e in logs] == [
        (
            "MQTT subscriptions share topics: a message on such a topic becomes two readings",
            ["a/+/x", "a/b/+"],
        )
    ]


class _Discard:
    async def put(self, readings: Sequence[Reading] | Encoded) -> None:
        pass


@pytest.mark.parametrize("topic", ["#", "+", "a/+/b/#", "$SYS/#", "a//b", "$share/g/a/+/b"])
def test_good_mqtt_topic_filters_load(tmp_path: Path, topic: str) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + f"drivers:\n  - type: mqtt\n    name: x\n    subscriptions: [{{topic: '{topic}'}}]\n",
    )
    assert load_config(path).drivers[0].subscriptions[0].topic == topic


@pytest.mark.parametrize("template", ["sensors/{id}/state", "sensors/state", "sensors/x{device}"])
def test_bad_device_template(tmp_path: Path, template: str) -> None:
    path = local_mqtt(
        tmp_path,
        f"""\
        subscriptions:
          - topic: sensors/+/state
            device: {template}
        """,
    )
    assert_one_error(
        config_error(path),
        path,
        8,
        "drivers[0].subscriptions[0].device",
        f"device template {template!r}",
        "{device}",
    )


def test_bad_routing_key_placeholder_lists_the_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "amqp:\n  routing_key: '{site}.{sensor}'\n")
    assert_one_error(
        config_error(path),
        path,
        4,
        "amqp.routing_key",
        "unknown placeholder {sensor}",
        "{device}, {gateway}, {site}, {source}",
    )


@pytest.mark.parametrize(
    "url", ["http://broker:15672/", "mqtt://broker/", "broker:5672", "[amqp://a/, 'http://b/']"]
)
def test_non_amqp_url_is_refused(tmp_path: Path, url: str) -> None:
    path = write(tmp_path, MINIMAL + f"amqp:\n  url: {url}\n")
    assert_one_error(config_error(path), path, 4, "amqp.url", "is not an AMQP URL")


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("amqp://gw:s3cr#t@broker:5672/", ["cannot be read", "%23", "amqp.password_file"]),
        ("amqp://gw:s3cr/t@broker:5672/", ["cannot be read", "%2F"]),
        ("amqp://broker:99999/", ["cannot be read", "Port out of range"]),
        ("amqp://[::1:5672/", ["cannot be read", "IPv6"]),
        ("amqp://:5672/", ["names no host or port"]),
        ("amqp://broker:0/", ["names no host or port"]),
    ],
)
def test_a_broker_url_that_cannot_be_read_is_refused_without_showing_it(
    tmp_path: Path, url: str, words: list[str]
) -> None:
    # These used to pass the check, then end `run` with a traceback after it had started.
    path = write(tmp_path, MINIMAL + f"amqp:\n  url: '{url}'\n")
    message = config_error(path)
    assert_one_error(message, path, 4, "amqp.url", *words)
    assert "s3cr" not in message  # a password is not echoed into logs


def test_special_characters_of_a_password_may_be_percent_encoded(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "amqp:\n  url: 'amqp://gw:s3cr%23t@broker:5672/site'\n")
    assert load_config(path).amqp.url == "amqp://gw:s3cr%23t@broker:5672/site"


def test_empty_url_list_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "amqp:\n  url: []\n")
    assert_one_error(config_error(path), path, 4, "amqp.url", "at least one broker URL")


def test_several_problems_give_one_line_each(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "buffer:\n  when_full: nope\nlogging:\n  level: loud\n")
    lines = config_error(path).splitlines()
    assert [line.split(": ")[0:2] for line in lines] == [
        [f"{path}:4", "buffer.when_full"],
        [f"{path}:6", "logging.level"],
    ]


def test_tls_needs_amqps_urls(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL, "amqp:\n  url: amqp://h/\n  tls: {verify: false}\n")
    assert_one_error(config_error(path), path, 3, "amqp", "tls is set", "amqps://")


TEST_CA = """\
-----BEGIN CERTIFICATE-----
MIIBQTCB6KADAgECAgEBMAoGCCqGSM49BAMCMB8xHTAbBgNVBAMMFGVkZ2UtZ2F0
ZXdheSB0ZXN0IENBMCAXDTI2MDEwMTAwMDAwMFoYDzIxMjUxMjA4MDAwMDAwWjAf
MR0wGwYDVQQDDBRlZGdlLWdhdGV3YXkgdGVzdCBDQTBZMBMGByqGSM49AgEGCCqG
SM49AwEHA0IABCurymEYKJMXV0KbzLmOTYS3zYyqmxzi8JsBqJBv5cQtt3G1nEEh
lThDRBmwlh0uvPfz/TuBFdavPnCrJiQhuZGjEzARMA8GA1UdEwEB/wQFMAMBAf8w
CgYIKoZIzj0EAwIDSAAwRQIgVxB6DoMZ34T+qm9t6kPq+wNY4uetplR6Tjq/gZ2h
4NQCIQCZeouJsLejF5SDZ7vAlu20J8NlouRVqk7Yg0u+REXVNQ==
-----END CERTIFICATE-----
"""
"""A self-signed CA certificate (EC P-256, valid 2026 to 2125): a CA file OpenSSL loads."""


def test_tls_ca_file_is_read_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text(TEST_CA)
    path = write(tmp_path, MINIMAL, "amqp:\n  url: amqps://h/\n  tls: {ca_file: ca.pem}\n")
    tls = load_config(path).amqp.tls
    assert tls is not None
    assert tls.ca_file == tmp_path / "ca.pem"


def test_missing_tls_ca_file_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL, "amqp:\n  url: amqps://h/\n  tls:\n    ca_file: nope.pem\n")
    assert_one_error(
        config_error(path), path, 6, "amqp.tls.ca_file", f"cannot read {tmp_path / 'nope.pem'}"
    )


def test_a_tls_file_openssl_cannot_load_is_an_error_at_check_not_at_the_first_connect(
    tmp_path: Path,
) -> None:
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    path = write(tmp_path, MINIMAL, "amqp:\n  url: amqps://h/\n  tls:\n    ca_file: ca.pem\n")
    assert_one_error(
        config_error(path), path, 5, "amqp.tls", "TLS files cannot be loaded", "tls.ca_file"
    )


def test_an_encrypted_tls_key_is_an_error_not_a_passphrase_prompt(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "client.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "client.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret"),
        )
    )
    tls = "  tls: {cert_file: client.pem, key_file: client.key}\n"
    path = write(tmp_path, MINIMAL, "amqp:\n  url: amqps://h/\n" + tls)
    assert_one_error(config_error(path), path, 5, "amqp.tls", "encrypted with a passphrase")


def test_a_tls_key_without_its_certificate_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "client.key").write_text("key")
    path = write(tmp_path, MINIMAL, "amqp:\n  url: amqps://h/\n  tls: {key_file: client.key}\n")
    assert_one_error(config_error(path), path, 5, "amqp.tls", "key_file needs cert_file")


@pytest.mark.parametrize(
    ("written", "words"),
    [
        # Python's format rules would apply
        ("'{site!r}'", ["take no ! or : here: write {site}"]),
        ("'{device:>8}'", ["take no ! or : here: write {device}"]),
        ("'{site'", ["expected '}'", "braces as {{ }}"]),
        # YAML reads it as something else than text
        ("{site}", ["input should be a valid string", "reads {site} as a mapping: write '{site}'"]),
        ("0043", ["(got 35)", "a leading 0 even as octal", "put it in quotes"]),
        ("yes", ["(got True)", "put it in quotes"]),
    ],
)
def test_a_routing_key_that_would_be_misread_is_refused_with_what_to_write(
    tmp_path: Path, written: str, words: list[str]
) -> None:
    path = write(tmp_path, MINIMAL + f"amqp:\n  routing_key: {written}\n")
    assert_one_error(config_error(path), path, 4, "amqp.routing_key", *words)


# --- ${ENV} substitution ---------------------------------------------------------------------


def test_env_reference_is_substituted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_ID", "from-env")
    monkeypatch.setenv("BROKER", "rabbit.lan")
    path = write(tmp_path, "gateway:\n  id: ${GW_ID}\namqp:\n  url: amqp://${BROKER}:5672/\n")
    config = load_config(path)
    assert config.gateway.id == "from-env"
    assert config.amqp.url == "amqp://rabbit.lan:5672/"


def test_unset_env_reference_takes_its_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GW_SITE", raising=False)
    monkeypatch.delenv("MQTT_PORT", raising=False)
    path = write(
        tmp_path,
        """\
        gateway:
          id: gw-1
          site: ${GW_SITE:-plant-3}
        drivers:
          - type: mqtt
            name: local
            port: ${MQTT_PORT:-1884}
            subscriptions: [{topic: a}]
        """,
    )
    config = load_config(path)
    assert config.gateway.site == "plant-3"
    assert config.drivers[0].port == 1884


def test_env_references_fill_choices_of_numbers_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`${ENV}` gives text; a key whose values are a few numbers (qos, bytesize) took "1"
    for a wrong value although the documentation promises numbers from the environment."""
    monkeypatch.setenv("MQTT_QOS", "0")
    monkeypatch.delenv("BYTESIZE", raising=False)
    path = write(
        tmp_path,
        """\
        gateway:
          id: gw-1
        drivers:
          - type: mqtt
            name: local
            subscriptions: [{topic: a, qos: "${MQTT_QOS}"}]
          - type: serial
            name: meter
            protocol: lines
            port: /dev/ttyUSB0
            format: json
            bytesize: ${BYTESIZE:-7}
        """,
    )
    mqtt, serial = load_config(path).drivers
    assert mqtt.subscriptions[0].qos == 0  # type: ignore[union-attr]
    assert serial.bytesize == 7  # type: ignore[union-attr]
    path = write(
        tmp_path,
        MINIMAL + "drivers:\n  - {type: mqtt, name: m, subscriptions: [{topic: a, qos: '2'}]}\n",
    )
    assert "input should be 0 or 1 (got 2)" in config_error(path)


def test_set_env_reference_wins_over_its_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GW_SITE", "plant-9")
    path = write(tmp_path, "gateway:\n  id: gw-1\n  site: ${GW_SITE:-plant-3}\n")
    assert load_config(path).gateway.site == "plant-9"


def test_unset_env_reference_without_default_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BROKER_URL", raising=False)
    path = write(tmp_path, MINIMAL + "amqp:\n  url: ${BROKER_URL}\n")
    assert_one_error(
        config_error(path),
        path,
        4,
        "amqp.url",
        "environment variable BROKER_URL is not set",
        "${BROKER_URL:-default}",
    )


@pytest.mark.parametrize(
    ("written", "shown"),
    [
        ("${MQTT_HOST:localhost}", "'${MQTT_HOST:localhost}'"),
        ("${MQTT_HOST-localhost}", "'${MQTT_HOST-localhost}'"),
        ("broker-${ SITE }.lan", "'${ SITE }'"),
    ],
)
def test_an_env_reference_in_a_form_it_does_not_read_is_refused(
    tmp_path: Path, written: str, shown: str
) -> None:
    # bash reads these; we would have used them as they are, as a host name or a user.
    path = local_mqtt(tmp_path, f"host: '{written}'\n")
    assert_one_error(
        config_error(path),
        path,
        6,
        "drivers[0].host",
        f"{shown} is not an environment reference",
        "${NAME:-default}",
    )


# --- secret files -------------------------------------------------------------------------


def test_password_file_is_read_relative_to_the_config_file(tmp_path: Path) -> None:
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    (config_dir / "amqp-password").write_text("s3cret\n")
    path = write(config_dir, MINIMAL + "amqp:\n  username: gw\n  password_file: amqp-password\n")
    config = load_config(path)
    assert config.amqp.password_file == config_dir / "amqp-password"
    assert config.amqp.password_file is not None
    assert read_secret(config.amqp.password_file) == "s3cret"


def test_password_file_is_found_in_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "amqp-password").write_text("from-systemd")
    (tmp_path / "amqp-password").write_text("beside-the-config")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    path = write(tmp_path, MINIMAL + "amqp:\n  username: gw\n  password_file: amqp-password\n")
    config = load_config(path)
    assert config.amqp.password_file == credentials / "amqp-password"


def test_credentials_directory_without_the_file_falls_back_to_the_config_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (tmp_path / "amqp-password").write_text("beside-the-config")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    path = write(tmp_path, MINIMAL + "amqp:\n  password_file: amqp-password\n")
    assert load_config(path).amqp.password_file == tmp_path / "amqp-password"


def test_missing_password_file_is_an_error_naming_the_path(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "amqp:\n  username: gw\n  password_file: nowhere.txt\n")
    assert_one_error(
        config_error(path),
        path,
        5,
        "amqp.password_file",
        f"cannot read {tmp_path / 'nowhere.txt'}",
        "No such file",
        "create it or fix the path",
        "looked for in $CREDENTIALS_DIRECTORY first",  # check by hand misses the unit's
    )


def test_a_password_file_that_is_a_directory_is_an_error_that_says_so(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    path = write(
        tmp_path, MINIMAL + f"amqp:\n  username: gw\n  password_file: {tmp_path}/secrets\n"
    )
    assert_one_error(
        config_error(path), path, 5, "amqp.password_file", "name the file in it, not the directory"
    )


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "is empty; write the password into it"),
        (b"\n", "is empty; write the password into it"),
        (b"guest\xe9\n", "is not UTF-8 text (byte 5); save the password as UTF-8"),
    ],
)
def test_a_password_file_that_holds_no_usable_password_is_an_error(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    """Found by `check`: an empty one would log in as "guest", one in Latin-1 crashed the
    started gateway at its first connect."""
    (tmp_path / "amqp-password").write_bytes(content)
    path = write(tmp_path, MINIMAL + "amqp:\n  username: gw\n  password_file: amqp-password\n")
    message = f"{tmp_path / 'amqp-password'} {problem}"
    assert_one_error(config_error(path), path, 5, "amqp.password_file", message)


def test_a_password_file_saved_with_a_byte_order_mark_gives_the_password(tmp_path: Path) -> None:
    (tmp_path / "amqp-password").write_bytes(b"\xef\xbb\xbfs3cret\r\n")  # Windows Notepad
    path = write(tmp_path, MINIMAL + "amqp:\n  username: gw\n  password_file: amqp-password\n")
    password_file = load_config(path).amqp.password_file
    assert password_file is not None
    assert read_secret(password_file) == "s3cret"


def test_mqtt_password_file_needs_a_username_and_the_error_names_the_driver(tmp_path: Path) -> None:
    (tmp_path / "mqtt-password").write_text("pw")
    path = local_mqtt(
        tmp_path,
        """\
        password_file: mqtt-password
        subscriptions: [{topic: a}]
        """,
    )
    assert_one_error(config_error(path), path, 4, "drivers[0]", "password_file needs a username")


# --- whole-file problems -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["", "\n\n", "# only a comment\n"], ids=["empty", "blank", "comment"]
)
def test_empty_file_is_an_error(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    assert config_error(path).startswith(f"{path}: the file is empty; start from gateway.example")


def test_top_level_list_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "- gateway\n- amqp\n")
    assert config_error(path) == (
        f"{path}:1: the top level must be a mapping of keys (gateway, amqp, ...)"
    )


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    assert config_error(path) == (
        f"{path}: cannot read the configuration: No such file or directory; check the path, "
        "and that the user running the gateway may read it"
    )


def test_complex_yaml_key_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "[a, b]: 1\n")
    assert config_error(path) == (
        f"{path}:3: (top level): keys must be plain words, not lists or mappings"
    )


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("!!int abc", "cannot read the value 'abc': invalid literal for int()"),
        ("!secret x", "cannot read the value 'x': could not determine a constructor for the tag"),
        ("!!float nope", "cannot read the value 'nope': could not convert string to float"),
    ],
)
def test_bad_yaml_tag_is_a_config_error(tmp_path: Path, value: str, problem: str) -> None:
    path = write(tmp_path, f"gateway:\n  id: {value}\n")
    assert config_error(path).startswith(f"{path}:2: {problem}")


def test_yaml_merge_keys_share_driver_settings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL,
        """\
        drivers:
          - &mqtt
            type: mqtt
            name: a
            host: broker.lan
            keepalive_s: 20
            subscriptions: [{topic: a/#}]
          - <<: *mqtt
            name: b
            subscriptions: [{topic: b/#}]
        """,
    )
    first, second = load_config(path).drivers
    assert (first.name, second.name) == ("a", "b")
    assert (second.host, second.keepalive_s) == ("broker.lan", 20)  # from the merge key
    assert [s.topic for s in second.subscriptions] == ["b/#"]  # its own keys win


def test_an_anchor_parked_under_an_unknown_key_is_refused_by_that_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL,
        """\
        x-mqtt: &mqtt {type: mqtt, host: broker.lan}
        drivers:
          - <<: *mqtt
            name: a
            subscriptions: [{topic: a/#}]
        """,
    )
    message = config_error(path)
    assert message.startswith(f"{path}:3: x-mqtt: "), message
    assert "<<" not in message


@pytest.mark.parametrize(
    ("depth", "problem"),
    [
        (60, ":3: nested more than 50 levels deep"),  # refused by our reader
        (2000, ": nested too deeply to read"),  # too deep for the YAML parser itself
    ],
)
def test_deep_nesting_is_a_config_error(tmp_path: Path, depth: int, problem: str) -> None:
    path = write(tmp_path, MINIMAL, "logging: " + "[" * depth + "]" * depth + "\n")
    message = config_error(path)
    assert message.startswith(f"{path}{problem}"), message
    assert "fewer than 10" in message


def test_an_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    layers = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    layers += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    path = write(tmp_path, MINIMAL, "\n".join(layers) + "\n")  # 10**9 values expanded
    message = config_error(path)
    assert message.startswith(f"{path}: more than 100,000 values once aliases"), message


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("gateway:\n  id: gw-1\n  site: Köln\n".encode("latin-1"))
    assert (
        config_error(path)
        == f"{path}:3: the file is not UTF-8 text (byte 29, b'\\xf6'); save it as UTF-8"
    )


FIELD_TYPO = """\
gateway: {id: gw-1}
drivers:
  - type: mqtt
    name: local
    subscriptions:
      - topic: a/b
        fields:
          temp: {path: t, unti: Cel}
"""


def test_unknown_key_in_a_field_spec_suggests_unit(tmp_path: Path) -> None:
    path = write(tmp_path, FIELD_TYPO)
    assert "did you mean 'unit'?" in config_error(path)


def test_unknown_key_in_a_field_spec_is_one_error(tmp_path: Path) -> None:
    path = write(tmp_path, FIELD_TYPO)
    assert_one_error(
        config_error(path), path, 8, "drivers[0].subscriptions[0].fields.temp.unti", "unknown key"
    )


# --- any YAML document: a config or a ConfigError, never a crash -------------------------------

_SECTION_KEYS = ["gateway", "buffer", "amqp", "drivers", "logging", "id", "type", "name"]
_FIELD_KEYS = ["url", "max_bytes", "when_full", "subscriptions", "topic", "device", "fields"]
# Keys without control characters: a key holding a line break would split the message.
_keys = st.sampled_from(_SECTION_KEYS + _FIELD_KEYS) | st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=5
)
_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.sampled_from(["mqtt", "gw-1", "amqp://h/", "a/+/b", "reject_new", "1 KiB", "${HOME}"])
    | st.text(max_size=6)
)
documents = st.recursive(
    _leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=15,
)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(document=documents)
def test_any_yaml_document_loads_or_raises_config_error(tmp_path: Path, document: object) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    try:
        config = load_config(path)
    except ConfigError as exc:
        for line in str(exc).split("\n"):
            assert re.match(rf"{re.escape(str(path))}(:\d+)?: ", line), line
    else:
        assert isinstance(config, GatewayConfig)


# --- the CLI ------------------------------------------------------------------------------------


def test_cli_check_prints_the_summary_and_returns_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        """\
        gateway: {id: gw-1, site: plant-3, state_dir: /srv/gw}
        amqp:
          url: amqp://gw:hunter2@rabbit.lan:5672/
          exchange: readings
        drivers:
          - type: mqtt
            name: local
            host: mosquitto.lan
            subscriptions: [{topic: sensors/+/state}, {topic: meters/#}]
        """,
    )
    assert main(["check", "--config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == f"configuration OK: {path}"
    assert "  gateway  gw-1 (site plant-3)" in lines
    assert any(line.startswith("  buffer   /srv/gw/buffer.db, max 1.0GiB") for line in lines)
    assert "  driver   local: mqtt mosquitto.lan:1883 [sensors/+/state, meters/#]" in lines
    assert "hunter2" not in out  # the broker password is redacted
    assert "rabbit.lan" in out


def test_cli_check_lists_the_drop_ins_it_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, MINIMAL)
    later = drop_in(tmp_path, "20-later.yaml", "amqp: {exchange: later}\n")
    first = drop_in(tmp_path, "10-first.yml", "gateway: {site: shed}\n")
    assert main(["check", "--config", str(path)]) == 0
    assert f"  drop-ins {first}, {later}" in capsys.readouterr().out.splitlines()


def test_cli_check_shows_the_user_that_logs_in(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "amqp-password").write_text("s3cret\n")
    amqp = "amqp:\n  url: amqp://guest:guest@rabbit.lan/\n  username: gw-user\n"
    path = write(tmp_path, MINIMAL, amqp + "  password_file: amqp-password\n")
    assert main(["check", "--config", str(path)]) == 0
    assert "  broker   amqp://gw-user:***@rabbit.lan/" in capsys.readouterr().out.splitlines()


def test_cli_check_without_drivers_says_nothing_will_be_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--config", str(write(tmp_path, MINIMAL))]) == 0
    assert "  drivers  none (nothing will be read)" in capsys.readouterr().out.splitlines()


def test_cli_check_bad_file_returns_2_with_the_message_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, MINIMAL + "amqp:\n  exchnage: readings\n")
    assert main(["check", "--config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"configuration error:\n{path}:4: amqp.exchnage: unknown key; did you mean 'exchange'?\n"
    )


# --- a first configuration's mistakes -----------------------------------------------------


@pytest.mark.parametrize(
    ("written", "line", "key_path", "words"),
    [
        ("buffer:\n", 3, "buffer", ["is empty", "remove the key", "{}"]),
        ("drivers:\n", 3, "drivers", ["is empty", "[]"]),
        ("buffer:\n  max_bytes: 100\n", 4, "buffer.max_bytes", ["100 bytes", "512MiB"]),
        ("amqp:\n  exchange: Tür\n", 4, "amqp.exchange", ["'Tür'", "127", "A-Z"]),
        ("amqp:\n  exchange: " + "x" * 128 + "\n", 4, "amqp.exchange", ["up to 127"]),
        (
            "amqp:\n  url: amqp://gateway:@127.0.0.1/\n",
            3,
            "amqp",
            ["user 'gateway' but no password", "'guest'", "password_file"],
        ),
        ("metrics:\n  host: localhost:9464\n", 4, "metrics.host", ["a port goes in `port`"]),
        (
            "drivers:\n  - {type: mqtt, name: m, subscriptions: [sensors/+/state]}\n",
            4,
            "drivers[0].subscriptions[0]",
            ["not 'sensors/+/state'", "e.g. {topic: sensors/+/state}"],
        ),
        (
            "drivers:\n  - {type: mqtt, name: m, tls: , subscriptions: [{topic: a}]}\n",
            4,
            "drivers[0].tls",
            ["is empty", "tls: {}", "remove the line for no TLS"],
        ),
        (
            "drivers:\n  - {type: mqtt, name: m, tls: true, subscriptions: [{topic: a}]}\n",
            4,
            "drivers[0].tls",
            ["not True", "write {}"],
        ),
        (
            "drivers:\n  - {type: mqtt, name: '', subscriptions: [{topic: a}]}\n",
            4,
            "drivers[0].name",
            ["''", "letters A-Z a-z, digits and _ . -"],
        ),
        (
            "drivers:\n  - {type: mqtt, name: m, host: '', subscriptions: [{topic: a}]}\n",
            4,
            "drivers[0].host",
            ["give a host name"],
        ),
        (
            "drivers:\n  - {type: serial, name: s, protocol: lines, format: json, port: ttyUSB0}\n",
            4,
            "drivers[0].port",
            ["not a device path", "/dev/ttyUSB0"],
        ),
        (
            "drivers:\n  - {type: mqtt, name: m, subscriptions: "
            "[{topic: sensors/+/state, device: 'sensor/{device}/state'}]}\n",
            4,
            "drivers[0].subscriptions[0]",
            ["says 'sensor' where topic filter 'sensors/+/state' says 'sensors'"],
        ),
        (
            "drivers:\n  - {type: mqtt, name: m, subscriptions: "
            "[{topic: home/+/+/temp, device: 'home/{device}/temp'}]}\n",
            4,
            "drivers[0].subscriptions[0]",
            ["has 3 levels, which no topic of 'home/+/+/temp' has"],
        ),
        (
            "drivers:\n  - {type: mqtt, name: m, format: json, subscriptions: [{topic: a}]}\n",
            4,
            "drivers[0].format",
            ["unknown key here; 'format' belongs under 'subscriptions'"],
        ),
        (
            "drivers:\n  - {type: mqtt, name: m, baudrate: 9600, subscriptions: [{topic: a}]}\n",
            4,
            "drivers[0].baudrate",
            ["'baudrate' is a key of drivers with type: serial, protocol: lines"],
        ),
        (
            "drivers:\n  - {type: ble, name: b, topic: x}\n",
            4,
            "drivers[0].topic",
            ["'topic' is a key of drivers with type: mqtt (under 'subscriptions')"],
        ),
        ("amqp:\n  url: ${AMQP_URL\n", 4, "amqp.url", ["'${AMQP_URL' has no closing '}'"]),
        (
            "amqp:\n  routing_key: ${site}.x\n",
            4,
            "amqp.routing_key",
            ["${site} is an environment reference", "written {site}"],
        ),
    ],
)
def test_a_first_configurations_mistakes_say_what_to_write(
    tmp_path: Path, written: str, line: int, key_path: str, words: list[str]
) -> None:
    path = write(tmp_path, MINIMAL, written)
    assert_one_error(config_error(path), path, line, key_path, *words)


@pytest.mark.parametrize(
    ("written", "line", "words"),
    [
        ("port:1883\n", 3, ["a space after its colon"]),  # the key's line, not the next one
        ("amqp:\n\tretry_max_s: 1\n", 4, ["spaces, not tabs"]),
        ("units: {h: %RH}\n", 3, ["needs quotes"]),
        ('pattern: "\\d+"\n', 3, ["single quotes"]),
        ("amqp:\n  routing_key: {site}.{device}\n", 4, ["quote a value that starts with {"]),
    ],
)
def test_yaml_mistakes_name_the_line_and_what_to_write(
    tmp_path: Path, written: str, line: int, words: list[str]
) -> None:
    path = write(tmp_path, MINIMAL, written)
    message = config_error(path)
    assert message.startswith(f"{path}:{line}: invalid YAML: "), message
    for word in words:
        assert word in message, message


def test_guest_needs_no_password_in_the_url(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL, "amqp:\n  url: amqp://guest@127.0.0.1/\n")
    assert load_config(path).amqp.url == "amqp://guest@127.0.0.1/"  # the client sends guest


def test_a_password_file_of_two_lines_is_refused(tmp_path: Path) -> None:
    (tmp_path / "password").write_text("s3cret\nsecond\n")
    path = write(tmp_path, MINIMAL, "amqp:\n  password_file: password\n")
    assert_one_error(
        config_error(path), path, 4, "amqp.password_file", "more than one line", "only the password"
    )


@pytest.mark.parametrize("size", ["-5MB", "1e6", "10 MiBs"])
def test_a_size_that_is_not_one_says_how_to_write_one(tmp_path: Path, size: str) -> None:
    path = write(tmp_path, MINIMAL, f"buffer:\n  max_bytes: {size}\n")
    assert_one_error(
        config_error(path), path, 4, "buffer.max_bytes", f"{size!r} is not a size", "512MiB"
    )


def test_problems_are_listed_in_the_files_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL,
        "drivers:\n  - {type: mqtt, name: m, subscriptions: [{topic: a}], qos: 1}\n",
        "buffer:\n  when_full: never\n",
        "amqp:\n  exchange: Tür\n",
    )
    lines = [int(line.split(":")[1]) for line in config_error(path).splitlines()]
    assert lines == sorted(lines) and len(lines) == 3


def test_a_small_buffer_is_warned_about(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL, "buffer:\n  max_bytes: 100KB\n"))
    [(message, fields)] = config.service_warnings(60.0, under_systemd=False)
    assert message == "buffer.max_bytes is small: an outage of minutes fills it"
    assert "512MiB" in str(fields["hint"])


# --- the drivers' union, narrowed to the types a file uses ---------------------------

_MQTT = "  - {type: mqtt, name: m, subscriptions: [{topic: 'a/+'}]}\n"
_SERIAL = "  - {type: serial, name: s, protocol: nmea, port: /dev/ttyUSB0}\n"
_BLE = "  - {type: ble, name: b, devices: [{address: 'AA:BB:CC:DD:EE:FF', name: cellar}]}\n"


@pytest.mark.parametrize(
    "drivers",
    [
        _MQTT,
        _SERIAL,
        _BLE,
        _MQTT + _SERIAL,
        _MQTT + _SERIAL + _BLE,
        _MQTT.replace("a/+", "a/#/b"),  # a bad value
        _MQTT.replace("name: m,", "name: m, bindkey: x,"),  # a key of another type
        _SERIAL.replace("nmea", "modbus"),  # a protocol the serial type does not know
        _BLE.replace("cellar", "cellar, bindkey: '00'"),
        _MQTT + _MQTT.replace("a/+", "b/+"),  # a name twice
        _MQTT + _SERIAL.replace("type: serial", "type: serail"),  # a type nobody knows
        _MQTT + "  - {name: x}\n",  # no type
        _MQTT.replace("type: mqtt", "type: [mqtt]"),  # a type that is no text
        _MQTT.replace("type: mqtt", "type: {mqtt: 1}"),
        _MQTT.replace("type: mqtt", "type: 1"),
        "  - [mqtt]\n",
    ],
)
def test_a_file_is_judged_as_by_the_union_of_every_driver_type(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, drivers: str
) -> None:
    """load_config validates with the union of the driver types the file uses (memory:
    docs/performance.md); what it accepts, and what it says, must be what the whole
    union accepts and says."""
    path = write(tmp_path, MINIMAL, "drivers:\n", drivers)

    def outcome() -> object:
        try:
            return load_config(path, check_files=False).model_dump()
        except ConfigError as exc:
            return str(exc)

    narrowed = outcome()
    monkeypatch.setattr(config_module, "_model_for", lambda types: GatewayConfig)
    assert outcome() == narrowed


def test_the_narrowed_unions_are_made_of_the_whole_ones_members() -> None:
    """A driver type added to DriverConfig but not to the narrowing's table would be
    validated with the whole union: correct, but no longer narrowed."""
    members = get_args(get_args(DriverConfig)[0])
    assert list(config_module._DRIVER_TYPES.values()) == list(members)


def test_an_mqtt_only_file_gets_a_union_of_mqtt_alone(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL, "drivers:\n", _MQTT, _MQTT.replace("m,", "n,")))
    drivers = type(config).model_fields["drivers"].annotation
    assert "MqttDriverConfig" in str(drivers)
    assert "Ble" not in str(drivers) and "Serial" not in str(drivers)
