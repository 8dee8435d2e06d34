"""Building blocks shared by the gateway's and the drivers' configuration models."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo


class StrictModel(BaseModel):
    """Rejects unknown keys (a typo must not silently fall back to a default) and is immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _resolve_secret_file(path: Path, info: ValidationInfo) -> Path:
    """Find a secret file: absolute as given; relative ones in systemd's credentials
    directory when the service runs with `LoadCredential=`, else beside the config file."""
    if not path.is_absolute():
        context = info.context or {}
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        if credentials and (Path(credentials) / path).exists():
            path = Path(credentials) / path
        else:
            path = Path(context.get("base_dir", ".")) / path
    try:
        path.read_bytes()
    except OSError as exc:
        raise ValueError(
            f"cannot read secret file {path}: {exc.strerror}; create it or fix the path"
        ) from None
    return path


SecretFile = Annotated[Path, AfterValidator(_resolve_secret_file)]
"""A path to a file holding one secret (a password, a key); checked readable at load time."""


def read_secret(path: Path) -> str:
    """The secret in a file, without the trailing newline editors add."""
    return path.read_text(encoding="utf-8").rstrip("\r\n")


Seconds = Annotated[float, Field(gt=0, le=86_400)]


class TlsConfig(StrictModel):
    """TLS towards a broker. Without `ca_file` the system's trust store is used."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: SecretFile | None = None
    verify: bool = True
