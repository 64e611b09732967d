"""
Make throwaway certificate authorities and server certificates for tests.

Everything is generated in memory with ``cryptography`` (no ``openssl``
subprocess) and written as PEM for Python and PostgreSQL, or as PKCS12 key
and trust stores for Java (Apache Kafka).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Issued a little in the past, so a clock a few seconds behind still accepts them.
_BACKDATE = dt.timedelta(minutes=5)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _subject_alternative_names(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _write_private(path: Path, data: bytes) -> Path:
    # Created 0600 from the start: a key is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    path.chmod(0o600)
    return path


@dataclass(frozen=True, slots=True)
class Issued:
    """
    Hold a server's private key, its certificate and the authority that signed it.
    """

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    authority: x509.Certificate

    def write_pem(self, certificate_path: Path, key_path: Path) -> tuple[Path, Path]:
        """
        Write the certificate (then the authority's) and the unencrypted key (mode 0600).
        """
        chain = [self.certificate, self.authority]
        certificate_path.write_bytes(
            b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
        )
        key = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return certificate_path, _write_private(key_path, key)

    def write_keystore(self, path: Path, password: str, alias: str = "server") -> Path:
        """
        Write a PKCS12 key store (key, certificate and chain) that Java reads.
        """
        data = pkcs12.serialize_key_and_certificates(
            alias.encode(),
            self.key,
            self.certificate,
            [self.authority],
            serialization.BestAvailableEncryption(password.encode()),
        )
        return _write_private(path, data)


@dataclass(frozen=True, slots=True)
class Authority:
    """
    Hold a self-signed certificate authority that issues server certificates.
    """

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def create(cls, common_name: str, *, valid_days: int = 2) -> Authority:
        """
        Make a new authority with a fresh P-256 key, valid from a few minutes ago.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        public = key.public_key()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + dt.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
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
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, certificate)

    def issue(self, hosts: Sequence[str], *, valid_days: int = 2) -> Issued:
        """
        Issue a server certificate for ``hosts`` (DNS names or IP addresses).
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        public = key.public_key()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(hosts[0]))
            .issuer_name(self.certificate.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + dt.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(_subject_alternative_names(hosts), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return Issued(key, certificate, self.certificate)

    def write_pem(self, path: Path) -> Path:
        """
        Write the authority's certificate, the file clients trust.
        """
        path.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))
        return path

    def write_truststore(self, path: Path, password: str, alias: str = "ca") -> Path:
        """
        Write a PKCS12 trust store holding this authority, as Java's ``keytool`` would.
        """
        data = pkcs12.serialize_java_truststore(
            [pkcs12.PKCS12Certificate(self.certificate, alias.encode())],
            serialization.BestAvailableEncryption(password.encode()),
        )
        path.write_bytes(data)
        return path
