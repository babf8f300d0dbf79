"""The broker core: sessions, routing, retained messages and QoS flows, with no I/O.

Packets go in with the time; bytes to send, records to make durable and
connections to close come out. `ferry.gateway.server` drives it on asyncio and
`ferry.gateway.store` makes its records durable.
"""
