"""The two ways a driver can fail (STYLE.md, "Drivers")."""


class RetryableError(Exception):
    """The device or link may recover: no reply, timeout, busy, connection refused."""


class FatalError(Exception):
    """Retrying cannot help: the configuration asks for something the device does not have."""
