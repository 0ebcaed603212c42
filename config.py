"""Experiment configuration: one frozen, typed dataclass, loaded from JSON with overrides."""


class ConfigError(Exception):
    """A user mistake in the configuration or command line: the message is one sentence."""
