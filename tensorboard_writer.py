"""TensorBoard event files written without TensorBoard or TensorFlow: scalars and images (GIFs play as
animations in TensorBoard's image dashboard), one folder per run, and a reader for them (the tests read what
was written).

An event file is a sequence of TFRecords, each `uint64 length, uint32 masked CRC-32C of the length, data,
uint32 masked CRC-32C of the data` (little-endian), whose data is a serialised `Event` protocol buffer:
field 1 wall_time (double), 2 step (int64), 3 file_version (string, the first event), 5 summary (Summary:
repeated field 1 Value: 1 tag (string), 2 simple_value (float), 4 image (Image: 1 height, 2 width,
3 colorspace (int32), 4 encoded_image_string (bytes)))). The few fields needed are encoded here by hand."""

import io
import os
import socket
import struct
import sys
import time
from typing import Mapping, Sequence

from config import variant_name
from tracking import numeric_metrics

_CRC32C_POLY = 0x82F63B78  # the Castagnoli polynomial, reflected


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (_CRC32C_POLY if crc & 1 else 0)
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(data: bytes) -> bytes:
    """One TFRecord holding `data`."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


# Protocol-buffer encoding of the fields used: varint (wire type 0), 64-bit (1), length-delimited (2), 32-bit (5).

def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 as two's complement
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire_type) + payload


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _field(number, 2, _varint(len(payload)) + payload)


def scalar_value(tag: str, value: float) -> bytes:
    """A Summary.Value holding a scalar."""
    return _bytes_field(1, tag.encode()) + _field(2, 5, struct.pack("<f", value))


def image_value(tag: str, encoded: bytes, height: int, width: int, colorspace: int = 3) -> bytes:
    """A Summary.Value holding an encoded image (PNG, or GIF for an animation)."""
    image = (_field(1, 0, _varint(height)) + _field(2, 0, _varint(width)) + _field(3, 0, _varint(colorspace))
             + _bytes_field(4, encoded))
    return _bytes_field(1, tag.encode()) + _bytes_field(4, image)


def event(wall_time: float, step: int, summary_values: Sequence[bytes] = (), file_version: str | None = None) -> bytes:
    data = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
    if file_version is not None:
        data += _bytes_field(3, file_version.encode())
    if summary_values:
        data += _bytes_field(5, b"".join(_bytes_field(1, value) for value in summary_values))
    return data


class EventFileWriter:
    """One event file in `folder`, named as TensorBoard expects (`events.out.tfevents.TIME.HOST`); each `add`
    appends one event and flushes it, so TensorBoard sees the run as it goes."""

    def __init__(self, folder: str):
        os.makedirs(folder, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
        self.path = os.path.join(folder, name)
        self._file = open(self.path, "ab")
        self._write(event(time.time(), 0, file_version="brain.Event:2"))

    def _write(self, data: bytes):
        self._file.write(record(data))
        self._file.flush()

    def add_scalars(self, step: int, scalars: Mapping[str, float]):
        if scalars:
            self._write(event(time.time(), step, [scalar_value(tag, float(v)) for tag, v in scalars.items()]))

    def add_image_file(self, step: int, tag: str, path: str):
        """Adds a PNG or GIF file as an image (an animation for a GIF)."""
        from PIL import Image

        with open(path, "rb") as file:
            encoded = file.read()
        with Image.open(io.BytesIO(encoded)) as image:
            width, height = image.size
        self._write(event(time.time(), step, [image_value(tag, encoded, height, width)]))

    def close(self):
        self._file.close()


class TensorBoardSink:
    """The run's records and media as TensorBoard event files, one folder per run under `directory`
    (`seed0`, or `VARIANT-seed0` in a sweep): the numeric fields of each record (as the wandb runs get them)
    against `env_steps`, and the media files (video/...) as images. Like wandb, best effort: an error writing
    prints one warning and turns the sink off, training goes on."""

    def __init__(self, directory: str, seeds: Sequence[int], variants: Sequence[Mapping[str, float]] | None = None):
        variants = variants or [{} for _ in seeds]
        self.directory = directory
        self.folders = [os.path.join(directory, f"{variant_name(v) + '-' if v else ''}seed{seed}")
                        for seed, v in zip(seeds, variants)]
        self._writers = [EventFileWriter(folder) for folder in self.folders]

    def log_block(self, records: Sequence[Mapping], media: Sequence[Mapping[str, str]] | None = None):
        """One block: a record per run (its numeric fields at its env_steps) and, if given, each run's media
        files ({tag: path})."""
        try:
            for writer, record in zip(self._writers, records):
                writer.add_scalars(int(record["env_steps"]),
                                   {k: v for k, v in numeric_metrics(record).items() if k != "env_steps"})
        except (OSError, ValueError) as error:
            self._fail(error)
        if media and records:
            self.log_media(int(records[0]["env_steps"]), media)

    def log_media(self, env_steps: int, media: Sequence[Mapping[str, str]]):
        """Each run's media files ({tag: path}, PNG or GIF) as images at `env_steps`."""
        try:
            for writer, files in zip(self._writers, media):
                for tag, path in files.items():
                    writer.add_image_file(env_steps, tag, path)
        except (OSError, ValueError) as error:
            self._fail(error)

    def _fail(self, error: BaseException):
        print(f"warning: TensorBoard logging turned off ({type(error).__name__}: {error}); training goes on, "
              "metrics are still in the output file", file=sys.stderr)
        self.close()

    def close(self):
        writers, self._writers = self._writers, []
        for writer in writers:
            writer.close()


