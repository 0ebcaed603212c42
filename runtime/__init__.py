"""The runtime around the compiled program: checkpoints, devices and processes, stop signals, huge pages."""
