"""Read what a job wrote as data the worker can safely check, or refuse it with a reason.

Every output file comes from the sandbox, where the student's code could have written any bytes.
``torch.load(weights_only=True)`` runs no code, but on its own it still lets a few KiB of input
cost the worker gigabytes: it inflates DEFLATE-compressed records, and it accepts tensors whose
strides reuse elements (a stride-0 "1e9-element" tensor backed by 4 bytes), which the first
``isfinite`` or ``tolist`` in a check then materialises. So, in this order:

1. the file is at most ``MAX_FILE_BYTES`` (the job folder's reader already refused links);
2. the archive's records are all stored uncompressed, its pickle is small, its records few;
3. ``torch.load(weights_only=True)`` on the CPU;
4. the value is walked without recursion: plain containers only, none reached twice (no cycles,
   no exponential sharing), bounded depth and item count; every tensor a dense strided CPU tensor
   whose elements fit in its own storage, all of them together within ``MAX_TENSOR_BYTES``.

Only then may a grader's ``check`` do math on it.
"""

from __future__ import annotations

import io
import zipfile

import torch

MAX_FILE_BYTES = 64 << 20
MAX_PICKLE_BYTES = 4 << 20  # the structure (dicts, lists, strings, numbers); tensor data is separate
MAX_RECORDS = 4096
MAX_DEPTH = 32
MAX_ITEMS = 500_000
MAX_TENSOR_BYTES = 128 << 20  # logical bytes of every tensor together (views of one storage add up)
PLAIN = (str, bytes, int, float, bool, complex, type(None), torch.dtype, torch.device, torch.Size)


class BadOutput(Exception):
    """The output is not plain data within bounds; the message says what was wrong, for the student."""


def load(data: bytes) -> object:
    """The value in ``data`` (a job's ``torch.save`` file), checked as above."""
    if len(data) > MAX_FILE_BYTES:
        raise BadOutput(f"the output file is over {MAX_FILE_BYTES >> 20} MiB")
    check_archive(data)
    try:
        value = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - a subclass, a pickle trick, a truncated file
        raise BadOutput(
            "run() returned something other than plain tensors, numbers, strings, lists and dicts "
            f"({type(exc).__name__}: {str(exc)[:300]})"
        ) from None
    check_value(value)
    return value


def check_archive(data: bytes) -> None:
    """The zip archive ``torch.save`` writes: stored records only, a small pickle, few records."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise BadOutput(f"the output is not a torch.save archive ({exc})") from None
    if len(records) > MAX_RECORDS:
        raise BadOutput(f"the output archive has {len(records)} records (at most {MAX_RECORDS})")
    total = 0
    for record in records:
        if record.compress_type != zipfile.ZIP_STORED:
            raise BadOutput(f"the output archive's record {record.filename[:80]!r} is compressed")
        total += record.file_size
        if record.filename.endswith("data.pkl") and record.file_size > MAX_PICKLE_BYTES:
            raise BadOutput(f"the output's structure is over {MAX_PICKLE_BYTES >> 20} MiB")
    if total > len(data):
        raise BadOutput("the output archive claims more data than it holds")


def check_value(value: object) -> None:
    """Plain containers of plain values and dense tensors, within the bounds above."""
    stack = [(value, 0)]
    seen: set[int] = set()
    items = 0
    tensor_bytes = 0
    while stack:
        item, depth = stack.pop()
        items += 1
        if items > MAX_ITEMS:
            raise BadOutput(f"the output has more than {MAX_ITEMS} values")
        if isinstance(item, torch.Tensor):
            tensor_bytes += _tensor_bytes(item)
            if tensor_bytes > MAX_TENSOR_BYTES:
                raise BadOutput(f"the output's tensors hold more than {MAX_TENSOR_BYTES >> 20} MiB together")
            continue
        if isinstance(item, PLAIN):
            continue
        if not isinstance(item, (dict, list, tuple)):
            raise BadOutput(f"the output holds a {type(item).__name__}, not plain data")
        if depth >= MAX_DEPTH:
            raise BadOutput(f"the output is nested more than {MAX_DEPTH} levels deep")
        if id(item) in seen:
            raise BadOutput("the output holds the same list or dict twice (or inside itself)")
        seen.add(id(item))
        children = [*item.keys(), *item.values()] if isinstance(item, dict) else list(item)
        if len(children) > MAX_ITEMS:
            raise BadOutput(f"the output has more than {MAX_ITEMS} values")
        stack.extend((child, depth + 1) for child in children)


def _tensor_bytes(tensor: torch.Tensor) -> int:
    """The tensor's logical size, after refusing what would cost more than its own storage."""
    if tensor.layout != torch.strided or tensor.device.type != "cpu":
        raise BadOutput(f"the output holds a {tensor.layout} tensor on {tensor.device}; return dense tensors")
    if tensor.is_quantized or tensor.is_meta:
        raise BadOutput("the output holds a quantized or meta tensor; return plain tensors")
    logical = tensor.numel() * tensor.element_size()
    if logical > tensor.untyped_storage().nbytes():
        raise BadOutput(
            f"the output holds a tensor of shape {tuple(tensor.shape)} with strides {tensor.stride()} that "
            "reuses its elements (an expanded view); return .contiguous() tensors"
        )
    return logical
