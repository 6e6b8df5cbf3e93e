"""The sans-IO protocol core: messages, codec, authentication and the session state machine.

Nothing in this package does I/O or imports Twisted: frames go in, events and
frames come out.  See ``docs/protocol.rst`` for the specification.
"""
