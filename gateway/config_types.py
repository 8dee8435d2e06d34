"""Building blocks shared by the gateway's and the drivers' configuration models."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo


class StrictModel(BaseModel):
    """Rejects unknown keys (a typo must not silently fall back to a default) and is immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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
    return _resolve_file(path, info)


def _readable(path: Path) -> Path:
    try:
        path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}; create it or fix the path") from None
    return path


Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
"""A name that ends up in every message (gateway id, site, a driver's name as `source`): the
characters the message schema allows, safe in routing keys and file names alike."""

ConfigFile = Annotated[Path, AfterValidator(_resolve_file)]
"""A file the gateway reads (a CA certificate); checked readable at load time."""

SecretFile = Annotated[Path, AfterValidator(_resolve_secret_file)]
"""A file holding one secret (a password, a key); checked readable at load time."""


def read_secret(path: Path) -> str:
    """The secret in a file, without the trailing newline editors add."""
    return path.read_text(encoding="utf-8").rstrip("\r\n")


Seconds = Annotated[float, Field(gt=0, le=86_400)]


class TlsConfig(StrictModel):
    """TLS towards a broker. Without `ca_file` the system's trust store is used."""

    ca_file: ConfigFile | None = None
    cert_file: ConfigFile | None = None
    key_file: SecretFile | None = None
    verify: bool = True
