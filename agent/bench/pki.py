"""Throw-away certificates for a local broker: a site CA with a broker certificate for
127.0.0.1, a stranger CA with its own, and an expired and a misnamed broker certificate;
and self-signed OPC UA application certificates.

The one certificate maker of the benchmarks and the tests (with `cryptography`, which the
OPC UA client needs anyway); deploy/make-certs.sh is the site's own, for real brokers.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    other_ca: Path
    other_server_cert: Path
    other_server_key: Path
    expired_cert: Path  # from the site CA, expired yesterday
    expired_key: Path
    misnamed_cert: Path  # from the site CA, for broker.example only (not 127.0.0.1)
    misnamed_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    *,
    names: tuple[x509.GeneralName, ...] = (
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ),
    shift: dt.timedelta = dt.timedelta(0),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC) + shift
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(list(names)),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def make_pki(directory: Path) -> Pki:
    """Write every certificate and key into `directory`; valid from five minutes ago."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for label in ("site", "other"):
        ca, ca_key = _ca(f"massgate test {label} CA")
        leaf, leaf_key = _leaf(ca, ca_key, "localhost")
        ca_path = directory / f"{label}-ca.pem"
        ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        cert_path = directory / f"{label}-broker.pem"
        cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        key_path = directory / f"{label}-broker.key"
        _write_key(leaf_key, key_path)
        paths[label] = (ca_path, cert_path, key_path)
        if label == "site":
            site_ca, site_key = ca, ca_key
    extra = []
    for label, leaf, leaf_key in (
        ("expired", *_leaf(site_ca, site_key, "localhost", shift=dt.timedelta(days=-2))),
        (
            "misnamed",
            *_leaf(site_ca, site_key, "broker.example", names=(x509.DNSName("broker.example"),)),
        ),
    ):
        cert_path = directory / f"{label}-broker.pem"
        cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        key_path = directory / f"{label}-broker.key"
        _write_key(leaf_key, key_path)
        extra += [cert_path, key_path]
    return Pki(*paths["site"], *paths["other"], *extra)


def make_ua_certificate(
    cert: Path, key: Path, *, uri: str, host: str, common_name: str, server: bool
) -> None:
    """A self-signed OPC UA application instance certificate (DER) and its key (PEM): RSA
    2048 with the application URI and host in subjectAltName and the key usages OPC UA
    asks for, as deploy/make-opcua-cert.sh makes a gateway's."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    made = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri), x509.DNSName(host)]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(private.public_key()), critical=False
        )
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(made.public_bytes(serialization.Encoding.DER))
    _write_key(private, key)
