"""The Open Inference Protocol's binary tensor extension (what ``tritonclient`` and KServe's clients send by
default): the body is a JSON header of ``Inference-Header-Content-Length`` bytes followed by raw tensor data,
each input carrying ``parameters.binary_data_size`` instead of ``data``; answers come back the same way for
outputs asked with ``parameters.binary_data`` (or the request's ``parameters.binary_data_output``).

Numbers are little-endian in their datatype's width (BOOL one byte); BYTES elements are each a 4-byte
little-endian length and that many bytes (UTF-8 text here). Pure functions: every mistake is a 400.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Optional

import numpy as np

from maas.serve.errors import ProtocolError
from maas.serve.protocols.oip.codec import NUMERIC, json_object

HEADER = "inference-header-content-length"


def request_object(body: bytes, header_length: Optional[str], holding: str) -> dict:
    """The request as a JSON object with every binary input decoded into its ``data`` (a numpy array, or a
    list of strings for BYTES). ``header_length``: the Inference-Header-Content-Length header, if sent."""
    if header_length is None:
        return json_object(body, holding)
    if not (header_length.isascii() and header_length.isdigit() and len(header_length) <= 12) or \
            int(header_length) > len(body):
        raise ProtocolError(400, f"{HEADER} is {header_length[:40]!r}: it must be the byte length of the JSON "
                                 f"header at the start of the {len(body)}-byte body")
    n = int(header_length)
    req = json_object(body[:n], holding)
    binary, offset = memoryview(body)[n:], 0
    for i, tensor in enumerate(req.get("inputs") if isinstance(req.get("inputs"), list) else []):
        params = tensor.get("parameters") if isinstance(tensor, dict) else None
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is None:
            continue
        name = tensor.get("name", i)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
            raise ProtocolError(400, f"input '{name}': binary_data_size {size!r} does not fit the "
                                     f"{len(binary) - offset} binary bytes left after the header")
        if "data" in tensor:
            raise ProtocolError(400, f"input '{name}': give 'data' or parameters.binary_data_size, not both")
        tensor["data"] = decode_raw(name, tensor.get("datatype"), tensor.get("shape"), binary[offset:offset + size])
        offset += size
    if offset != len(binary):
        raise ProtocolError(400, f"{len(binary) - offset} bytes after the header belong to no input "
                                 "(check each input's binary_data_size)")
    return req


def decode_raw(name, datatype, shape, chunk: memoryview):
    """One tensor's raw bytes -> a numpy array (numeric datatypes) or a list of str (BYTES); 400 when they
    do not fit the datatype or shape."""
    if datatype == "BYTES":
        values, pos, raw = [], 0, chunk.tobytes()
        while pos < len(raw):
            if pos + 4 > len(raw):
                raise ProtocolError(400, f"input '{name}': BYTES element {len(values)} has a cut length prefix")
            (length,) = struct.unpack_from("<I", raw, pos)
            if pos + 4 + length > len(raw):
                raise ProtocolError(400, f"input '{name}': BYTES element {len(values)} claims {length} bytes, "
                                         f"{len(raw) - pos - 4} are left")
            try:
                values.append(raw[pos + 4:pos + 4 + length].decode("utf-8"))
            except UnicodeDecodeError:
                raise ProtocolError(400, f"input '{name}': BYTES element {len(values)} is not UTF-8 text") from None
            pos += 4 + length
        return values
    if datatype not in NUMERIC:
        raise ProtocolError(400, f"input '{name}': datatype {datatype!r} cannot be sent as binary data; "
                                 f"use one of {', '.join(NUMERIC)} or BYTES")
    dtype = np.dtype(NUMERIC[datatype]).newbyteorder("<")
    if len(chunk) % dtype.itemsize:
        raise ProtocolError(400, f"input '{name}': {len(chunk)} bytes is not a whole number of {datatype} values "
                                 f"({dtype.itemsize} bytes each)")
    values = np.frombuffer(chunk, dtype=dtype)
    if isinstance(shape, list) and all(isinstance(d, int) for d in shape) and math.prod(shape) != values.size:
        raise ProtocolError(400, f"input '{name}': shape {shape} needs {math.prod(shape)} values, the binary data "
                                 f"holds {values.size}")
    return values.astype(dtype.newbyteorder("="), copy=False)


def wants_binary(req: dict) -> set:
    """Names of the outputs to answer in binary: all (``"*"``) when the request's parameters say
    ``binary_data_output``, else those whose own parameters say ``binary_data``."""
    params = req.get("parameters")
    if isinstance(params, dict) and params.get("binary_data_output") is True:
        return {"*"}
    outputs = req.get("outputs") if isinstance(req.get("outputs"), list) else []
    return {o["name"] for o in outputs if isinstance(o, dict) and isinstance(o.get("parameters"), dict)
            and o["parameters"].get("binary_data") is True and isinstance(o.get("name"), str)}


def encode_response(out: dict, binary: set) -> tuple[bytes, Optional[int]]:
    """The response body: JSON alone (header length None), or the JSON header then the named outputs' data
    in binary, each with parameters.binary_data_size (header length: the JSON's byte count)."""
    if not binary:
        return json.dumps(out).encode(), None
    chunks = []
    for tensor in out["outputs"]:
        if "*" not in binary and tensor["name"] not in binary:
            continue
        raw = encode_raw(tensor["datatype"], tensor.pop("data"))
        tensor["parameters"] = {**tensor.get("parameters", {}), "binary_data_size": len(raw)}
        chunks.append(raw)
    header = json.dumps(out).encode()
    return header + b"".join(chunks), len(header)


def encode_raw(datatype: str, data) -> bytes:
    """One tensor's values -> its raw bytes (little-endian numbers; BYTES: length-prefixed UTF-8)."""
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(b)) + b for b in (str(v).encode() for v in data))
    return np.asarray(data, dtype=np.dtype(NUMERIC[datatype]).newbyteorder("<")).tobytes()
