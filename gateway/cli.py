"""The `edge-gateway` command: run, check, status, tail."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

import structlog

from gateway import __version__, state_dir
from gateway.broker import shown_url
from gateway.config import (
    UNIT_WATCHDOG_S,
    GatewayConfig,
    broker_url_problem,
    config_files,
    exchange_name_problem,
    load_config,
    state_dir_of,
)
from gateway.errors import ConfigError, GatewayError
from gateway.logs import configure_logging
from gateway.malloc import use_one_arena
from gateway.status import BUFFER_FILE, format_status, is_running, read_status

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_NOT_RUNNING = 0, 1, 2, 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="edge-gateway",
        description="Sensors (MQTT, serial, BLE) -> durable disk buffer -> AMQP broker.",
    )
    parser.add_argument("--version", action="version", version=f"edge-gateway {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("run", "run the gateway until SIGTERM or Ctrl-C"),
        ("check", "validate a configuration file and summarise it (exit 0: valid, 2: not)"),
        ("status", "show the buffer, the uplink and the drivers (exit 3: not running)"),
    ):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--config", "-c", required=True, type=Path, help="the YAML file")
        if name == "status":
            sub.add_argument("--json", action="store_true", help="print JSON instead of text")
    tail = commands.add_parser(
        "tail",
        help="print readings arriving at an exchange, one JSON line each",
        description="Bind a temporary queue to the exchange and print each reading "
        "(exit 1: cannot connect, or the connection was lost).",
    )
    tail.add_argument("--url", required=True, help="AMQP URL, e.g. amqp://guest:guest@host/")
    tail.add_argument(
        "--exchange", default="edge-gateway", help="the gateway's amqp.exchange (edge-gateway)"
    )
    tail.add_argument("--binding", default="#", help="binding key (default: # = everything)")
    tail.add_argument("--count", type=int, default=0, help="exit after this many readings")
    tail.add_argument("--messages", action="store_true", help="print whole messages instead")
    args = parser.parse_args(argv)

    if args.command == "tail":
        from gateway.tail import tail_readings

        for option, problem in (
            ("--url", broker_url_problem(args.url)),
            ("--exchange", exchange_name_problem(args.exchange)),
        ):
            if problem is not None:
                print(f"edge-gateway tail: {option}: {problem}", file=sys.stderr)
                return EXIT_CONFIG
        configure_logging("warning", stream=sys.stderr)  # stdout is for the readings
        try:
            return asyncio.run(
                tail_readings(args.url, args.exchange, args.binding, args.count, args.messages)
            )
        except KeyboardInterrupt:
            return EXIT_OK
    try:
        if args.command == "status":
            report = read_status(state_dir_of(args.config))
            print(json.dumps(report, indent=2) if args.json else format_status(report))
            return EXIT_OK if is_running(report) else EXIT_NOT_RUNNING
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check":
        print(summarise(args.config, config))
        for message, fields in config.service_warnings(UNIT_WATCHDOG_S, under_systemd=True):
            print(f"warning: {message}; {fields['hint']}", file=sys.stderr)
        return EXIT_OK
    configure_logging(config.logging.level, config.logging.format)
    use_one_arena()
    return asyncio.run(_run(args.config, config))


async def _run(path: Path, config: GatewayConfig) -> int:
    """SIGTERM/SIGINT stop the gateway (a second one ends the wait for confirms), SIGHUP
    reloads `path`; systemd hears of both.

    A `ConfigError` met while starting (the metrics port taken, a driver that cannot be
    built) exits 2 like one found in the file: the unit's RestartPreventExitStatus=2 then
    ends a restart loop that could not fix it.
    """
    from gateway.app import run_gateway
    from gateway.notify import Notifier

    stop, hurry, reload = asyncio.Event(), asyncio.Event(), asyncio.Event()

    def request_stop() -> None:
        if stop.is_set():  # asked again: do not wait for confirms
            hurry.set()
        stop.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, request_stop)
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    log = structlog.get_logger("gateway")
    notifier = Notifier()
    failure: BaseException | None = None
    try:
        with state_dir.hold(config.gateway.state_dir):
            await run_gateway(config, stop, reload, lambda: load_config(path), notifier, hurry)
    except* ConfigError as group:
        failure = group.exceptions[0]
    except* GatewayError as group:
        failure = failure or group.exceptions[0]
    except* Exception as group:  # a bug: say so in the log's own format, then let systemd restart
        log.critical("gateway failed", exc_info=group.exceptions[0])
        failure = failure or group.exceptions[0]
    notifier.close()
    if isinstance(failure, ConfigError):
        log.critical("configuration error: not restarting until it is fixed", error=str(failure))
        return EXIT_CONFIG
    if isinstance(failure, GatewayError):
        log.critical("gateway stopped on an error", error=str(failure))
    if failure is not None:
        return EXIT_FAILURE
    return EXIT_OK


def summarise(path: Path, config: GatewayConfig) -> str:
    amqp = config.amqp
    buffer = config.buffer
    lines = [f"configuration OK: {path}"]
    drop_ins = config_files(path)[1:]
    if drop_ins:
        lines.append(f"  drop-ins {', '.join(str(p) for p in drop_ins)}")
    lines += [
        f"  gateway  {config.gateway.id} (site {config.gateway.site})",
        f"  buffer   {config.gateway.state_dir / BUFFER_FILE}, "
        f"max {buffer.max_bytes.human_readable()}, when full: {buffer.when_full}, "
        f"commit every {buffer.commit_interval_ms:g} ms",
        f"  broker   {', '.join(shown_url(u, amqp.username) for u in amqp.urls)}",
        f"           exchange {amqp.exchange!r} ({amqp.exchange_type}), "
        f"routing key {amqp.routing_key!r}, up to {amqp.batch.max_readings} readings/message",
    ]
    if not config.drivers:
        lines.append("  drivers  none (nothing will be read)")
    for driver in config.drivers:
        lines.append(f"  driver   {driver.name}: {driver.summary()}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
