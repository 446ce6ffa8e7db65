"""The few exceptions RecThinker raises on purpose (model mistakes are observations, not exceptions)."""


class RecThinkerError(Exception):
    """Base class for errors RecThinker raises on purpose."""


class DataError(RecThinkerError):
    """Input data violates an invariant (bad line, missing column, unknown item, empty history)."""


class ConfigError(RecThinkerError):
    """A config file, preset or command-line option is invalid."""
