"""``buildbot-worker-msgproto``: buildbot-worker's command line with msg protocol options."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

from buildbot_worker.scripts import runner as upstream
from twisted.python import reflect
from twisted.python import usage

from buildbot_worker_msgproto.reach.failover import ORDERS
from buildbot_worker_msgproto.reach.tls import normalize_fingerprint
from buildbot_worker_msgproto.scripts.create_worker import SSH_OPTIONS
from buildbot_worker_msgproto.scripts.create_worker import TLS_OPTIONS
from buildbot_worker_msgproto.transports import registry
from buildbot_worker_msgproto.worker import PROTOCOLS
from buildbot_worker_msgproto.worker import TRANSPORTS
from buildbot_worker_msgproto.worker import check_certificate_login


class CreateWorkerOptions(upstream.CreateWorkerOptions):
    """``create-worker`` with the same arguments, plus ``--protocol`` and ``--transport``."""

    subcommandFunction = "buildbot_worker_msgproto.scripts.create_worker.createWorker"
    optParameters = [
        p for p in upstream.CreateWorkerOptions.optParameters if p[0] != "protocol"
    ] + [
        ["protocol", None, "msg",
         "Protocol: 'msg' (JSON messages, falls back to PB against a stock master) or "
         "'pb' (force legacy PB)"],
        ["transport", None, "tcp", f"Transport for the msg protocol: one of {TRANSPORTS}"],
        ["tls-ca-file", None, None,
         "Verify the master's TLS certificate against the CA(s) of this PEM file instead of "
         "the system's, and the master host name (implies --use-tls)"],
        ["tls-fingerprint", None, None,
         "Pin the SHA-256 fingerprint of the master's TLS certificate (hex, colons "
         "allowed; implies --use-tls)"],
        ["tls-client-cert", None, None,
         "Present this PEM client certificate to the master (mutual TLS; implies --use-tls). "
         "With it, <passwd> may be left out: the worker then logs in with the certificate "
         "alone (docs/security/mtls.rst)"],
        ["tls-client-key", None, None,
         "PEM private key of --tls-client-cert (default: in the certificate's file)"],
        ["ssh-tunnel", None, None,
         "Reach the master through this SSH server, USER@HOST[:PORT]; MASTER is then the "
         "master as seen from the SSH server (docs/security/ssh.rst)"],
        ["ssh-known-hosts", None, None,
         "known_hosts file with the SSH server's host key (default: ~/.ssh/known_hosts)"],
        ["master-order", None, "preferred",
         f"With several masters (<master> as HOST:PORT,HOST:PORT...): {' or '.join(ORDERS)} "
         "(the first master whenever it can, or a random one per worker; "
         "docs/multimaster.rst)"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["transport-options"] = {}
        self["ssh-key"] = None

    def opt_ssh_key(self, value: str) -> None:
        """Private key FILE to log in to the SSH server with (repeatable; default:
        ~/.ssh/id_ed25519, id_ecdsa or id_rsa); no passphrase."""
        self["ssh-key"] = [*(self["ssh-key"] or []), value]

    def opt_transport_option(self, value: str) -> None:
        """Transport-specific KEY=VALUE (repeatable), e.g. path=/msg; see docs/transports/."""
        key, sep, option = value.partition("=")
        if not sep or not key:
            raise usage.UsageError(f"--transport-option needs KEY=VALUE, got {value!r}")
        self["transport-options"][key] = option

    def validateMasterArgument(self, master_arg: str) -> tuple[str, int]:  # noqa: N802
        """``HOST[:PORT]``, or several masters as ``HOST:PORT,HOST:PORT...`` (the first is
        written as buildmaster_host and port, all of them as ``masters``)."""
        masters = [super(CreateWorkerOptions, self).validateMasterArgument(item.strip())
                   for item in master_arg.split(",")]
        self["masters"] = masters if len(masters) > 1 else []
        return masters[0]

    def getSynopsis(self) -> str:  # noqa: N802
        return ("Usage:    buildbot-worker-msgproto create-worker [options] "
                "<basedir> <master> <name> <passwd>\n"
                "          buildbot-worker-msgproto create-worker --tls-client-cert FILE "
                "[options] <basedir> <master> <name>")

    def parseArgs(self, *args: str) -> None:  # noqa: N802
        """As buildbot-worker's, but <passwd> may be left out with --tls-client-cert."""
        if len(args) == 3 and self["tls-client-cert"]:
            super().parseArgs(*args, "")
            self["passwd"] = None
            return
        if len(args) == 3:
            raise usage.UsageError("incorrect number of arguments: <passwd> may only be left "
                                   "out with --tls-client-cert (certificate login)")
        super().parseArgs(*args)

    def postOptions(self) -> None:  # noqa: N802
        super().postOptions()
        if self["protocol"] not in PROTOCOLS:
            raise usage.UsageError(f"--protocol must be one of {PROTOCOLS}")
        if self["transport"] not in TRANSPORTS:
            raise usage.UsageError(f"--transport must be one of {TRANSPORTS}")
        if self["protocol"] == "pb" and self["transport"] != "tcp":
            raise usage.UsageError("--protocol pb only runs over --transport tcp")
        missing = registry.missing_extra(self["transport"])
        if missing is not None:
            raise usage.UsageError(missing)
        if self["master-order"] not in ORDERS:
            raise usage.UsageError(f"--master-order must be one of {ORDERS}")
        if self.get("masters") and self["connection-string"]:
            raise usage.UsageError("several masters need <master> as HOST:PORT,HOST:PORT, "
                                   "not --connection-string")
        self._check_tls_options()
        if self["passwd"] is None:
            try:
                check_certificate_login(self["protocol"], self["transport"])
            except ValueError as e:
                raise usage.UsageError(str(e)) from None
        self._check_ssh_options()

    def _check_ssh_options(self) -> None:
        """Check the SSH tunnel options now (keys readable, host key known), as the worker
        will at startup, and make the paths absolute."""
        given = [name for name in SSH_OPTIONS if self[name]]
        if not given:
            return
        if not self["ssh-tunnel"]:
            raise usage.UsageError(f"--{given[0]} needs --ssh-tunnel USER@HOST[:PORT]")
        if self["connection-string"] or self["proxy-connection-string"]:
            raise usage.UsageError("--ssh-tunnel needs the master as HOST:PORT (as seen from "
                                   "the SSH server), not --connection-string or "
                                   "--proxy-connection-string")
        try:
            from buildbot_worker_msgproto.reach.ssh import SSHSettings
        except ImportError as e:
            raise usage.UsageError(f"--ssh-tunnel needs the 'ssh' extra, which is not "
                                   f"installed ({e}): pip install 'buildbot-msgproto[ssh]'"
                                   ) from None

        try:
            settings = SSHSettings.create(self["ssh-tunnel"], self["ssh-key"],
                                          self["ssh-known-hosts"])
        except ValueError as e:
            raise usage.UsageError(f"--ssh-tunnel: {e}") from None
        self["ssh-key"] = list(settings.key_files)
        self["ssh-known-hosts"] = settings.known_hosts

    def _check_tls_options(self) -> None:
        """Make the TLS file options absolute, check them, and turn on --use-tls."""
        given = [name for name in TLS_OPTIONS if self[name]]
        if not given:
            return
        if self["connection-string"]:
            raise usage.UsageError(
                f"--{given[0]} needs the master as HOST:PORT, not --connection-string "
                "(a tls: connection string has its own trustRoots=, certificate= options)")
        if self["tls-client-key"] and not self["tls-client-cert"]:
            raise usage.UsageError("--tls-client-key needs --tls-client-cert")
        if self["tls-fingerprint"]:
            try:
                self["tls-fingerprint"] = normalize_fingerprint(self["tls-fingerprint"])
            except ValueError as e:
                raise usage.UsageError(f"--tls-fingerprint: {e}") from None
        for name in ("tls-ca-file", "tls-client-cert", "tls-client-key"):
            if self[name]:
                self[name] = os.path.abspath(os.path.expanduser(self[name]))
                if not os.path.isfile(self[name]):
                    raise usage.UsageError(f"--{name}: no such file: {self[name]}")
        self["use-tls"] = True


