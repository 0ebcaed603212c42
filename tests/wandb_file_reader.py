"""A small reader for wandb's offline `run-*.wandb` files, for tests only.

Current wandb has no public reader. The file is a 7-byte header (`:W&B`, magic 0xBEE1
little-endian, version 0) followed by a LevelDB-style log: 32 KiB blocks (counted from the
start of the file, header included), each holding chunks with a 7-byte header (masked CRC32C:
4 bytes, length: 2 bytes little-endian, type: 1 byte, 1 FULL, 2 FIRST, 3 MIDDLE, 4 LAST); a
block tail shorter than a chunk header is zero padding. Each reassembled record is a protobuf
`Record` from `wandb.proto.wandb_internal_pb2`. CRCs are not checked.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FILE_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK_SIZE = 32 * 1024
CHUNK_HEADER_SIZE = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_record_bytes(path: str | Path) -> list[bytes]:
    """The raw protobuf bytes of every complete record in the file, in order."""
    data = Path(path).read_bytes()
    if data[: len(FILE_HEADER)] != FILE_HEADER:
        raise ValueError(f"{path} does not start with the wandb file header")
    records: list[bytes] = []
    pending: bytearray | None = None
    offset = len(FILE_HEADER)
    while offset + CHUNK_HEADER_SIZE <= len(data):
        left_in_block = BLOCK_SIZE - offset % BLOCK_SIZE
        if left_in_block < CHUNK_HEADER_SIZE:
            offset += left_in_block
            continue
        _crc, length, kind = struct.unpack_from("<IHB", data, offset)
        if kind == 0 and length == 0:  # zero padding / preallocated tail
            offset += left_in_block
            continue
        start = offset + CHUNK_HEADER_SIZE
        payload = data[start : start + length]
        if len(payload) < length:
            break  # truncated last chunk of a file still being written
        offset = start + length
        if kind == FULL:
            records.append(bytes(payload))
            pending = None
        elif kind == FIRST:
            pending = bytearray(payload)
        elif kind == MIDDLE and pending is not None:
            pending += payload
        elif kind == LAST and pending is not None:
            pending += payload
            records.append(bytes(pending))
            pending = None
        else:
            raise ValueError(f"{path}: bad chunk type {kind} at offset {offset - length - CHUNK_HEADER_SIZE}")
    return records


@dataclass
class OfflineRun:
    """What a test wants from one offline run file."""

    run_id: str = ""
    name: str = ""
    group: str = ""
    project: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)  # one dict per logged row, values JSON-decoded
    metrics: dict[str, str] = field(default_factory=dict)  # define_metric: name or glob -> step metric
    record_types: list[str] = field(default_factory=list)


def read_offline_run(path: str | Path) -> OfflineRun:
    from wandb.proto import wandb_internal_pb2 as pb

    run = OfflineRun()
    for raw in read_record_bytes(path):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        run.record_types.append(kind or "")
        if kind == "run":
            run.run_id = record.run.run_id
            run.name = record.run.display_name
            run.group = record.run.run_group
            run.project = record.run.project
            run.tags = list(record.run.tags)
            for item in record.run.config.update:
                key = item.key or "/".join(item.nested_key)
                run.config[key] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                key = item.key or "/".join(item.nested_key)
                run.config[key] = json.loads(item.value_json)
        elif kind == "history":
            row = {}
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            run.history.append(row)
        elif kind == "metric":
            name = record.metric.name or record.metric.glob_name
            run.metrics[name] = record.metric.step_metric
    return run
