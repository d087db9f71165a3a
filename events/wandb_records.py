"""Read the records of a W&B transaction log (``run-<id>.wandb``) with wandb's own proto classes.

wandb 0.31 ships no reader for the file it writes, so the framing is decoded here and every
payload goes to ``wandb.proto.wandb_internal_pb2.Record`` -- wandb's parser, not ours, decides
what a record holds. The framing (measured, see the project's FACTS): a 7-byte header
(``b":W&B"``, magic ``0xBEE1`` little-endian, version ``0``), then LevelDB-log blocks of 32 KiB
(the header counts towards the first): chunks of ``<crc32 u32, length u16, type u8>`` + data,
the crc32 taken over the type byte and the data, type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4,
zero padding where a block has fewer than 7 bytes left.

wandb-core writes whole blocks and flushes the partial last one only when the run finishes, so
the file of a killed run ends early, possibly inside a record; ``stop_at_damage`` reads such a
file up to the last complete record.
"""
from __future__ import annotations

import json
import math
import struct
import zlib
from typing import TYPE_CHECKING, Iterable, Iterator, Optional

if TYPE_CHECKING:
    from wandb.proto.wandb_internal_pb2 import Record

HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK_SIZE = 32 * 1024
_CHUNK_HEADER = struct.Struct("<IHB")
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


class DamagedRunFile(ValueError):
    """A ``.wandb`` file that is not a transaction log, or holds a chunk that does not check out."""


def iter_records(path: str, *, stop_at_damage: bool = False) -> Iterator["Record"]:
    """Yield every Record of a ``.wandb`` file, in write order, reading one block at a time.

    Args:
        path: a ``run-<id>.wandb`` file.
        stop_at_damage: end quietly at the first chunk that is cut short, fails its checksum or
            breaks the FIRST/MIDDLE/LAST sequence -- the tail of a run whose wandb-core was
            killed -- instead of raising ``DamagedRunFile``. A file cut inside its header
            then holds no records. A record whose chunks stop at the end of the file is
            incomplete and never yielded, in either mode.

    Raises:
        DamagedRunFile: a bad header, or (unless ``stop_at_damage``) a damaged chunk.
        OSError: the file cannot be read.
    """
    from google.protobuf.message import DecodeError
    from wandb.proto.wandb_internal_pb2 import Record

    with open(path, "rb") as f:
        header = f.read(len(HEADER))
        if header != HEADER:
            if stop_at_damage and HEADER.startswith(header):  # killed before the header was written
                return
            raise DamagedRunFile(f"{path}: not a W&B transaction log (header {header!r})")
        offset, block = len(HEADER), f.read(BLOCK_SIZE - len(HEADER))
        pending: Optional[bytearray] = None  # data of a record whose LAST chunk is still to come
        while block:
            pos = 0
            while len(block) - pos >= _CHUNK_HEADER.size:
                checksum, length, kind = _CHUNK_HEADER.unpack_from(block, pos)
                if kind == 0 and length == 0:  # zero padding up to the end of the block
                    break
                start = pos + _CHUNK_HEADER.size
                data = block[start : start + length]
                problem = _chunk_problem(checksum, length, kind, data, pending is not None)
                if problem:
                    if stop_at_damage:
                        return
                    raise DamagedRunFile(f"{path}: {problem} at byte {offset + pos}")
                pos = start + length
                if kind in (_FULL, _FIRST):
                    pending = bytearray(data)
                else:
                    pending += data
                if kind in (_FULL, _LAST):
                    record = Record()
                    try:
                        record.ParseFromString(bytes(pending))
                    except DecodeError as error:
                        if stop_at_damage:
                            return
                        problem = f"undecodable record ending at byte {offset + pos}"
                        raise DamagedRunFile(f"{path}: {problem}") from error
                    pending = None
                    yield record
            offset += len(block)
            block = f.read(BLOCK_SIZE)


def _chunk_problem(checksum: int, length: int, kind: int, data: bytes, record_open: bool) -> str:
    """Why a chunk cannot be taken as written ("" when it can)."""
    if len(data) < length:
        return f"chunk cut short ({len(data)} of {length} bytes)"
    if zlib.crc32(bytes([kind]) + data) != checksum:
        return "checksum mismatch"
    if kind not in (_FULL, _FIRST, _MIDDLE, _LAST):
        return f"unknown chunk type {kind}"
    if record_open != (kind in (_MIDDLE, _LAST)):
        return "chunk out of sequence"
    return ""


def last_logged_iteration(paths: Iterable[str], key: str = "iteration") -> Optional[int]:
    """The highest ``key`` value among the history rows that the run files hold in full.

    Reads each file up to its first damaged chunk (see ``iter_records``). ``None`` when no
    history row holds ``key``.

    Raises:
        DamagedRunFile: a file that is not a transaction log.
        OSError: a file that cannot be read.
    """
    last: Optional[int] = None
    for path in paths:
        for record in iter_records(path, stop_at_damage=True):
            if record.WhichOneof("record_type") != "history":
                continue
            for item in record.history.item:
                if item.key == key or list(item.nested_key) == [key]:
                    value = json.loads(item.value_json)
                    if _is_number(value):
                        last = int(value) if last is None else max(last, int(value))
    return last


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
