"""One exception tree, so the CLI can map failures to exit codes (2: usage/config, 1: runtime)."""


class P2PModelError(Exception):
    """Base of every error this project raises on purpose."""

    exit_code = 1


class UsageError(P2PModelError):
    """Bad input from the user: a config, a path, a flag. Exit code 2."""

    exit_code = 2


class ConfigError(UsageError):
    """A configuration file or override that does not validate."""


class DataError(UsageError):
    """Missing, empty or unreadable training/validation data."""


class IntegrityError(P2PModelError):
    """Bytes that do not match their digest or signature (checkpoint, download, message)."""


class WireError(P2PModelError):
    """A malformed, oversized or wrong-version message from the network."""


class SwarmError(P2PModelError):
    """A network operation failed (unreachable bootstrap, no peers, timeout)."""
