"""The experiment around the agent: the typed config, the command line, and the run loop."""
