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
