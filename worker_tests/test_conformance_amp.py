"""The transport conformance suite against Twisted AMP."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet import protocol
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.trial import unittest

from buildbot_worker_msgproto.transports.amp import MAX_UNBOXED_BYTES
from worker_tests.conformance import LoopbackStreamConformance
from worker_tests.conformance import RecordingReceiver


class AmpConformance(LoopbackStreamConformance, unittest.TestCase):
    backend = "amp"


class AmpBufferingLimit(unittest.TestCase):
    """AMP parses a whole box before dispatching it: a peer sending one endless box
    (key after key) must be refused after a bounded amount, not buffered."""

    @defer.inlineCallbacks
    def test_endless_box_is_refused(self) -> Any:
        receivers: list[RecordingReceiver] = []

        def new_receiver() -> RecordingReceiver:
            receivers.append(RecordingReceiver(max_frame=16 * 1024))
            return receivers[-1]

        from buildbot_worker_msgproto.transports import amp

        listening = yield defer.ensureDeferred(
            amp.listen(reactor, {"port": "tcp:0:interface=127.0.0.1"}, new_receiver))
        self.addCleanup(listening.stop)
        client = yield TCP4ClientEndpoint(reactor, "127.0.0.1", listening.port_number).connect(
            protocol.Factory.forProtocol(protocol.Protocol))
        self.addCleanup(client.transport.abortConnection)
        value = b"v" * 60000
        for i in range(200):  # 12 MB of keys, never closing the box
            key = b"k%d" % i
            client.transport.write(len(key).to_bytes(2, "big") + key
                                   + len(value).to_bytes(2, "big") + value)
        yield receivers[0].closed.addTimeout(30, reactor)
        self.assertEqual(len(receivers[0].rejected), 1)
        self.assertLessEqual(receivers[0].rejected[0], MAX_UNBOXED_BYTES + 65536)
        self.assertEqual(receivers[0].frames, [])
