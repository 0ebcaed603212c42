"""Stop signals: the first SIGINT or SIGTERM asks the run to save after its current block and stop; a second one
exits at once."""

import os
import signal
import sys


class StopSignals:
    """While active (and enabled), the first SIGINT or SIGTERM only sets `requested` to the signal's name (the
    run saves after its current block and stops); a second one exits at once, leaving the last complete
    checkpoint in place. Disabled, it leaves the signals alone and `requested` stays None."""

    def __init__(self, enabled: bool = True):
        self.enabled, self.requested, self._previous = enabled, None, {}

    def __enter__(self):
        for signum in (signal.SIGINT, signal.SIGTERM) if self.enabled else ():
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested is not None:
            print(f"\n{name} again: exiting now; the last complete checkpoint is intact", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.requested = name
        print(f"\n{name}: finishing the current block, then saving a checkpoint (send it again to exit at once)",
              file=sys.stderr, flush=True)
