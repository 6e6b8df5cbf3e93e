"""The private Buildbot and Twisted internals the master side relies on (buildbot_msgproto.compat).

Each test names the internal it checks, so that an upgrade of Buildbot or Twisted that
changes one fails here, loudly, instead of somewhere in an end-to-end test.
"""

from __future__ import annotations

import inspect

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.spread import banana
from twisted.spread import pb

from buildbot_msgproto import compat
from buildbot_worker_msgproto.protocol import negotiation


def test_twisted_banana_prefix_limit_is_an_int():
    assert isinstance(banana._PREFIX_LIMIT, int) and banana._PREFIX_LIMIT > 0, \
        "twisted.spread.banana._PREFIX_LIMIT changed"
    assert compat.PB_PREFIX_LIMIT == banana._PREFIX_LIMIT


def test_twisted_banana_connection_made_still_offers_dialects_and_resets_them():
    """What PreNegotiatedBroker.connectionMade mirrors, minus the offer."""
    broker = pb.Broker(isClient=False)
    transport = StringTransport()
    broker.makeConnection(transport)
    assert transport.value() == negotiation.encode_offer(tuple(banana.Banana.knownDialects)), \
        "Banana.connectionMade no longer sends exactly the dialect offer"
    assert broker.currentDialect is None, "Banana.currentDialect is no longer reset"


def test_pre_negotiated_broker_sends_nothing_and_selects_pb_from_the_replayed_choice():
    factory = pb.PBServerFactory(pb.Root())
    compat.use_pre_negotiated_broker(factory)
    broker = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    assert isinstance(broker, compat.PreNegotiatedBroker), \
        "PBServerFactory.buildProtocol no longer builds its 'protocol' class attribute"
    transport = StringTransport()
    broker.makeConnection(transport)
    assert transport.value() == b""
    broker.dataReceived(negotiation.encode_string(b"pb"))
    assert broker.currentDialect == b"pb", "banana no longer selects the dialect it is sent"


def test_buildbot_pb_listener_create_connection_signature():
    from buildbot.worker.protocols import pb as buildbot_pb

    method = getattr(buildbot_pb.Listener, "_create_connection", None)
    assert method is not None, \
        "buildbot's UpdateRegistrationListener._create_connection is gone"
    assert list(inspect.signature(method).parameters) == ["self", "mind", "workerName"], \
        "buildbot's UpdateRegistrationListener._create_connection changed its arguments"


def test_buildbot_worker_info_storage_and_event():
    """What compat.update_worker_info writes and announces."""
    from buildbot.data.workers import Worker
    from buildbot.db import model
    from buildbot.db.pool import DBThreadPool

    assert "info" in model.Model.workers.c, "buildbot's workers table has no 'info' column"
    assert Worker.name == "worker", "the data API's worker resource type is renamed"
    assert callable(getattr(Worker, "produceEvent", None)), \
        "buildbot's Worker resource type has no produceEvent"
    assert callable(getattr(DBThreadPool, "do_with_transaction", None)), \
        "buildbot's DBThreadPool.do_with_transaction is gone"


def test_buildbot_unclaim_for_a_given_master_signature():
    from buildbot.db.buildrequests import BuildRequestsConnectorComponent

    method = getattr(BuildRequestsConnectorComponent, "_unclaim_buildrequests_for_master",
                     None)
    assert method is not None, \
        "buildbot's BuildRequestsConnectorComponent._unclaim_buildrequests_for_master is gone"
    assert list(inspect.signature(method).parameters) == ["self", "brids", "masterid"], \
        "buildbot's _unclaim_buildrequests_for_master changed its arguments"
