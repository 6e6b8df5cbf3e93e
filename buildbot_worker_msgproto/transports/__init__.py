"""Thin transport adapters: each moves whole frames between the network and a session.

A transport holds no protocol logic.  It declares what it guarantees
(:class:`~buildbot_worker_msgproto.transports.base.TransportGuarantees`) and
reports open / frame / closed to a
:class:`~buildbot_worker_msgproto.transports.base.FrameReceiver`.
"""
