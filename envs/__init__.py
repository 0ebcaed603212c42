"""Environment families, one module each, over one protocol (protocol.py); environments.py picks one."""
