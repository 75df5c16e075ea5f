"""The certificates of an emulated etcd cluster: a CA podnet makes, and what it signs.

An emulated cluster has no operator to hand out certificates, so podnet is its authority.
Two CAs keep two trust domains apart: the *peer* CA signs only the members' peer
certificates (etcd trusts nothing else on its peer port, so a node agent's certificate can
never join the cluster as a member), and the *client* CA signs the members' server
certificates and every client certificate (one per node agent, one for podnet's own
commands), whose common name etcd takes for the user name.

Keys are ECDSA P-256 (generated in a millisecond, understood by etcd's Go TLS); private keys
are written 0600 in a directory the caller keeps 0700. Everything is idempotent: a
certificate that exists, was signed by the CA on disk and names what is asked for is kept;
anything else is issued anew, so a lost or changed file is repaired by the next start.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
LEAF_DAYS = 825  # the longest validity browsers accept, and more than an emulated cluster lives
RENEW_BEFORE = datetime.timedelta(days=30)


@dataclass(frozen=True)
class Pair:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Identity:
    """What a leaf certificate says: its common name, its names, and what it may be used for."""

    cn: str
    ips: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    server: bool = False
    client: bool = False


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load(pair: Pair) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    try:
        cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
        key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    except (OSError, ValueError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        return None
    return cert, key


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _fresh(cert: x509.Certificate) -> bool:
    return cert.not_valid_after_utc - RENEW_BEFORE > _now()


def ensure_ca(directory: Path, name: str, cn: str) -> Pair:
    """The CA ``name`` in ``directory`` (``NAME.crt``/``NAME.key``), made if missing or expiring."""
    pair = Pair(directory / f"{name}.crt", directory / f"{name}.key")
    loaded = _load(pair)
    if loaded is not None and _fresh(loaded[0]) and loaded[0].subject.rfc4514_string() == f"CN={cn}":
        return pair
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(pair.key, _key_pem(key))
    _write_public(pair.cert, cert.public_bytes(serialization.Encoding.PEM))
    return pair


def _names(identity: Identity) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in identity.dns]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in identity.ips]
    return names


def _matches(cert: x509.Certificate, ca_cert: x509.Certificate, identity: Identity) -> bool:
    if cert.issuer != ca_cert.subject or not _fresh(cert):
        return False
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    if cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value != identity.cn:
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        have = set(san)
    except x509.ExtensionNotFound:
        have = set()
    usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    return have == set(_names(identity)) and usages == set(_usages(identity))


def _usages(identity: Identity) -> list[x509.ObjectIdentifier]:
    return [
        u
        for u, wanted in (
            (ExtendedKeyUsageOID.SERVER_AUTH, identity.server),
            (ExtendedKeyUsageOID.CLIENT_AUTH, identity.client),
        )
        if wanted
    ]


def ensure_leaf(directory: Path, name: str, ca: Pair, identity: Identity) -> Pair:
    """A certificate ``NAME.crt``/``NAME.key`` for ``identity`` signed by ``ca`` (kept if it already is)."""
    ca_loaded = _load(ca)
    if ca_loaded is None:
        raise FileNotFoundError(f"no usable CA at {ca.cert}")
    ca_cert, ca_key = ca_loaded
    pair = Pair(directory / f"{name}.crt", directory / f"{name}.key")
    loaded = _load(pair)
    if loaded is not None and _matches(loaded[0], ca_cert, identity):
        return pair
    key = _new_key()
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity.cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
        )  # digitalSignature, keyAgreement (ECDHE)
        .add_extension(x509.ExtendedKeyUsage(_usages(identity)), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if identity.ips or identity.dns:
        builder = builder.add_extension(x509.SubjectAlternativeName(_names(identity)), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_private(pair.key, _key_pem(key))
    _write_public(pair.cert, cert.public_bytes(serialization.Encoding.PEM))
    return pair


def common_name(cert: Path) -> str:
    """The common name a certificate file carries (what etcd takes for the user name)."""
    loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    return str(loaded.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def subject_alt_ips(cert: Path) -> Sequence[str]:
    loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    san = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
