"""Building blocks shared by the gateway's and the drivers' configuration models."""

from __future__ import annotations

import errno
import os
import ssl
from pathlib import Path
from typing import Annotated, NamedTuple

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    model_validator,
)

from gateway.errors import ConfigError


class StrictModel(BaseModel):
    """Rejects unknown keys (a typo must not silently fall back to a default) and is immutable.

    Its validator is built when first used, not when the class is defined: a model is
    validated as part of the whole configuration (`gateway.config.load_config`), whose
    validator holds its own copy of each part; one built per class as well would be ~1 MB
    of the gateway's memory for nothing.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class Claim(NamedTuple):
    """Something a driver must have to itself (an adapter, a port, an MQTT session): `check`
    refuses a second driver claiming it, rather than let the two fail each other at run time."""

    key: str
    """The key that names it, where the error points."""
    what: str
    advice: str


def _resolve_file(path: Path, info: ValidationInfo) -> Path:
    """Relative paths are relative to the config file; the file must be readable now
    (unless the caller only reads the configuration, as `edge-gateway status` does)."""
    context = info.context or {}
    if not path.is_absolute():
        path = Path(context.get("base_dir", ".")) / path
    return _readable(path) if context.get("check_files", True) else path


def _resolve_secret_file(path: Path, info: ValidationInfo) -> Path:
    """Like `_resolve_file`, but relative paths are first looked up in systemd's
    credentials directory, where `LoadCredential=` puts secrets."""
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if not path.is_absolute() and credentials and (Path(credentials) / path).exists():
        return _resolve_file(Path(credentials) / path, info)
    try:
        return _resolve_file(path, info)
    except ValueError as exc:
        if path.is_absolute() or credentials:
            raise
        raise ValueError(
            f"{exc}. A relative secret is looked for in $CREDENTIALS_DIRECTORY first, which the "
            "unit sets (LoadCredential=): check as it runs, with "
            "CREDENTIALS_DIRECTORY=/etc/edge-gateway/credentials"
        ) from None


def _resolve_password_file(path: Path, info: ValidationInfo) -> Path:
    """Like `_resolve_secret_file`, and the file must hold a password: UTF-8 text, not empty
    (aiormq would quietly log in as "guest" with an empty one)."""
    path = _resolve_secret_file(path, info)
    if (info.context or {}).get("check_files", True):
        try:
            password = read_secret(path)
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"{path} is not UTF-8 text (byte {exc.start}); save the password as UTF-8"
            ) from None
        if not password:
            raise ValueError(f"{path} is empty; write the password into it")
        if "\n" in password:
            raise ValueError(f"{path} holds more than one line; write only the password")
    return path


def _readable(path: Path) -> Path:
    try:
        path.read_bytes()
    except OSError as exc:
        if exc.errno == errno.EACCES:
            todo = f"make it readable by the user that runs the gateway (uid {os.geteuid()} here)"
        elif exc.errno == errno.EISDIR:
            todo = "name the file in it, not the directory"
        else:
            todo = "create it or fix the path"
        raise ValueError(f"cannot read {path}: {exc.strerror}; {todo}") from None
    return path


Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
"""A name that ends up in every message (gateway id, site, a driver's name as `source`): the
characters the message schema allows, safe in routing keys and file names alike."""

ConfigFile = Annotated[Path, AfterValidator(_resolve_file)]
"""A file the gateway reads (a CA certificate); checked readable at load time."""

SecretFile = Annotated[Path, AfterValidator(_resolve_secret_file)]
"""A file holding a secret (a TLS key); checked readable at load time."""

PasswordFile = Annotated[Path, AfterValidator(_resolve_password_file)]
"""A file holding one password; checked at load time, so that `check` finds what a start would."""


def read_secret(path: Path) -> str:
    """The secret in a file, without the trailing newline editors add, nor a byte order mark."""
    return path.read_text(encoding="utf-8-sig").rstrip("\r\n")


Seconds = Annotated[float, Field(gt=0, le=86_400)]


def number_from_text(value: object) -> object:
    """`"1"` as 1: what `${ENV}` gives is text, and a choice of numbers (`Literal[0, 1]`)
    does not convert it as plain number fields do."""
    if isinstance(value, str) and value.strip().isdecimal():
        return int(value)
    return value


def _host(host: str) -> str:
    if not host.strip():
        raise ValueError("give a host name or address, e.g. 127.0.0.1")
    if "/" in host or " " in host or (host.count(":") == 1):  # IPv6 has two colons or more
        raise ValueError(
            f"{host!r} is not a host name or address: write the host alone (192.168.1.10, "
            "broker.lan); a port goes in `port`"
        )
    return host


Host = Annotated[str, AfterValidator(_host)]


def _tls_section(value: object) -> object:
    if value is None:  # `tls:` with its keys commented out: TLS wanted, but null means off
        raise ValueError(
            "is empty: write tls: {} for TLS with the system's trust store, or remove the "
            "line for no TLS"
        )
    return value


class TlsConfig(StrictModel):
    """TLS towards a broker. Without `ca_file` the system's trust store is used."""

    ca_file: ConfigFile | None = None
    cert_file: ConfigFile | None = None
    key_file: SecretFile | None = None
    verify: bool = True

    @model_validator(mode="after")
    def _loadable(self, info: ValidationInfo) -> TlsConfig:
        """Files that OpenSSL cannot load fail here, when `check` runs, not at the first
        connect of a started gateway."""
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file needs cert_file, the certificate it belongs to")
        files = (self.ca_file, self.cert_file, self.key_file)
        if (info.context or {}).get("check_files", True) and any(files):
            try:
                self.client_context()
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return self

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context; a client certificate when one is configured."""
        asked: list[bool] = []

        def no_passphrase() -> bytes:  # else OpenSSL asks for one on the terminal, or hangs
            asked.append(True)
            return b""

        try:
            context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
            if self.cert_file is not None:
                key = str(self.key_file) if self.key_file else None
                context.load_cert_chain(str(self.cert_file), key, password=no_passphrase)
        except (OSError, ssl.SSLError) as exc:
            if asked:
                raise ConfigError(
                    "the TLS key is encrypted with a passphrase, which a service cannot type; "
                    "store it unencrypted, readable by the service only (openssl pkey -in KEY "
                    "-out PLAIN), as tls.key_file"
                ) from None
            raise ConfigError(
                f"TLS files cannot be loaded ({exc}); check tls.ca_file, tls.cert_file and "
                "tls.key_file"
            ) from None
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


OptionalTls = Annotated[TlsConfig | None, BeforeValidator(_tls_section)]
"""A `tls` key: absent is no TLS; present, even without settings, is TLS."""
