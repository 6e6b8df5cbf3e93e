"""Who the worker logs in as on which SSH server, with which keys, and how the server's
host key is checked (``known_hosts``): the settings of an SSH tunnel, checked at startup."""

from __future__ import annotations

import dataclasses
import getpass
import ipaddress
import os
import re

from twisted.conch.client.knownhosts import KnownHostsFile
from twisted.conch.ssh import keys
from twisted.python.filepath import FilePath

from buildbot_worker_msgproto.security.files import read_file

#: Private keys tried when none is given, as ssh(1) does.
DEFAULT_KEY_NAMES = ("id_ed25519", "id_ecdsa", "id_rsa")


def fingerprint(key: keys.Key) -> str:
    """The key's fingerprint as OpenSSH prints it (``SHA256:...``)."""
    return "SHA256:" + key.fingerprint(keys.FingerprintFormats.SHA256_BASE64).rstrip("=")


def known_hosts_name(host: str, port: int) -> str:
    """How OpenSSH names ``host:port`` in known_hosts: ``host``, or ``[host]:port``."""
    return host if port == 22 else f"[{host}]:{port}"


def parse_destination(value: str) -> tuple[str, str, int]:
    """``user@host[:port]`` (``[v6addr]:port`` for IPv6) as (user, host, port).

    The user defaults to the current login name, the port to 22.  Raises ValueError.
    """
    text = value.strip()
    user, at, hostport = text.rpartition("@")
    if at and not user:
        raise ValueError(f"SSH tunnel {value!r}: empty user name before '@'")
    user = user or getpass.getuser()
    match = (re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", hostport)
             or re.fullmatch(r"([^:\[\]\s]+)(?::(\d+))?", hostport))
    if match is None:
        try:  # a bare IPv6 address, port 22
            ipaddress.IPv6Address(hostport)
            match = re.fullmatch(r"(.+)()", hostport)
        except ValueError:
            raise ValueError(f"SSH tunnel {value!r} is not USER@HOST[:PORT] "
                             "(IPv6: USER@[ADDRESS]:PORT)") from None
    host, port_text = match.group(1), match.group(2)
    port = int(port_text) if port_text else 22
    if not 0 < port < 65536:
        raise ValueError(f"SSH tunnel {value!r}: port {port} out of range")
    return user, host, port


def load_private_key(path: str) -> keys.Key:
    """The private key in ``path`` (OpenSSH or PEM format, no passphrase)."""
    data = read_file(path, "SSH key")
    try:
        key = keys.Key.fromString(data)
    except keys.EncryptedKeyError:
        raise ValueError(f"the SSH key {path!r} is protected by a passphrase, which is not "
                         "supported: use a key without one for the worker") from None
    except (keys.BadKeyError, ValueError, TypeError) as e:
        raise ValueError(f"cannot load the SSH key {path!r}: {e or 'not a key'}") from None
    if key.isPublic():
        raise ValueError(f"{path!r} is a public key; --ssh-key needs the private key file")
    return key


def _home(*names: str) -> str:
    return os.path.join(os.path.expanduser("~"), ".ssh", *names)


@dataclasses.dataclass(frozen=True)
class SSHSettings:
    """Where the SSH server is, who logs in with which keys, and how its host key is checked."""

    host: str
    user: str
    key_files: tuple[str, ...]
    known_hosts: str
    port: int = 22
    #: The loaded private keys, in the order of ``key_files``.
    keys: tuple[keys.Key, ...] = dataclasses.field(default=(), repr=False, compare=False)

    @classmethod
    def create(cls, tunnel: str | None, key_files: str | list[str] | tuple[str, ...] | None = None,
               known_hosts: str | None = None) -> SSHSettings | None:
        """Checked settings with the keys loaded, or None without ``tunnel``.

        ``tunnel`` is ``user@host[:port]``; ``key_files`` default to the first existing of
        ``~/.ssh/id_ed25519``, ``id_ecdsa``, ``id_rsa``; ``known_hosts`` to
        ``~/.ssh/known_hosts``, which must have an entry for the SSH server.
        Raises ValueError with what is wrong.
        """
        if not tunnel:
            if key_files or known_hosts:
                raise ValueError("ssh_key and ssh_known_hosts need ssh_tunnel (USER@HOST[:PORT])")
            return None
        user, host, port = parse_destination(tunnel)
        if isinstance(key_files, str):
            key_files = [key_files]
        if key_files:
            paths = [os.path.abspath(os.path.expanduser(p)) for p in key_files]
        else:
            paths = [p for p in map(_home, DEFAULT_KEY_NAMES) if os.path.exists(p)][:1]
            if not paths:
                raise ValueError("no SSH key given and none of ~/.ssh/"
                                 f"{{{','.join(DEFAULT_KEY_NAMES)}}} exists: make one "
                                 "(ssh-keygen -t ed25519 -N '') and name it with --ssh-key")
        loaded = tuple(load_private_key(p) for p in paths)
        known_hosts = os.path.abspath(os.path.expanduser(known_hosts or _home("known_hosts")))
        settings = cls(host, user, tuple(paths), known_hosts, port, loaded)
        settings.check_known_hosts()
        return settings

    @property
    def where(self) -> str:
        """``user@host:port``, for logs."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}:{self.port}"

    @property
    def host_name(self) -> str:
        """The SSH server's name in known_hosts."""
        return known_hosts_name(self.host, self.port)

    def known_hosts_file(self) -> KnownHostsFile:
        """The known_hosts file (read again at each check, so edits apply at once)."""
        return KnownHostsFile.fromPath(FilePath(self.known_hosts))

    def known_key_types(self) -> list[bytes]:
        """The key types known_hosts has for the SSH server (hashed entries included)."""
        name = self.host_name.encode("utf-8")
        types = []
        for entry in self.known_hosts_file().iterentries():
            key_type = getattr(entry, "keyType", None)
            if key_type and entry.matchesHost(name) and key_type not in types:
                types.append(key_type)
        return types

    def check_known_hosts(self) -> None:
        """Raise ValueError unless known_hosts is readable and names the SSH server."""
        try:
            with open(self.known_hosts, "rb"):
                pass
        except OSError as e:
            raise ValueError(f"cannot read the SSH known_hosts file {self.known_hosts!r}: "
                             f"{e.strerror or e}") from None
        if not self.known_key_types():
            port = f"-p {self.port} " if self.port != 22 else ""
            raise ValueError(
                f"the SSH known_hosts file {self.known_hosts!r} has no host key for "
                f"{self.host_name}: add it, e.g. ssh-keyscan {port}{self.host} >> "
                f"{self.known_hosts} (and check the key's fingerprint with the SSH server's "
                "administrator)")
