"""Test certificates: a CA made on the spot (``cryptography``), a server certificate for
127.0.0.1 and localhost, client certificates, and a stranger CA."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass


@dataclass
class Pem:
    key: str
    cert: str


def _pem(key, cert) -> Pem:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization

    return Pem(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
        cert.public_bytes(serialization.Encoding.PEM).decode(),
    )


def make_ca(name: str):  # type: ignore[no-untyped-def]
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue(ca, name: str, server: bool) -> Pem:  # type: ignore[no-untyped-def]
    """A certificate for ``name`` signed by ``ca``: a server's for 127.0.0.1 and localhost, or a
    client's."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return _pem(key, builder.sign(ca_key, hashes.SHA256()))


@dataclass
class Pki:
    ca: str
    server: Pem
    client: Pem
    stranger_ca: str
    stranger: Pem
    """A client certificate of another CA, and that CA."""


def make_pki() -> Pki:
    """A CA with a server certificate (127.0.0.1, localhost) and a client's, and a stranger CA
    with a client of its own."""
    from cryptography.hazmat.primitives import serialization

    ca, other = make_ca("rtfs-test-ca"), make_ca("stranger-ca")
    return Pki(
        ca=ca[1].public_bytes(serialization.Encoding.PEM).decode(),
        server=issue(ca, "localhost", server=True),
        client=issue(ca, "client", server=False),
        stranger_ca=other[1].public_bytes(serialization.Encoding.PEM).decode(),
        stranger=issue(other, "stranger", server=False),
    )
