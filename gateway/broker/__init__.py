"""The broker core: sessions, routing, retained messages and QoS flows, with no I/O.

Packets go in with the time; bytes to send, records to make durable and
connections to close come out. `gateway.server` drives it on asyncio and
`gateway.store` makes its records durable.
"""
