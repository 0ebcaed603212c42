"""The JSON-lines records file (`-o`): one JSON object per run per block, appended and flushed as the run goes.
On resume it is cut back to the records written before the checkpoint, after checking they are the same."""

import hashlib
import json
import os
import sys
from typing import Any

from outputs.sinks import Block


class OutputMismatch(Exception):
    """The output file does not continue the checkpoint's run; the message is one sentence."""


class RecordsFile:
    """The records sink: writes each block's records as JSON lines to `path`, a new file, or with `keep_bytes`
    the existing one cut to its first keep_bytes bytes (the `records_written` records up to the checkpoint)."""

    def __init__(self, path: str, keep_bytes: int | None = None, records_written: int = 0):
        self.path, self.records_written = path, records_written
        if keep_bytes is None:
            self._file = open(path, "wb")
        else:
            self._file = open(path, "r+b")
            self._file.truncate(keep_bytes)
            self._file.seek(keep_bytes)

    def write(self, block: Block) -> None:
        self._file.writelines((json.dumps(record) + "\n").encode() for record in block.records)
        self._file.flush()
        self.records_written += len(block.records)

    def position(self) -> dict[str, Any]:
        """What a checkpoint stores of this file (output_position)."""
        return output_position(self.path, self._file.tell(), self.records_written)

    def close(self) -> None:
        self._file.close()


def output_position(path: str | None, num_bytes: int, num_records: int) -> dict[str, Any]:
    """The checkpoint header's record of the output file: its size and the SHA-256 of its content."""
    digest = hashlib.sha256()
    if path:
        with open(path, "rb") as file:
            digest.update(file.read(num_bytes))
    return {"path": os.path.abspath(path) if path else None, "bytes": num_bytes, "records": num_records,
            "sha256": digest.hexdigest()}


def bytes_to_keep(output: str | None, stored: dict[str, Any], checkpoint_path: str) -> tuple[int | None, int]:
    """(bytes to keep, records kept) of the output file on resume from the checkpoint whose header stored
    `stored` (output_position). An output file that starts with the checkpoint's records is cut after them; a
    missing one starts anew (with a warning); any other file raises OutputMismatch, so that no one's records are
    cut by mistake."""
    if not output or not stored["bytes"]:
        return None, 0
    if not os.path.exists(output):
        print(f"warning: output file {output!r} does not exist; it will hold only the records written after "
              f"checkpoint {checkpoint_path!r}", file=sys.stderr)
        return None, 0
    with open(output, "rb") as file:
        prefix = file.read(stored["bytes"])
    if len(prefix) < stored["bytes"] or hashlib.sha256(prefix).hexdigest() != stored["sha256"]:
        raise OutputMismatch(f"output file {output!r} does not start with the {stored['records']} records written "
                             f"before checkpoint {checkpoint_path!r} was taken; restore it or give a new file with -o")
    return stored["bytes"], stored["records"]
