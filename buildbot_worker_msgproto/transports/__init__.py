"""Thin frame transports: each moves whole frames between the network and a session.

A transport holds no protocol logic.  It declares what it guarantees
(:class:`~buildbot_worker_msgproto.transports.base.TransportGuarantees`) and
reports open / frame / closed / writable to a
:class:`~buildbot_worker_msgproto.transports.base.FrameReceiver`.  The stream transports
(``tcp``, ``amp``, ``websocket``) share :mod:`.stream`, the message-oriented ones (``zmq``,
``amqp``) :mod:`.messaging`; :mod:`.registry` finds them by name.  Each declares its
options per side as a frozen dataclass of :mod:`.options`.  How a worker reaches
its master (TLS, HTTP proxy, SSH tunnel) is :mod:`buildbot_worker_msgproto.reach`.
"""
