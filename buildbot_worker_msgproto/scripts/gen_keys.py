"""``gen-keys``: a private CA, TLS certificates, ZeroMQ CURVE and SSH keys for a small
installation.

Everything is made with the ``cryptography`` library (EC P-256, SHA-256 signatures) and
pyzmq's ``zmq.curve_keypair()``; no ``openssl`` command is run.  The layout of the output
directory is described in ``docs/security/gen-keys.rst`` and in :data:`LAYOUT_HELP`.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import secrets
from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.oid import NameOID
from twisted.python import usage

from buildbot_worker_msgproto.security.certificates import worker_uri

DEFAULT_DAYS = 825
DEFAULT_MASTER_HOSTS = ("localhost", "127.0.0.1")

#: Buildbot's identifier rule (``buildbot.util.identifiers.ident_re``); also a safe file name.
_WORKER_NAME_RE = re.compile("^[a-zA-Z\u00a0-\U0010ffff_-][a-zA-Z0-9\u00a0-\U0010ffff_-]*$")
_MAX_WORKER_NAME = 64  # ub-common-name: the CN cannot be longer
_DNS_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_CLOCK_SKEW = datetime.timedelta(minutes=5)

Host = Union[str, ipaddress.IPv4Address, ipaddress.IPv6Address]


class GenKeysError(Exception):
    """The material cannot be written (existing files, bad input)."""


# -- names -------------------------------------------------------------------------------------


def check_worker_name(name: str) -> str:
    """Return ``name`` if it is a Buildbot identifier usable as CN and file name."""
    if not _WORKER_NAME_RE.match(name) or len(name) > _MAX_WORKER_NAME:
        raise GenKeysError(
            f"invalid worker name {name!r}: letters, digits, '_' and '-' only, not starting "
            f"with a digit, at most {_MAX_WORKER_NAME} characters")
    return name


def parse_master_host(value: str) -> Host:
    """An IP address, or a DNS name (IDNA names converted to their ASCII form)."""
    value = value.strip()
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        pass
    try:
        ascii_name = value.rstrip(".").encode("idna").decode("ascii")
    except UnicodeError:
        raise GenKeysError(f"invalid master host {value!r}")
    labels = ascii_name.split(".")
    if len(ascii_name) > 253 or not all(_DNS_LABEL_RE.match(label) for label in labels):
        raise GenKeysError(f"invalid master host {value!r}: not an IP address or DNS name")
    return ascii_name.lower()


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, ``AB:CD:...`` as ``openssl x509 -fingerprint`` prints."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


# -- layout ------------------------------------------------------------------------------------


@dataclass
class Layout:
    """Paths of every file ``gen-keys`` writes under ``outdir``."""

    outdir: str
    workers: Sequence[str] = ()

    def path(self, *parts: str) -> str:
        return os.path.join(self.outdir, *parts)

    @property
    def ca_cert(self) -> str:
        return self.path("ca", "ca-cert.pem")

    @property
    def ca_key(self) -> str:
        return self.path("ca-key.pem")

    @property
    def master_cert(self) -> str:
        return self.path("master-cert.pem")

    @property
    def master_key(self) -> str:
        return self.path("master-key.pem")

    @property
    def master_fingerprint(self) -> str:
        return self.path("master-cert.sha256")

    def worker_cert(self, name: str) -> str:
        return self.path(f"worker-{name}-cert.pem")

    def worker_key(self, name: str) -> str:
        return self.path(f"worker-{name}-key.pem")

    @property
    def curve_master_public(self) -> str:
        return self.path("curve", "master.key")

    @property
    def curve_master_secret(self) -> str:
        return self.path("curve", "master.key_secret")

    def curve_worker_public(self, name: str) -> str:
        return self.path("curve", "workers", f"{name}.key")

    def curve_worker_secret(self, name: str) -> str:
        return self.path("curve", f"worker-{name}.key_secret")

    def ssh_worker_key(self, name: str) -> str:
        """The worker's SSH private key (OpenSSH format) for ``--ssh-key``; ``.pub`` next
        to it goes into authorized_keys on the SSH server."""
        return self.path("ssh", f"worker-{name}")

    def all_files(self) -> list[str]:
        files = [self.ca_cert, self.ca_key, self.master_cert, self.master_key,
                 self.master_fingerprint, self.curve_master_public, self.curve_master_secret]
        for name in self.workers:
            files += [self.worker_cert(name), self.worker_key(name),
                      self.curve_worker_public(name), self.curve_worker_secret(name),
                      self.ssh_worker_key(name), self.ssh_worker_key(name) + ".pub"]
        return files


# -- writing -----------------------------------------------------------------------------------


def _write(path: str, data: bytes, *, private: bool, force: bool) -> None:
    """Create ``path`` with mode 0600 (``private``) or 0644; never follow an existing file."""
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    if force and os.path.lexists(path):
        os.unlink(path)  # a fresh inode: an old file's looser mode or owner is not kept
    mode = 0o600 if private else 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # exactly this mode whatever the umask
        os.write(fd, data)
    finally:
        os.close(fd)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _curve_file(public: bytes, secret: bytes | None, now: datetime.datetime) -> bytes:
    """The ZeroMQ certificate format of ``zmq.auth.create_certificates`` (ZPL text)."""
    kind = "**Secret**" if secret else "Public"
    lines = [f"#   ****  Generated on {now:%Y-%m-%d %H:%M:%S} by buildbot-msgproto  ****",
             f"#   ZeroMQ CURVE {kind} Certificate",
             ("#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions."
              if secret else "#   The public key only: safe to copy to the peer."),
             "", "metadata", "curve", f'    public-key = "{public.decode("ascii")}"']
    if secret:
        lines.append(f'    secret-key = "{secret.decode("ascii")}"')
    return ("\n".join(lines) + "\n").encode("ascii")


# -- certificates ------------------------------------------------------------------------------


def _ssh_key_pair(comment: str) -> tuple[bytes, bytes]:
    """A new ed25519 SSH key: the private key (OpenSSH format, no passphrase) and the
    ``authorized_keys`` line."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    return private, public + b" " + comment.encode("utf-8") + b"\n"


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _builder(subject: x509.Name, issuer: x509.Name, public_key: Any,
             not_before: datetime.datetime, days: int) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before - _CLOCK_SKEW)
            .not_valid_after(not_before + datetime.timedelta(days=days))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False)


