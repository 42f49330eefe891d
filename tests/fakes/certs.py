"""Throwaway TLS certificates for loopback fakes that must speak ``wss://``.

discord.py builds the voice gateway URL itself (``wss://{endpoint}/?v=8``), so
the fake voice server has to serve TLS. :func:`make_cert` creates, at test
time, a small CA and a server certificate it signs for ``127.0.0.1`` and
``localhost`` (P-256 keys, valid for one day), and writes them as PEM files::

    cert = make_cert(tmp_path)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=cert.server_context())
    client = discord.Client(connector=aiohttp.TCPConnector(ssl=cert.client_context()))

or give the application ``FAMILIAR_EXTRA_CA_FILE=cert.ca_path``. Nothing here
is a secret: the keys live for one test run in a temporary directory.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["TlsCert", "make_cert"]

_VALID_FOR = datetime.timedelta(days=1)


@dataclass(frozen=True, slots=True)
class TlsCert:
    """PEM files of one throwaway CA and the server certificate it signed.

    Attributes:
        ca_path: the CA certificate, for a client's trust store.
        cert_path: the server certificate followed by the CA (the chain).
        key_path: the server's private key (unencrypted).
    """

    ca_path: Path
    cert_path: Path
    key_path: Path

    def server_context(self) -> ssl.SSLContext:
        """A server-side context presenting the certificate chain."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_path, self.key_path)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client-side context that trusts the throwaway CA (and the system's)."""
        context = ssl.create_default_context()
        context.load_verify_locations(cafile=str(self.ca_path))
        return context


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_cert(directory: Path, *, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> TlsCert:
    """Create a CA and a server certificate for ``hosts`` and write them into ``directory``.

    Args:
        directory: where ``ca.pem``, ``server.pem`` and ``server.key`` are written
            (created if missing).
        hosts: IP addresses and DNS names for the certificate's subjectAltName.

    Returns:
        the paths of the files written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("familiar-connect test CA")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + _VALID_FOR)
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
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + _VALID_FOR)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    ca_path = directory / "ca.pem"
    cert_path = directory / "server.pem"
    key_path = directory / "server.key"
    ca_path.write_bytes(ca_cert.public_bytes(pem))
    cert_path.write_bytes(cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    key_path.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return TlsCert(ca_path=ca_path, cert_path=cert_path, key_path=key_path)