#: create-worker's options that say how to connect: the ones check-connection takes too.
CONNECTION_PARAMETERS = ("protocol", "transport", "connection-string", "proxy-connection-string",
                         *TLS_OPTIONS, "ssh-tunnel", "ssh-known-hosts", "master-order")


class CheckConnectionOptions(usage.Options):
    """``check-connection``: BASEDIR, or create-worker's MASTER NAME [PASSWD] and its
    connection options, checked by create-worker's own parser (:attr:`worker`)."""

    subcommandFunction = "buildbot_worker_msgproto.scripts.check_connection.checkConnection"
    optFlags = [
        ["use-tls", None, "Use TLS to connect to the master"],
        ["verbose", "v", "Show the Twisted log on stderr"],
    ]
    optParameters = [
        p for p in CreateWorkerOptions.optParameters if p[0] in CONNECTION_PARAMETERS
    ] + [
        ["timeout", None, 30.0, "Seconds the check of one master may take", float],
    ]
    opt_ssh_key = CreateWorkerOptions.opt_ssh_key
    opt_transport_option = CreateWorkerOptions.opt_transport_option

    def __init__(self) -> None:
        super().__init__()
        self["transport-options"] = {}
        self["ssh-key"] = None
        #: create-worker's parse of the same connection options (not with BASEDIR).
        self.worker: CreateWorkerOptions | None = None

    def getSynopsis(self) -> str:  # noqa: N802
        return ("Usage:    buildbot-worker-msgproto check-connection [--timeout S] <basedir>\n"
                "          buildbot-worker-msgproto check-connection [options] <master> "
                "<name> [<passwd>]")

    def parseArgs(self, *args: str) -> None:  # noqa: N802
        """A worker's BASEDIR alone, or create-worker's arguments without BASEDIR."""
        if len(args) not in (1, 2, 3):
            raise usage.UsageError("give a worker's <basedir>, or <master> <name> [<passwd>]")
        self["basedir"] = args[0] if len(args) == 1 else None
        self["arguments"] = args

    def _given(self) -> list[str]:
        """create-worker's command line for the connection options given here."""
        argv = ["--use-tls"] if self["use-tls"] else []
        for name in CONNECTION_PARAMETERS:
            if self[name] is not None:
                argv += [f"--{name}", str(self[name])]
        for key in self["ssh-key"] or ():
            argv += ["--ssh-key", key]
        for key, value in self["transport-options"].items():
            argv += ["--transport-option", f"{key}={value}"]
        return argv

    def postOptions(self) -> None:  # noqa: N802
        if self["timeout"] <= 0:
            raise usage.UsageError("--timeout must be a positive number of seconds")
        defaults = {"protocol": "msg", "transport": "tcp", "master-order": "preferred"}
        if self["basedir"] is not None:
            extra = [name for name in CONNECTION_PARAMETERS
                     if self[name] not in (None, defaults.get(name))]
            extra += [n for n in ("use-tls", "ssh-key", "transport-options") if self[n]]
            if extra:
                raise usage.UsageError(f"with <basedir> its buildbot.tac says how to "
                                       f"connect: leave out --{extra[0]}")
            return
        self.worker = CreateWorkerOptions()
        self.worker.parseOptions([*self._given(), os.getcwd(), *self["arguments"]])


