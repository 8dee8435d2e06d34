"""TLS client contexts for broker connections (AMQP and MQTT alike)."""

from __future__ import annotations

import ssl

from gateway.config_types import TlsConfig
from gateway.errors import ConfigError


def client_ssl_context(tls: TlsConfig | None) -> ssl.SSLContext:
    """A verifying client context; a client certificate when one is configured."""
    tls = tls or TlsConfig()
    try:
        context = ssl.create_default_context(
            cafile=str(tls.ca_file) if tls.ca_file else None,
        )
        if tls.cert_file is not None:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"TLS files cannot be loaded ({exc}); check tls.ca_file, tls.cert_file and tls.key_file"
        ) from None
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