# ---------------------------------------------------------------------------------------------------------
# Reading: what TensorBoard reads, for checking the files.

class CorruptEventFile(ValueError):
    pass


def read_records(path: str) -> list[bytes]:
    """The data of every TFRecord in `path`, each CRC checked; raises CorruptEventFile otherwise."""
    with open(path, "rb") as file:
        data = file.read()
    records, position = [], 0
    while position < len(data):
        if position + 12 > len(data):
            raise CorruptEventFile(f"{path}: truncated record header at byte {position}")
        length_bytes = data[position:position + 8]
        (length,), (length_crc,) = struct.unpack("<Q", length_bytes), struct.unpack("<I", data[position + 8:
                                                                                              position + 12])
        if masked_crc32c(length_bytes) != length_crc:
            raise CorruptEventFile(f"{path}: bad length checksum at byte {position}")
        body = data[position + 12:position + 12 + length]
        end = position + 12 + length
        if len(body) != length or end + 4 > len(data):
            raise CorruptEventFile(f"{path}: truncated record at byte {position}")
        if masked_crc32c(body) != struct.unpack("<I", data[end:end + 4])[0]:
            raise CorruptEventFile(f"{path}: bad data checksum at byte {position}")
        records.append(body)
        position = end + 4
    return records


def _parse_fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs of one protocol-buffer message: ints for varint fields, bytes otherwise."""
    fields, position = [], 0

    def varint():
        nonlocal position
        value, shift = 0, 0
        while True:
            byte = data[position]
            position += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while position < len(data):
        key = varint()
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            fields.append((number, varint()))
        elif wire_type == 1:
            fields.append((number, data[position:position + 8]))
            position += 8
        elif wire_type == 2:
            length = varint()
            fields.append((number, data[position:position + length]))
            position += length
        elif wire_type == 5:
            fields.append((number, data[position:position + 4]))
            position += 4
        else:
            raise CorruptEventFile(f"unsupported protocol-buffer wire type {wire_type}")
    return fields


def read_events(path: str) -> list[dict]:
    """The events of an event file: {"wall_time", "step", "file_version"?, "scalars": {tag: value},
    "images": {tag: {"height", "width", "encoded"}}}."""
    events = []
    for data in read_records(path):
        out = {"step": 0, "scalars": {}, "images": {}}
        for number, value in _parse_fields(data):
            if number == 1:
                out["wall_time"] = struct.unpack("<d", value)[0]
            elif number == 2:
                out["step"] = value
            elif number == 3:
                out["file_version"] = value.decode()
            elif number == 5:
                for _, summary_value in _parse_fields(value):
                    fields = dict(_parse_fields(summary_value))
                    tag = fields[1].decode()
                    if 2 in fields:
                        out["scalars"][tag] = struct.unpack("<f", fields[2])[0]
                    if 4 in fields:
                        image = dict(_parse_fields(fields[4]))
                        out["images"][tag] = {"height": image[1], "width": image[2], "encoded": image[4]}
        events.append(out)
    return events
