"""Ways for a worker to reach its master: client endpoints and tunnels that any stream
transport (framed tcp and PB, amp, websocket, amqp to its broker) connects through.

:mod:`.endpoints` composes them from a :class:`~buildbot_worker_msgproto.transports.base.
ClientTarget`: :mod:`.tls` (the master's certificate verified before anything is sent),
:mod:`.http_proxy` (HTTP ``CONNECT``), :mod:`.ssh` (a ``direct-tcpip`` channel of an SSH
connection) and :mod:`.ssh_forward` (a local port into the tunnel, for zmq, which opens its
own sockets).  None of them moves frames: that is :mod:`buildbot_worker_msgproto.transports`.
"""
