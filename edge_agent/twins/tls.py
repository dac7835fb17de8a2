"""TLS to the MQTT broker: one client context for every connection the agent (or a device) makes.

Rules:

- The broker is trusted through ``ca_file`` only (the CA that signed its certificate), never
  the system trust store: a site broker's certificate comes from the operator's own CA
  (docs/mqtt-broker.md).
- The broker's certificate must name the host dialled, or ``server_name`` when that is set (a
  certificate made for ``mqtt.site.example`` while the agent dials ``127.0.0.1``). Hostname
  verification cannot be turned off.
- A client certificate (``cert_file`` with its ``key_file``) is optional: mosquitto's dynamic
  security authenticates users by password; a certificate is for brokers that also demand one.
- `check` reads every file once, so a bad path or PEM is one line at config load, not a
  reconnect loop later.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BrokerTls", "BrokerTlsError", "client_context", "describe_error"]


class BrokerTlsError(ValueError):
    """A TLS setting is unusable; the message names the key and what to do."""


@dataclass(frozen=True, kw_only=True)
class BrokerTls:
    ca_file: Path
    """PEM file of the CA (or CAs) that signed the broker's certificate."""

    cert_file: Path | None = None
    """PEM client certificate for brokers with ``require_certificate true``; None: none sent."""

    key_file: Path | None = None
    """PEM private key of ``cert_file`` (unencrypted: the agent runs unattended)."""

    server_name: str = ""
    """Name checked in the broker's certificate (and sent as SNI); empty: the dialled host."""


class _NamedContext(ssl.SSLContext):
    """A client context that checks (and sends) `server_name` instead of the dialled host.

    paho passes the host it dials as ``server_hostname``; this is the one place to change it
    (and to close the socket of a failed handshake, which paho does not).
    """

    server_name = ""

    def wrap_socket(  # noqa: PLR0917 - the stdlib's signature
        self,
        sock: socket.socket,
        server_side: bool = False,  # noqa: FBT001, FBT002 - the stdlib's signature
        do_handshake_on_connect: bool = True,  # noqa: FBT001, FBT002 - the stdlib's signature
        suppress_ragged_eofs: bool = True,  # noqa: FBT001, FBT002 - the stdlib's signature
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        wrapped = super().wrap_socket(
            sock,
            server_side=server_side,
            do_handshake_on_connect=do_handshake_on_connect,
            suppress_ragged_eofs=suppress_ragged_eofs,
            server_hostname=self.server_name or server_hostname,
            session=session,
        )
        if server_side or do_handshake_on_connect:
            return wrapped
        # paho does the handshake itself and, when it fails (wrong CA, wrong name), drops the
        # socket unclosed: one leaked descriptor per retry. Done here, a failure closes it;
        # paho's own handshake call afterwards finds it done.
        try:
            wrapped.do_handshake()
        except BaseException:
            wrapped.close()
            raise
        return wrapped


def client_context(
    tls: BrokerTls, *, where: str = "[twins]", options: bool = False
) -> ssl.SSLContext:
    """A verifying client context (TLS 1.2 or later); BrokerTlsError names the bad key.

    `where` prefixes key names in errors; with `options`, keys are named as command-line
    options (``--broker-ca-file``, the simulator's) instead of config keys.
    """
    name = _option if options else str
    lead = f"{where} " if where else ""
    context = _NamedContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED on
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.server_name = tls.server_name
    _readable(tls.ca_file, f"{lead}{name('broker_ca_file')}")
    try:
        context.load_verify_locations(cafile=str(tls.ca_file))
    except (ssl.SSLError, ValueError) as error:
        raise BrokerTlsError(
            f"{lead}{name('broker_ca_file')} {tls.ca_file}: not a PEM CA certificate "
            f"({error}); give the CA that signed the broker's certificate (docs/mqtt-broker.md)"
        ) from None
    if (tls.cert_file is None) != (tls.key_file is None):
        given, missing = map(
            name,
            ("broker_cert_file", "broker_key_file")
            if tls.cert_file is not None
            else ("broker_key_file", "broker_cert_file"),
        )
        raise BrokerTlsError(
            f"{lead}{given} needs {missing} too (a client certificate and its key go "
            "together); set both, or neither to connect without a client certificate"
        )
    if tls.cert_file is not None and tls.key_file is not None:
        _readable(tls.cert_file, f"{lead}{name('broker_cert_file')}")
        _readable(tls.key_file, f"{lead}{name('broker_key_file')}")
        try:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        except (ssl.SSLError, ValueError) as error:
            raise BrokerTlsError(
                f"{lead}{name('broker_cert_file')} {tls.cert_file} / {name('broker_key_file')} "
                f"{tls.key_file}: "
                f"not a PEM certificate and its unencrypted private key ({error})"
            ) from None
    return context


def _option(key: str) -> str:
    return "--" + key.replace("_", "-")


def _readable(path: Path, key: str) -> None:
    try:
        with path.open("rb") as file:
            file.read(1)
    except OSError as error:
        raise BrokerTlsError(
            f"{key} {path}: cannot read it ({error.strerror}); fix the path or let the "
            "agent's user read it"
        ) from None


def describe_error(error: BaseException, tls: BrokerTls | None, host: str) -> str:
    """A hint for a failed broker connection when TLS is why (empty otherwise)."""
    text = str(error)
    if tls is None:
        return ""
    name = tls.server_name or host
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return (
            f" (TLS: the broker's certificate is not signed by broker_ca_file {tls.ca_file} "
            f"or does not name {name!r}: check broker_ca_file and broker_server_name)"
        )
    if "WRONG_VERSION_NUMBER" in text or "record layer failure" in text:
        return " (TLS: the broker port does not speak TLS: is broker_port its TLS listener?)"
    return ""
