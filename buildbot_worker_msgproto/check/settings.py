"""What a connection check connects to, and how: a worker's settings, as its
``buildbot.tac`` gives them to ``Worker(...)`` or as create-worker's options say."""

from __future__ import annotations

import builtins
import dataclasses
import os
import types
from typing import Any

from buildbot_worker_msgproto.reach.tls import TLSSettings
from buildbot_worker_msgproto.transports.base import ClientTarget

#: Modules a worker's buildbot.tac imports its ``Worker`` from (ours and the stock one).
WORKER_MODULES = ("buildbot_worker_msgproto", "buildbot_worker.bot")


class SettingsError(ValueError):
    """The worker's settings cannot be read or make no sense (the message says why)."""


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    """Everything of a worker that decides how it connects and logs in."""

    name: str
    #: None: the worker logs in with its TLS client certificate.
    password: str | None
    #: One target per master (several with a worker's list of masters).
    targets: tuple[ClientTarget, ...]
    transport: str = "tcp"
    protocol: str = "msg"

    def where(self, target: ClientTarget) -> str:
        """``target`` for people: ``host:port``, or the connection string."""
        if target.connection_string:
            return target.connection_string
        return f"{target.host}:{target.port}"


def make_settings(host: str | None, port: int | None, name: str, password: str | None,
                  transport: str = "tcp", protocol: str = "msg",
                  connection_string: str | None = None, use_tls: bool = False,
                  proxy_connection_string: str | None = None,
                  transport_options: dict[str, Any] | None = None, path: str | None = None,
                  tls_ca_file: str | None = None, tls_fingerprint: str | None = None,
                  tls_client_cert: str | None = None, tls_client_key: str | None = None,
                  ssh_tunnel: str | None = None, ssh_key: Any = None,
                  ssh_known_hosts: str | None = None,
                  masters: list[tuple[str, int]] | None = None) -> WorkerSettings:
    """The settings of a worker made with these ``Worker`` arguments (as buildbot.tac
    passes them); SettingsError for what the worker itself would refuse."""
    try:
        tls = TLSSettings.create(tls_ca_file, tls_fingerprint, tls_client_cert, tls_client_key)
        ssh = None
        if ssh_tunnel or ssh_key or ssh_known_hosts:
            from buildbot_worker_msgproto.reach.ssh import SSHSettings

            ssh = SSHSettings.create(ssh_tunnel, ssh_key, ssh_known_hosts)
    except (ValueError, ImportError) as e:
        raise SettingsError(str(e)) from None
    if not password and (tls is None or not tls.client_cert):
        raise SettingsError("the worker needs a password, or a TLS client certificate to log "
                            "in with instead")
    options = dict(transport_options or {}, **({"path": path} if path else {}))
    base = ClientTarget(host=host, port=port, connection_string=connection_string,
                        use_tls=bool(use_tls) or tls is not None, tls=tls, ssh=ssh,
                        proxy_connection_string=proxy_connection_string, options=options)
    pairs = [(str(h), int(p)) for h, p in masters or ()]
    targets = tuple(dataclasses.replace(base, host=h, port=p) for h, p in pairs) or (base,)
    return WorkerSettings(name=name, password=password or None, targets=targets,
                          transport=transport or "tcp", protocol=protocol or "msg")


class _CapturedWorker:
    """Stands in for ``Worker`` while a buildbot.tac runs: keeps its arguments."""

    captured: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        type(self).captured.append((args, kwargs))

    def setServiceParent(self, parent: Any) -> None:  # noqa: N802 - Twisted's name
        """Nothing to attach to."""


class _NoLogFile:
    """Stands in for Twisted's LogFile: the check must not touch the worker's log."""

    @classmethod
    def fromFullPath(cls, *args: Any, **kwargs: Any) -> _NoLogFile:  # noqa: N802
        return cls()

    def write(self, data: str) -> None:
        """Dropped."""

    def flush(self) -> None:
        """Nothing to flush."""


def from_tac(basedir: str) -> WorkerSettings:
    """The settings a worker in ``basedir`` runs with: its ``buildbot.tac`` is run with
    ``Worker`` (ours or buildbot-worker's) replaced by a stand-in that keeps the
    arguments; nothing is started, and the worker's log file is not opened."""
    tac = os.path.join(os.path.abspath(basedir), "buildbot.tac")
    try:
        with open(tac, encoding="utf-8") as f:
            source = f.read()
    except OSError as e:
        raise SettingsError(f"cannot read {tac}: {e.strerror}") from None
    stand_ins = {name: types.SimpleNamespace(Worker=_CapturedWorker) for name in WORKER_MODULES}
    stand_ins["twisted.python.logfile"] = types.SimpleNamespace(LogFile=_NoLogFile)
    real_import = builtins.__import__

    def tac_import(name: str, globals_: Any = None, locals_: Any = None,
                   fromlist: Any = (), level: int = 0) -> Any:
        if fromlist and level == 0 and name in stand_ins:
            return stand_ins[name]
        return real_import(name, globals_, locals_, fromlist, level)

    namespace = {"__file__": tac, "__name__": "__buildbot_tac__",
                 "__builtins__": {**vars(builtins), "__import__": tac_import}}
    _CapturedWorker.captured = []
    try:
        exec(compile(source, tac, "exec"), namespace)  # noqa: S102 - the worker's own tac
    except Exception as e:
        raise SettingsError(f"{tac} does not run: {type(e).__name__}: {e}") from None
    if len(_CapturedWorker.captured) != 1:
        raise SettingsError(f"{tac} makes {len(_CapturedWorker.captured)} Worker objects, "
                            "not one")
    args, kwargs = _CapturedWorker.captured[0]
    return _from_worker_arguments(args, kwargs, tac)


_POSITIONAL = ("buildmaster_host", "port", "name", "passwd", "basedir", "keepalive")


def _from_worker_arguments(args: tuple[Any, ...], kwargs: dict[str, Any],
                           tac: str) -> WorkerSettings:
    values = dict(zip(_POSITIONAL, args))
    values.update(kwargs)
    if values.get("name") is None:
        raise SettingsError(f"{tac} gives the worker no name")
    wanted = ("connection_string", "proxy_connection_string", "transport", "protocol",
              "transport_options", "path", "tls_ca_file", "tls_fingerprint",
              "tls_client_cert", "tls_client_key", "ssh_tunnel", "ssh_key", "ssh_known_hosts",
              "masters")
    return make_settings(values.get("buildmaster_host"), values.get("port"), values["name"],
                         values.get("passwd"), use_tls=bool(values.get("useTls")),
                         **{k: values[k] for k in wanted if values.get(k) is not None})
