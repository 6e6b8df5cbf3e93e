"""Key and certificate material shared by both sides: reading key files, the worker
names bound to TLS certificates, and ZeroMQ CURVE keys with their ZAP authentication.

Nothing here moves frames; the transports and the ways to reach a master use it.
"""
