"""TLS for `[[listener]]` tables: the gateway's certificate, TLS 1.2 at least, client certificates."""

from __future__ import annotations

import ssl

from ferry.gateway.config import ConfigError, ListenerConfig


def server_context(where: str, listener: ListenerConfig) -> ssl.SSLContext:
    """An SSLContext for one TLS listener; ConfigError naming the key whose file cannot be used."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(listener.tls_cert, listener.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{where}.tls_cert: cannot load {listener.tls_cert} with {listener.tls_key}: {exc}") \
            from None
    if listener.tls_client_ca is not None:
        try:
            context.load_verify_locations(cafile=listener.tls_client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{where}.tls_client_ca: cannot load {listener.tls_client_ca}: {exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED if listener.require_client_cert else ssl.CERT_OPTIONAL
    return context


def certificate_name(peercert: dict | None) -> str | None:
    """The common name of a verified client certificate (`SSLObject.getpeercert()`), if any."""
    if not peercert:
        return None
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None
