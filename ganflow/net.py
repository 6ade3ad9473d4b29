"""Whether the network answers: downloads check first, so offline they fail in seconds, not minutes."""

from __future__ import annotations

import socket
import threading


def reachable(host: str, port: int = 443, timeout: float = 5.0) -> bool:
    """Whether a TCP connection to host:port opens within ``timeout`` seconds, DNS included."""
    result = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result)


def credentials_to_environment(uri: str) -> str:
    """``uri`` without a ``user:password@`` part, which goes to the environment MLflow reads
    it from instead (MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD, unless set): a
    password in the URI would be printed, and stored in the run's params and tags where
    everyone who reads the store reads it."""
    import os
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return uri
    credentials, host = parts.netloc.rsplit("@", 1)
    user, _, password = credentials.partition(":")
    os.environ.setdefault("MLFLOW_TRACKING_USERNAME", unquote(user))
    if password:
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", unquote(password))
    return urlunsplit(parts._replace(netloc=host))
