"""Private RabbitMQ and Mosquitto brokers on free loopback ports, for tests and demos.

Each broker lives in a directory of its own (data, logs, configuration), listens on 127.0.0.1
only and never touches the system services or their files. Both classes are context managers:

    with RabbitMQNode(tmp / "rmq", "demo") as node, MosquittoBroker(tmp / "mqtt") as mqtt:
        ...  # node.url, mqtt.host, mqtt.port

`start()`, `stop()`, `kill()` and `restart()` block (a RabbitMQ start takes seconds): from
asyncio code call them through `await asyncio.to_thread(node.start)` so the event loop, and the
gateway under test, keep running meanwhile.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from edge_gateway_sim.lifetime import Managed, stop_process

__all__ = ["BrokerError", "MosquittoBroker", "RabbitMQNode", "free_port"]

LOOPBACK = "127.0.0.1"
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
"""Debian's unwrapped scripts (/usr/sbin/rabbitmq* switch to the `rabbitmq` user)."""
MOSQUITTO = "mosquitto"


class BrokerError(RuntimeError):
    """A broker failed to start, stop or answer; the message ends with the tail of its log."""


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (the kernel picks it)."""
    return _free_ports(1)[0]


def _free_ports(count: int) -> list[int]:
    """`count` distinct free ports: every socket stays bound until all are chosen."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int) -> str:
    """The last `lines` lines of a text file (reads at most its last 64 KiB)."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _signal_pid(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _spawn(
    args: Sequence[str | Path],
    output: Path,
    env: dict[str, str] | None = None,
    cwd: Path = Path("/"),
) -> subprocess.Popen[bytes]:
    """Start `args` in its own session (a Ctrl-C in the terminal does not reach it) with stdout
    and stderr appended to `output`."""
    with output.open("ab") as out:
        return subprocess.Popen(
            [str(a) for a in args],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


# --------------------------------------------------------------------------------------------
# RabbitMQ


def _clean_env() -> dict[str, str]:
    """The caller's environment without anything that configures RabbitMQ or Erlang."""
    prefixes = ("RABBITMQ_", "ERL_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


_APP_DEPS = re.compile(
    r"\{(?:applications|included_applications|optional_applications),\s*\[([^\]]*)\]"
)


def _slim_rabbitmq_home(bin_dir: Path, target: Path) -> Path | None:
    """Make a RABBITMQ_HOME whose plugins directory holds only the applications `rabbit` needs.

    A 3.10 node scans every application in its plugins directory at boot (boot steps, schema
    upgrades), enabled or not: the 70 bundled plugins cost 3 to 5 s per start on a 2-core
    machine. Returns None (use the install as it is) if the layout is not the expected one."""
    real_home = (bin_dir / "rabbitmq-server").resolve().parent.parent
    apps = {
        entry.name.rsplit("-", 1)[0]: entry
        for entry in (real_home / "plugins").glob("*-*")
        if (entry / "ebin").is_dir()
    }
    if "rabbit" not in apps or not (real_home / "sbin").is_dir():
        return None
    needed: set[str] = set()
    todo = ["rabbit"]
    while todo:
        app = todo.pop()
        if app in needed or app not in apps:  # not a plugin: an OTP application
            continue
        needed.add(app)
        text = (apps[app] / "ebin" / f"{app}.app").read_text(errors="replace")
        for listed in _APP_DEPS.findall(text):
            todo.extend(a.strip(" \n\t'") for a in listed.split(",") if a.strip())
    plugins = target / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    links = {target / "sbin": real_home / "sbin", target / "escript": real_home / "escript"}
    links.update({plugins / apps[app].name: apps[app] for app in needed})
    for link, dest in links.items():
        if not link.is_symlink():
            link.symlink_to(dest)
    return target


class RabbitMQNode(Managed):
    """A private RabbitMQ node: its own Erlang cookie, epmd, ports and data directory.

    `stop()`, `kill()` and `start()` again keep the ports, the node name and the data, so durable
    queues and persistent messages survive a restart, as on a real broker."""

    def __init__(
        self,
        base_dir: Path,
        name: str = "rmq",
        *,
        extra_config: Sequence[str] = (),
        startup_timeout: float = 60.0,
        bin_dir: Path = RABBITMQ_BIN,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.nodename = f"eg-{name}-{secrets.token_hex(3)}@localhost"
        self.startup_timeout = startup_timeout
        self._bin_dir = bin_dir
        self._extra_config = list(extra_config)
        self._port, self._dist_port, self._epmd_port = _free_ports(3)
        self._node: subprocess.Popen[bytes] | None = None
        self._epmd: subprocess.Popen[bytes] | None = None
        self._env: dict[str, str] | None = None  # built on the first start()
        self._server = bin_dir / "rabbitmq-server"
        self.log_dir = self.base_dir / "log"
        self.log_file = self.log_dir / f"{self.nodename}.log"
        self.console_file = self.base_dir / "console.out"
        self.pid_file = self.base_dir / "rabbitmq.pid"

    host = LOOPBACK

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{LOOPBACK}:{self._port}/"

    @property
    def dist_port(self) -> int:
        """The Erlang distribution port (rabbitmqctl talks to the node through it)."""
        return self._dist_port

    @property
    def epmd_port(self) -> int:
        return self._epmd_port

    @property
    def pid(self) -> int | None:
        """The pid of the node's Erlang VM (beam.smp) while it runs."""
        return self._beam_pid() if self.is_running else None

    @property
    def is_running(self) -> bool:
        return self._node is not None and self._node.poll() is None

    def start(self) -> None:
        """Start the node and return once it accepts AMQP connections."""
        if self.is_running:
            raise BrokerError(f"{self.nodename} is already running")
        env = self._prepare()
        self._start_epmd()
        self.pid_file.unlink(missing_ok=True)
        deadline = time.monotonic() + self.startup_timeout
        self._node = _spawn([self._server], self.console_file, env, cwd=self.base_dir)
        try:
            # The pid file appears once the node is registered with epmd; from then on
            # `await_startup` waits for the boot to finish (before, it fails at once).
            while not self.pid_file.exists():
                if self._node.poll() is not None:
                    raise BrokerError(f"{self.nodename} exited during startup")
                if time.monotonic() > deadline:
                    raise BrokerError(f"{self.nodename} did not start in {self.startup_timeout} s")
                time.sleep(0.05)
            remaining = max(1, int(deadline - time.monotonic()))
            self.ctl("await_startup", "--timeout", str(remaining), timeout=remaining + 15)
        except BaseException as exc:
            self._kill_node()
            if isinstance(exc, BrokerError):
                raise BrokerError(f"{exc}\n{self.log_tail()}") from None
            raise

    def stop(self, timeout: float = 60.0) -> None:
        """Graceful shutdown (SIGTERM: RabbitMQ stops its listeners, queues and message stores
        as with `rabbitmqctl shutdown`, without the 2 s the CLI takes to boot)."""
        node = self._node
        if node is None:
            return
        if node.poll() is not None:  # it crashed or was killed behind our back
            self._kill_node()
            return
        _signal_pid(self._beam_pid() or node.pid, signal.SIGTERM)
        try:
            node.wait(timeout)
        except subprocess.TimeoutExpired:
            self._kill_node()
            raise BrokerError(
                f"{self.nodename} did not stop in {timeout} s\n{self.log_tail()}"
            ) from None
        self._node = None  # the launcher script has reaped the VM

    def kill(self) -> None:
        """Crash the node: SIGKILL its beam.smp, as a power cut or the OOM killer would."""
        self._kill_node()

    def restart(self) -> None:
        """Stop gracefully (if running), then start on the same ports with the same data."""
        self.stop()
        self.start()

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run `rabbitmqctl ARGS` against this node and return its output, e.g.
        `ctl("set_vm_memory_high_watermark", "0")` to raise a memory alarm."""
        env = dict(self._prepare())
        env.pop("RABBITMQ_SCRIPTS_DIR", None)  # the full CLI, with every plugin's commands
        cmd = [str(self._bin_dir / "rabbitmqctl"), "--quiet", *args]
        try:
            done = subprocess.run(
                cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise BrokerError(f"rabbitmqctl {' '.join(args)}: timed out after {timeout} s") from exc
        if done.returncode != 0:
            raise BrokerError(
                f"rabbitmqctl {' '.join(args)} exited with {done.returncode}:\n"
                f"{done.stdout}{done.stderr}".rstrip()
            )
        return done.stdout

    def close(self) -> None:
        """Stop the node (a kill if a graceful stop fails) and its epmd. Idempotent."""
        try:
            self.stop()
        except BrokerError:
            pass  # stop() has killed it
        finally:
            self._kill_node()
            stop_process(self._epmd, timeout=5.0)
            self._epmd = None

    def log_tail(self, lines: int = 40) -> str:
        parts = [
            f"--- {path} ---\n{_tail(path, lines)}" for path in (self.log_file, self.console_file)
        ]
        return "\n".join(parts)

    def __repr__(self) -> str:
        return f"RabbitMQNode({self.nodename!r}, port={self._port})"

    # ---- internals

    def _prepare(self) -> dict[str, str]:
        """Write the node's files (once) and return its environment."""
        if self._env is not None:
            return self._env
        if not (self._bin_dir / "rabbitmq-server").exists():
            raise BrokerError(
                f"no {self._bin_dir}/rabbitmq-server: is rabbitmq-server installed? "
                "(scripts/bootstrap.sh installs it)"
            )
        base = self.base_dir
        home = base / "home"
        for d in (home, base / "mnesia", self.log_dir, base / "conf.d"):
            d.mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(16).upper())
            cookie.chmod(0o400)
        config = [
            f"listeners.tcp.default = {LOOPBACK}:{self._port}",
            "loopback_users = none",
            "log.file.level = info",
            *self._extra_config,
        ]
        (base / "rabbitmq.conf").write_text("\n".join(config) + "\n")
        (base / "enabled_plugins").write_text("[].\n")  # no management plugin, no HTTP port
        (base / "rabbitmq-env.conf").write_text("")
        slim = _slim_rabbitmq_home(self._bin_dir, base / "rabbitmq-home")
        self._server = (slim / "sbin" if slim else self._bin_dir) / "rabbitmq-server"
        dist_on_loopback = "-kernel inet_dist_use_interface {127,0,0,1}"
        self._env = _clean_env() | {
            "HOME": str(home),
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": LOOPBACK,
            "RABBITMQ_NODE_PORT": str(self._port),
            "RABBITMQ_DIST_PORT": str(self._dist_port),
            "ERL_EPMD_ADDRESS": LOOPBACK,
            "ERL_EPMD_PORT": str(self._epmd_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.log_dir),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),  # without ".conf"
            "RABBITMQ_CONFIG_FILES": str(base / "conf.d" / "*.conf"),  # not /etc/rabbitmq/conf.d
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),  # absent
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            # Erlang distribution (node and CLI) on loopback only, not 0.0.0.0.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": dist_on_loopback,
            "RABBITMQ_CTL_ERL_ARGS": dist_on_loopback,
            "ERL_CRASH_DUMP": str(self.log_dir / "erl_crash.dump"),  # not in the caller's cwd
        }
        if slim is not None:
            self._env["RABBITMQ_SCRIPTS_DIR"] = str(slim / "sbin")
        return self._env

    def _start_epmd(self) -> None:
        """Run our own epmd (a child we can stop), before the node starts one as a daemon."""
        if self._epmd is not None and self._epmd.poll() is None:
            return
        epmd = shutil.which("epmd") or "epmd"
        args = [epmd, "-address", LOOPBACK, "-port", str(self._epmd_port)]
        self._epmd = _spawn(args, self.base_dir / "epmd.out", _clean_env())
        deadline = time.monotonic() + 10
        while not _port_open(self._epmd_port):
            if self._epmd.poll() is not None or time.monotonic() > deadline:
                stop_process(self._epmd, timeout=1.0)
                self._epmd = None
                out = _tail(self.base_dir / "epmd.out", 10)
                raise BrokerError(f"epmd did not start on port {self._epmd_port}:\n{out}")
            time.sleep(0.02)

    def _beam_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def _kill_node(self) -> None:
        node = self._node
        if node is None:
            return
        beam = self._beam_pid()
        if beam is not None and node.poll() is None:
            _signal_pid(beam, signal.SIGKILL)
            try:
                node.wait(5.0)  # the launcher script reaps the VM, then exits
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left of the node's process group: the launcher script and, if the node died
        # before writing its pid file, the VM itself (`_spawn` made the launcher a group leader).
        try:
            os.killpg(node.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        node.wait()
        self._node = None


# --------------------------------------------------------------------------------------------
# Mosquitto


def _can_traverse(path: Path, user: pwd.struct_passwd) -> bool:
    """Whether `user` may reach entries inside `path` (search permission on it and its parents)."""
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    for p in (path, *path.parents):
        st = p.stat()
        if st.st_uid == user.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


class MosquittoBroker(Managed):
    """A private Mosquitto broker with persistence in its own directory.

    Started as root, mosquitto drops to the `mosquitto` user: its data and log directories are
    handed to that user when it can reach them, otherwise (e.g. under pytest's 0700 temporary
    directories) the broker is told to stay root with `user root`."""

    host = LOOPBACK

    def __init__(
        self,
        base_dir: Path,
        extra_config: Sequence[str] = (),
        *,
        startup_timeout: float = 10.0,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.startup_timeout = startup_timeout
        self._extra_config = list(extra_config)
        self._port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self.data_dir = self.base_dir / "data"
        self.log_file = self.base_dir / "log" / "mosquitto.log"
        self.config_file = self.base_dir / "mosquitto.conf"
        self.console_file = self.base_dir / "console.out"

    @property
    def port(self) -> int:
        return self._port

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start mosquitto and return once its port accepts connections."""
        if self.is_running:
            raise BrokerError(f"mosquitto on port {self._port} is already running")
        self._write_config()
        exe = shutil.which(MOSQUITTO) or shutil.which(MOSQUITTO, path="/usr/sbin:/usr/local/sbin")
        if exe is None:
            raise BrokerError("mosquitto is not installed (scripts/bootstrap.sh installs it)")
        proc = self._proc = _spawn([exe, "-c", self.config_file], self.console_file)
        deadline = time.monotonic() + self.startup_timeout
        while not _port_open(self._port):
            if proc.poll() is not None:
                raise BrokerError(
                    f"mosquitto exited with {proc.returncode} during startup\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise BrokerError(
                    f"mosquitto did not start in {self.startup_timeout} s\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: mosquitto saves its persistence file and exits."""
        stop_process(self._proc, timeout)

    def kill(self) -> None:
        """SIGKILL: whatever was queued since the last autosave is lost."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def restart(self) -> None:
        """Stop gracefully (if running), then start on the same port with the same data."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the broker (killing it if needed). Idempotent."""
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        parts = [f"--- {p} ---\n{_tail(p, lines)}" for p in (self.log_file, self.console_file)]
        return "\n".join(parts)

    def __repr__(self) -> str:
        return f"MosquittoBroker(port={self._port})"

    def _write_config(self) -> None:
        for d in (self.data_dir, self.log_file.parent):
            d.mkdir(parents=True, exist_ok=True)
        privileges: list[str] = []
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("mosquitto")
            except KeyError:
                user = None
            if user is not None and _can_traverse(self.base_dir, user):
                for d in (self.data_dir, self.log_file.parent):
                    os.chown(d, user.pw_uid, user.pw_gid)
            else:
                privileges = ["user root"]
        config = [
            f"listener {self._port} {LOOPBACK}",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.data_dir}/",
            f"log_dest file {self.log_file}",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            *privileges,
            *self._extra_config,
        ]
        self.config_file.write_text("\n".join(config) + "\n")