def _make_ca(now: datetime.datetime, days: int) -> tuple[ec.EllipticCurvePrivateKey,
                                                         x509.Certificate]:
    key = _new_key()
    # A random suffix: two installations' CAs never share a subject name.
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "buildbot-msgproto"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"buildbot-msgproto CA {secrets.token_hex(4)}"),
    ])
    cert = (_builder(name, name, key.public_key(), now, days)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _make_leaf(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, cn: str,
               san: list[x509.GeneralName], usage_oid: x509.ObjectIdentifier,
               now: datetime.datetime, days: int) -> tuple[ec.EllipticCurvePrivateKey,
                                                          x509.Certificate]:
    key = _new_key()
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "buildbot-msgproto"),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (_builder(subject, ca_cert.subject, key.public_key(), now, days)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage_oid]), critical=False)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def _host_name(host: Host) -> x509.GeneralName:
    if isinstance(host, str):
        return x509.DNSName(host)
    return x509.IPAddress(host)


@dataclass
class Result:
    layout: Layout
    master_fingerprint: str
    written: list[str] = field(default_factory=list)


def generate(outdir: str, master_hosts: Iterable[str] = DEFAULT_MASTER_HOSTS,
             workers: Iterable[str] = (), days: int = DEFAULT_DAYS,
             force: bool = False) -> Result:
    """Write the CA, the master's and workers' certificates and CURVE keys under ``outdir``.

    Nothing is written if any target file exists, unless ``force``.
    """
    try:
        import zmq  # an optional dependency: the zmq extra
    except ImportError:
        raise GenKeysError("the CURVE keys need pyzmq: pip install 'buildbot-msgproto[zmq]'")

    if days < 1:
        raise GenKeysError("--days must be at least 1")
    hosts = [parse_master_host(h) for h in master_hosts]
    if not hosts:
        raise GenKeysError("at least one master host is needed")
    hosts = list(dict.fromkeys(hosts))
    names = [check_worker_name(n) for n in workers]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise GenKeysError(f"worker named more than once: {', '.join(duplicates)}")
    layout = Layout(outdir, names)
    existing = [p for p in layout.all_files() if os.path.lexists(p)]
    if existing and not force:
        raise GenKeysError("refusing to overwrite existing files (use --force):\n  "
                           + "\n  ".join(existing))

    if not os.path.isdir(outdir):
        os.makedirs(outdir, mode=0o700)
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    result = Result(layout, "")

    def write(path: str, data: bytes, private: bool = False) -> None:
        _write(path, data, private=private, force=force)
        result.written.append(path)

    ca_key, ca_cert = _make_ca(now, days)
    write(layout.ca_key, _key_pem(ca_key), private=True)
    write(layout.ca_cert, _cert_pem(ca_cert))

    first = str(hosts[0])
    master_cn = first if len(first) <= 64 else "buildbot-msgproto master"
    master_key, master_cert = _make_leaf(
        ca_key, ca_cert, master_cn, [_host_name(h) for h in hosts],
        ExtendedKeyUsageOID.SERVER_AUTH, now, days)
    write(layout.master_key, _key_pem(master_key), private=True)
    write(layout.master_cert, _cert_pem(master_cert))
    result.master_fingerprint = fingerprint(master_cert)
    write(layout.master_fingerprint, (result.master_fingerprint + "\n").encode("ascii"))

    public, secret = zmq.curve_keypair()
    write(layout.curve_master_public, _curve_file(public, None, now))
    write(layout.curve_master_secret, _curve_file(public, secret, now), private=True)

    for name in names:
        key, cert = _make_leaf(ca_key, ca_cert, name,
                               [x509.UniformResourceIdentifier(worker_uri(name))],
                               ExtendedKeyUsageOID.CLIENT_AUTH, now, days)
        write(layout.worker_key(name), _key_pem(key), private=True)
        write(layout.worker_cert(name), _cert_pem(cert))
        public, secret = zmq.curve_keypair()
        write(layout.curve_worker_public(name), _curve_file(public, None, now))
        write(layout.curve_worker_secret(name), _curve_file(public, secret, now), private=True)
        ssh_private, ssh_public = _ssh_key_pair(f"buildbot worker {name}")
        write(layout.ssh_worker_key(name), ssh_private, private=True)
        write(layout.ssh_worker_key(name) + ".pub", ssh_public)
    return result


