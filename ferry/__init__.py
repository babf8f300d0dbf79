"""Ferry: lossless IoT edge stack, one import namespace (distribution `ferry-iot`).

Layers, lowest first (tests/ferry/test_packaging.py holds them): this package's shared modules
(`contract`, `addresses`, `process`, `firmware`); the parts (`gateway`, `server`, `hwsim`,
`flash`, `local_kafka`), each importing only itself and the shared modules; on top the
`cli`, `demo` and `bench` that put the parts together.
"""

__version__ = "0.2.0"
