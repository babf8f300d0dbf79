# Ferry firmware: the TLS client context of the MQTT session (MicroPython). Made once, by
# Session() (session.py's tls_context imports this module for the call and drops it after it):
# its code is not on the heap while the firmware runs, nor during a connect.


def tls_context(ca_file):
    """A TLS client context that trusts exactly the CA certificate (DER) in ca_file: pinned.

    Made once per Session (the CA is parsed once); each connect wraps a new socket with it.
    verify_mode is set explicitly: micropython-lib's `ssl.SSLContext` defaults to CERT_NONE.
    """
    try:
        import tls  # MicroPython 1.23+
    except ImportError:
        import ssl as tls  # 1.22: the same SSLContext under this name
    ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = tls.CERT_REQUIRED
    with open(ca_file, "rb") as f:
        try:
            ctx.load_verify_locations(f.read())
        except ValueError as e:  # not a certificate (mbedTLS: "invalid cert"): a crash, logged, backed off
            raise ValueError("tls: %s: %s (flash the gateway's CA again: ferry flash --ca)" % (ca_file, e))
    return ctx