# -- command line ------------------------------------------------------------------------------


class GenKeysOptions(usage.Options):
    """``gen-keys``: options for :func:`genKeys`."""

    subcommandFunction = "buildbot_worker_msgproto.scripts.gen_keys.genKeys"
    optFlags = [
        ["force", "f", "Overwrite existing files"],
        ["quiet", "q", "Print only the master certificate's fingerprint"],
    ]
    optParameters = [
        ["days", None, DEFAULT_DAYS, "Validity of every certificate, in days", int],
    ]
    longdesc = ("Write a private CA, a TLS server certificate for the master, a TLS client "
                "certificate, a ZeroMQ CURVE and an SSH key pair per worker into OUTDIR, and "
                "print the SHA-256 fingerprint of the master certificate. "
                "See docs/security/gen-keys.rst.")

    def __init__(self) -> None:
        super().__init__()
        self["master-hosts"] = []
        self["workers"] = []

    def opt_master_host(self, value: str) -> None:
        """Master DNS name or IP address for its certificate (repeatable; default: localhost and 127.0.0.1)"""  # noqa: E501
        self["master-hosts"].append(value)

    def opt_worker(self, value: str) -> None:
        """Worker name: a client certificate, a CURVE and an SSH key pair (repeatable)"""
        self["workers"].append(value)

    def getSynopsis(self) -> str:  # noqa: N802
        return ("Usage:    buildbot-worker-msgproto gen-keys [--master-host HOST]... "
                "[--worker NAME]... [--days N] [--force] <outdir>")

    def parseArgs(self, outdir: str) -> None:  # noqa: N802
        self["outdir"] = outdir

    def postOptions(self) -> None:  # noqa: N802
        if self["days"] < 1:
            raise usage.UsageError("--days must be at least 1")
        if not self["master-hosts"]:
            self["master-hosts"] = list(DEFAULT_MASTER_HOSTS)
        try:
            for host in self["master-hosts"]:
                parse_master_host(host)
            for name in self["workers"]:
                check_worker_name(name)
        except GenKeysError as e:
            raise usage.UsageError(str(e))


def genKeys(config: Any) -> int:  # noqa: N802 - named like buildbot-worker's commands
    """Run ``gen-keys``; 0 on success, 1 (with a message) on failure."""
    try:
        result = generate(config["outdir"], config["master-hosts"], config["workers"],
                          days=config["days"], force=config["force"])
    except (GenKeysError, OSError) as e:
        print(f"gen-keys: {e}\nnothing written" if isinstance(e, GenKeysError)
              else f"gen-keys: {e}")
        return 1
    if config["quiet"]:
        print(result.master_fingerprint)
        return 0
    for path in result.written:
        print(f"  {'(0600) ' if _is_private(path) else '       '}{path}")
    print(f"master certificate SHA-256 fingerprint: {result.master_fingerprint}")
    print(f"  (also in {result.layout.master_fingerprint})")
    return 0


def _is_private(path: str) -> bool:
    return path.endswith(("-key.pem", ".key_secret")) or (
        os.path.basename(os.path.dirname(path)) == "ssh" and not path.endswith(".pub"))