class Options(upstream.Options):
    synopsis = "Usage:    buildbot-worker-msgproto <command> [command options]"

    def opt_version(self) -> NoReturn:  # type: ignore[misc]  # noqa: N802
        import buildbot_worker

        import buildbot_worker_msgproto

        print(f"buildbot-msgproto version: {buildbot_worker_msgproto.__version__}")
        print(f"worker version: {buildbot_worker.version}")
        sys.exit(0)
    subCommands = [
        ["create-worker", None, CreateWorkerOptions,
         "Create and populate a directory for a new worker (msg protocol by default)"],
        ["start", None, upstream.StartOptions, "Start a worker"],
        ["stop", None, upstream.StopOptions, "Stop a worker"],
        ["restart", None, upstream.RestartOptions, "Restart a worker"],
        ["check-connection", None, CheckConnectionOptions,
         "Check that a worker can reach and log in to its master(s), without attaching "
         "(docs/check-connection.rst)"],
        ["gen-keys", None,
         lambda: reflect.namedAny("buildbot_worker_msgproto.scripts.gen_keys.GenKeysOptions")(),
         "Make a private CA, TLS certificates and ZeroMQ CURVE keys (docs/security/gen-keys.rst)"],
    ]


def run() -> NoReturn:
    """Entry point of the ``buildbot-worker-msgproto`` console script."""
    config = Options()
    try:
        config.parseOptions()
    except usage.error as e:
        print(f"{sys.argv[0]}:  {e}")
        print()
        print(str(getattr(config, "subOptions", config)))
        sys.exit(1)
    subconfig = config.subOptions
    sys.exit(reflect.namedObject(subconfig.subcommandFunction)(subconfig))
