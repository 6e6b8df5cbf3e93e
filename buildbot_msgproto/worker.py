"""``MsgWorker``: a ``worker.Worker`` that also registers on ``c['protocols']['msg']``."""

from __future__ import annotations

from typing import Any

from buildbot.worker import Worker
from twisted.internet import defer
from twisted.python import log

from buildbot_msgproto.config import parse_options
from buildbot_msgproto.connection import MsgConnection
from buildbot_msgproto.manager import CERTIFICATE_ONLY
from buildbot_msgproto.manager import get_listener


class MsgWorker(Worker):
    """A Buildbot worker reachable over the msg protocol (and PB on the same port).

    Takes exactly the keyword arguments of ``buildbot.plugins.worker.Worker``.  If
    ``c['protocols']`` also has a ``'pb'`` entry, the worker stays reachable there too.
    ``password=None`` makes a worker that logs in with its TLS client certificate only
    (needs ``client_certificates`` on the msg port; docs/security/mtls.rst).
    """

    #: The Registration of this worker on its msg port (None: not registered).
    _msg_registration: Any = None

    @defer.inlineCallbacks
    def reconfigService(self, name: str, password: Any, **kwargs: Any) -> Any:  # noqa: N802
        yield super().reconfigService(name, password, **kwargs)
        msg_options = self.master.config.protocols.get("msg")
        options = parse_options(msg_options) if msg_options is not None else None
        if password is None and (options is None or options.client_certificates == "off"):
            log.msg(f"msgproto: worker {name!r} has no password, so it can only log in with "
                    "a TLS client certificate, but c['protocols']['msg'] does not ask for "
                    "client certificates (client_certificates is 'off'): it cannot log in")
        listener = yield get_listener(self.master)
        registration = yield listener.updateRegistration(self.workername,
                                                         self._registered_password, options)
        self._msg_registration = registration if options is not None else None

    @defer.inlineCallbacks
    def stopService(self) -> Any:  # noqa: N802
        if self._msg_registration is not None:
            listener = yield get_listener(self.master)
            yield listener.updateRegistration(self.workername, self._registered_password, None)
            self._msg_registration = None
        yield super().stopService()

    def canStartBuild(self) -> bool:  # noqa: N802 - Buildbot's name
        """No new build while the connection is suspended (waiting for a resume)."""
        if isinstance(self.conn, MsgConnection) and self.conn.suspended:
            return False
        return super().canStartBuild()

    @property
    def _registered_password(self) -> Any:
        return CERTIFICATE_ONLY if self.password is None else self.password

    def get_msg_port(self) -> int:
        """The TCP port number the msg listener is bound to (useful with port 0 in tests)."""
        if self._msg_registration is None:
            raise RuntimeError(f"worker {self.workername!r} is not registered on a msg port")
        return self._msg_registration.getPort()
