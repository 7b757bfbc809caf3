"""Validate an uploaded ``.safetensors`` checkpoint from its header alone (pure stdlib, never unpickles).

A safetensors file is ``u64 little-endian N`` + ``N`` bytes of JSON header + raw tensor data. The header
maps tensor names to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets into the data part).
Keys are then matched against the base model's key manifest ``common/base_keys/<preset>.json``
(``{"unet": {diffusers_key: shape}, "text_encoder": {key: shape}}``) to tell the upload format:

* ``lora``: LoRA keys (diffusers/peft ``unet.…lora_A.weight`` or kohya ``lora_unet_…lora_down.weight``)
  whose target modules exist in the base with matching shapes;
* ``unet``: a full diffusers UNet, exactly the base's key set and shapes;
* ``ldm``: a single-file LDM checkpoint whose ``model.diffusion_model.*`` shapes equal the base UNet's
  as a multiset, and whose text encoder, if it has one, has exactly the base's keys and shapes (VAE/EMA
  parts allowed and ignored).

Which key means what is `common.checkpoint_rules`, the table the engine's loader reads too.
"""

from __future__ import annotations

import json
import math
import struct
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from common.checkpoint_rules import LDM_UNET_PREFIX, ldm_stray_keys, ldm_text_encoder_keys, upload_format
from common.errors import InvalidCheckpoint

BASE_KEYS_DIR = Path(__file__).parent / "base_keys"
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
               "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
FIELD = "checkpoint"


@dataclass(frozen=True)
class HeaderInfo:
    """What the header says: tensors ``{name: (dtype, shape)}`` and its (validated) string metadata."""

    tensors: dict[str, tuple[str, tuple[int, ...]]]
    metadata: dict[str, str]


@dataclass(frozen=True)
class CheckpointSummary:
    format: str  # lora, unet or ldm: how the worker will load it


def _bad(message: str) -> InvalidCheckpoint:
    return InvalidCheckpoint(message, field=FIELD)


def header_length(prefix: bytes, max_header_bytes: int) -> int:
    """Length N of the JSON header from the first 8 bytes, bounded by `max_header_bytes`."""
    if len(prefix) < 8:
        raise _bad(f"file is {len(prefix)} bytes; not a safetensors file (needs an 8-byte header length)")
    (length,) = struct.unpack("<Q", prefix[:8])
    if length < 2 or length > max_header_bytes:
        raise _bad(f"safetensors header length {length} is outside 2..{max_header_bytes} bytes "
                   "(not a safetensors file?)")
    return length


# An SD 1.5 single-file checkpoint with its text encoder and VAE lists ~1,100 tensors of ~10 values each.
MAX_HEADER_ELEMENTS = 200_000


