"""TLS to the broker: amqps:// with a private CA, a verified server and a client certificate."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from edge_gateway_sim.brokers import MosquittoBroker, RabbitMQNode, free_port


def _issue(
    name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None, ca: bool
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    certificate = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    return certificate, key


def _write(folder: Path, name: str, pair: tuple[x509.Certificate, Any]) -> tuple[Path, Path]:
    cert, key = pair
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_readings_arrive_over_amqps_with_a_client_certificate(
    make_site: Any, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    authority = _issue("edge-gateway test CA", None, ca=True)
    ca_file, _ = _write(pki, "ca", authority)
    server_cert, server_key = _write(pki, "server", _issue("localhost", authority, ca=False))
    client_cert, client_key = _write(pki, "client", _issue("gateway", authority, ca=False))
    tls_port = free_port()
    node = RabbitMQNode(
        tmp_path / "rabbitmq",
        "tls",
        extra_config=[
            f"listeners.ssl.default = 127.0.0.1:{tls_port}",
            f"ssl_options.cacertfile = {ca_file}",
            f"ssl_options.certfile = {server_cert}",
            f"ssl_options.keyfile = {server_key}",
            "ssl_options.verify = verify_peer",
            "ssl_options.fail_if_no_peer_cert = true",
        ],
    )
    with node:
        site = make_site(
            node,
            mosquitto,
            gateway_url=f"amqps://guest:guest@127.0.0.1:{tls_port}/",
            extra_amqp=(
                f"tls:\n  ca_file: {ca_file}\n  cert_file: {client_cert}\n  key_file: {client_key}"
            ),
        )
        async with site.collector() as collector:  # the consumer uses the plain listener
            site.gateway.start()
            sent = await asyncio.to_thread(site.fleet(sensors=2, rate=100).run, 100)
            await collector.wait_until(lambda got: got.unique >= 100, timeout=30)
        assert collector.received.invalid == []
        assert collector.received.missing(sent.last_seq) == {}
        assert f'"url": "amqps://guest:***@127.0.0.1:{tls_port}/"' in site.gateway.log.read_text()
        assert site.gateway.terminate() == 0