def parse_header(head: bytes, file_size: int, max_header_bytes: int) -> HeaderInfo:
    """Parse and check the header; `head` holds at least the first ``8 + N`` bytes of the file."""
    length = header_length(head, max_header_bytes)
    if 8 + length > file_size:
        raise _bad(f"safetensors header length {length} exceeds the file size {file_size}")
    raw = head[8:8 + length]
    if len(raw) < length:
        raise _bad("truncated safetensors header")
    elements = raw.count(b",")  # JSON values are comma-separated: bounds the parse before it starts
    if elements > MAX_HEADER_ELEMENTS:
        raise _bad(f"safetensors header lists {elements} values, more than the {MAX_HEADER_ELEMENTS} a "
                   "checkpoint's tensor table needs")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, an int past 4300 digits, deep nesting
        raise _bad(f"safetensors header is not valid JSON: {str(exc)[:200]}") from exc
    if not isinstance(header, dict):
        raise _bad("safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _bad("safetensors __metadata__ must map strings to strings")
    tensors, spans = {}, []
    for name, entry in header.items():
        dtype, shape, offsets = _entry(name, entry)
        expected = math.prod(shape) * DTYPE_BYTES[dtype]
        if offsets[1] - offsets[0] != expected:
            raise _bad(f"tensor {name!r}: data_offsets {offsets} hold {offsets[1] - offsets[0]} bytes, "
                       f"but {dtype}{list(shape)} needs {expected}")
        tensors[name] = (dtype, shape)
        spans.append((offsets[0], offsets[1], name))
    data_size = file_size - 8 - length
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise _bad(f"tensor {name!r}: data_offsets start at {begin}, expected {position} (overlap or gap)")
        position = end
    if position != data_size:
        raise _bad(f"tensor data ends at byte {position} but the file holds {data_size} bytes of data")
    return HeaderInfo(tensors=tensors, metadata=metadata)


def _entry(name: str, entry) -> tuple[str, tuple[int, ...], tuple[int, int]]:
    if not isinstance(entry, dict):
        raise _bad(f"tensor {name!r}: header entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:  # a list or object is not even hashable
        raise _bad(f"tensor {name!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise _bad(f"tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
            or offsets[0] > offsets[1]):
        raise _bad(f"tensor {name!r}: data_offsets {offsets!r} are not [begin, end] with begin <= end")
    return dtype, tuple(shape), (offsets[0], offsets[1])


@lru_cache
def load_base_keys(preset: str) -> dict[str, dict[str, tuple[int, ...]]]:
    """The key manifest of a base preset: ``{"unet": {key: shape}, "text_encoder": {key: shape}}``."""
    path = BASE_KEYS_DIR / f"{preset}.json"
    if not path.is_file():
        raise _bad(f"no key manifest for base model {preset!r}")
    raw = json.loads(path.read_text())
    return {part: {k: tuple(v) for k, v in raw.get(part, {}).items()} for part in ("unet", "text_encoder")}


def check_against_base(info: HeaderInfo, base: dict[str, dict[str, tuple[int, ...]]]) -> CheckpointSummary:
    """Detect the format and check keys/shapes against the base; raise `InvalidCheckpoint` naming the problem."""
    keys = list(info.tensors)
    if not keys:
        raise _bad("checkpoint holds no tensors")
    shapes = {k: s for k, (_, s) in info.tensors.items()}
    fmt = upload_format(keys)
    if fmt == "lora":
        _check_lora(shapes, base)
    elif fmt == "ldm":
        _check_ldm(shapes, base)
    else:
        _check_keys(shapes, base["unet"], "full UNet checkpoint",
                    "(expected a LoRA, a diffusers UNet or a single-file LDM checkpoint)")
    return CheckpointSummary(format=fmt)


def _check_keys(shapes: dict, expected: dict, what: str, hint: str = "") -> None:
    """Exactly the keys of `expected`, each with its shape (what the engine's strict load needs)."""
    unknown = sorted(set(shapes) - set(expected))
    if unknown:
        raise _bad(f"{what}: {len(unknown)} keys unknown to the base, e.g. {unknown[:3]} {hint}".rstrip())
    missing = sorted(set(expected) - set(shapes))
    if missing:
        raise _bad(f"{what} lacks {len(missing)} keys of the base, e.g. {missing[:3]}")
    for key, shape in shapes.items():
        if tuple(shape) != expected[key]:
            raise _bad(f"{what}: tensor {key!r} has shape {list(shape)}, the base has {list(expected[key])}")


def _check_ldm(shapes: dict, base: dict) -> None:
    stray = ldm_stray_keys(shapes)
    if stray:
        raise _bad(f"single-file checkpoint has {len(stray)} unknown keys, e.g. {stray[:3]}")
    got = Counter(tuple(s) for k, s in shapes.items() if k.startswith(LDM_UNET_PREFIX))
    want = Counter(base["unet"].values())
    if got != want:
        extra, lacking = got - want, want - got
        raise _bad(f"single-file UNet tensors do not fit the base: unexpected shapes {sorted(extra)[:3]}, "
                   f"missing shapes {sorted(lacking)[:3]}")
    text = ldm_text_encoder_keys(shapes, base["text_encoder"])
    if text:
        _check_keys({name: shapes[key] for key, name in text.items()}, base["text_encoder"],
                    "single-file text encoder")


def _modules(part: dict) -> dict[str, tuple[int, ...]]:
    """Module name -> weight shape, under both dotted and kohya (underscore) names."""
    out = {}
    for key, shape in part.items():
        if key.endswith(".weight"):
            module = key[: -len(".weight")].removeprefix("text_model.")
            out[module] = shape
            out[module.replace(".", "_")] = shape
    return out


def _lora_target(key: str) -> tuple[str, str, str] | None:
    """(part, module, kind) of a LoRA key, kind one of "down", "up", "alpha"; None if unrecognised."""
    prefixes = (("unet.", "unet"), ("text_encoder.", "text_encoder"), ("lora_unet_", "unet"),
                ("lora_te_", "text_encoder"), ("lora_te1_", "text_encoder"))
    match = next(((prefix, part) for prefix, part in prefixes if key.startswith(prefix)), None)
    if match is None:
        return None
    rest = key[len(match[0]):]
    part = match[1]
    if rest.endswith(".alpha"):
        return part, rest[: -len(".alpha")], "alpha"
    for marker, kind in ((".lora_A.", "down"), (".lora_down.", "down"), (".lora.down.", "down"),
                         (".lora_B.", "up"), (".lora_up.", "up"), (".lora.up.", "up")):
        if marker in rest:
            module = rest.split(marker)[0]
            return part, module.removeprefix("text_model."), kind
    return None


def _check_lora(shapes: dict, base: dict) -> None:
    modules = {part: _modules(base[part]) for part in ("unet", "text_encoder")}
    for key, shape in shapes.items():
        target = _lora_target(key)
        if target is None:
            raise _bad(f"LoRA key {key!r} is not recognised (expected unet./text_encoder./lora_unet_/lora_te_ "
                       "prefixes with lora_A/lora_B/lora_down/lora_up/alpha)")
        part, module, kind = target
        if module not in modules[part]:
            raise _bad(f"LoRA key {key!r} targets module {module!r}, which the base {part} does not have")
        weight = modules[part][module]
        if len(weight) < 2 and kind != "alpha":
            raise _bad(f"LoRA key {key!r} targets {module!r}, a {len(weight)}-D parameter; LoRA adapts "
                       "linear and conv layers")
        if kind == "alpha":
            if len(shape) > 1 or (shape and shape[0] != 1):
                raise _bad(f"LoRA alpha {key!r} must be a scalar, has shape {list(shape)}")
        elif kind == "down" and (len(shape) < 2 or shape[1] != weight[1]):
            raise _bad(f"LoRA down/A tensor {key!r} has shape {list(shape)}; its module takes {weight[1]} inputs")
        elif kind == "up" and (len(shape) < 2 or shape[0] != weight[0]):
            raise _bad(f"LoRA up/B tensor {key!r} has shape {list(shape)}; its module has {weight[0]} outputs")
