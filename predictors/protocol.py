"""Wire schema of the predictor service, version 2 (msgpack maps, one frame per message). Documented in full in
``docs/predictor.md``; this module is the one place that encodes and validates it (CacheOPT C1 service).

Requests (client DEALER -> service ROUTER)::

    {v:2, type:"predict", items:[{rid:str, text?:str, token_ids?:[int], max_new_tokens:int,
                                  source?:str, class?:str}]}
    {v:2, type:"stats", arrival_rate:float, pool:{capacity_tokens:int, used_tokens:int, running:int}}
    {v:2, type:"finish", rid:str, output_len:int}
    {v:2, type:"ping", t?:float}

Replies (service -> client)::

    {v:2, type:"predict", levels:[float], items:[{rid, point, bound, conf, q:[float]}], errors:[{rid, error}]}
    {v:2, type:"reservation", conf, reserve_tokens, arrival_rate, refused}
    {v:2, type:"ack", rid}
    {v:2, type:"pong", t, instance, model, bound, conf, fallback_bound, levels, counters, refused, calibration}
    {v:2, type:"error", error:<code>, detail:str, rid?}

``q`` are the request's calibrated quantiles of its *total* output length at ``levels`` (monotone, capped at
``max_new_tokens``); ``bound`` is the quantile at the service's current confidence ``conf``. ``source`` names who
answers (a model the predictor was trained on, e.g. ``alpacaeval_gpt4_0314``; else ignored); ``class`` (default:
``source``) names the calibration class the finish feedback adapts.

Error codes: ``oversized`` (frame above the limit), ``malformed`` (not msgpack / not a map / several frames / wrong
field types), ``encoding`` (invalid UTF-8), ``version`` (``v`` is not 2: v1 had no quantiles), ``type`` (unknown
``type``), ``value`` (a number that is NaN, infinite, negative or out of range), ``internal`` (a bug: the message is
dropped, the service goes on), ``item`` (per item, inside a predict reply: empty prompt, bad token ids, bad rid).
"""

from __future__ import annotations

import math
from typing import Any

import msgpack

VERSION = 2
MAX_FRAME_BYTES = 4 << 20  # a 100k-token prompt is ~0.4 MB as text or token ids; 4 MiB leaves room for batches
MAX_ITEMS = 4096
MAX_RID = 512  # characters of a request id
MAX_NAME = 128  # characters of a source / class name
MAX_TOKENS = 1 << 40  # any token count above this is not a real request
MAX_RATE = 1e7  # requests/s
TYPES = ("predict", "stats", "finish", "ping")
REPLY_TYPES = ("predict", "reservation", "ack", "pong", "error")


class ProtocolError(ValueError):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def pack(msg: dict[str, Any]) -> bytes:
    return msgpack.packb(msg, use_bin_type=True)


def unpack(frame: bytes, max_bytes: int = MAX_FRAME_BYTES, types: tuple[str, ...] = TYPES) -> dict[str, Any]:
    """Decode and check the envelope of one message (a request, or a reply with ``types=REPLY_TYPES``);
    raise :class:`ProtocolError` with a code on bad input."""
    if not isinstance(frame, bytes | bytearray | memoryview):
        raise ProtocolError("malformed", f"a frame must be bytes, got {type(frame).__name__}")
    if len(frame) > max_bytes:
        raise ProtocolError("oversized", f"frame of {len(frame)} bytes exceeds the {max_bytes}-byte limit")
    try:
        msg = msgpack.unpackb(frame, raw=False, strict_map_key=True, max_bin_len=max_bytes, max_str_len=max_bytes)
    except UnicodeDecodeError as e:
        raise ProtocolError("encoding", f"invalid UTF-8 in message: {e.reason} at byte {e.start}") from None
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise ProtocolError("malformed", f"not a msgpack message ({type(e).__name__})") from None
    if not isinstance(msg, dict):
        raise ProtocolError("malformed", f"message must be a map, got {type(msg).__name__}")
    v = msg.get("v")
    if v != VERSION or isinstance(v, bool):
        raise ProtocolError("version", f"protocol version {_short(v)} is not supported: this end speaks v{VERSION} "
                            "(predictors.protocol); upgrade the other end")  # fmt: skip
    if msg.get("type") not in types:
        raise ProtocolError("type", f"unknown type {_short(msg.get('type'))}; valid: {', '.join(types)}")
    return msg


def _short(x: Any) -> str:
    r = repr(x)
    return r if len(r) <= 40 else r[:37] + "..."


def error(code: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"v": VERSION, "type": "error", "error": code, "detail": detail, **extra}


def number(d: Any, key: str, lo: float, hi: float, integer: bool = False, where: str = "") -> float:
    """``d[key]`` as a finite number in ``[lo, hi]`` (an integer when ``integer``), or ProtocolError: ``malformed``
    for a missing field or another type, ``value`` for NaN, infinities and out-of-range numbers."""
    name = f"{where}{key}"
    if not isinstance(d, dict) or key not in d:
        raise ProtocolError("malformed", f"{name} is missing")
    x = d[key]
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise ProtocolError("malformed", f"{name} must be a number, got {type(x).__name__}")
    if integer and isinstance(x, float) and not (math.isfinite(x) and x.is_integer()):
        raise ProtocolError("value", f"{name} must be a whole number, got {_short(x)}")
    if isinstance(x, float) and not math.isfinite(x):
        raise ProtocolError("value", f"{name} must be finite, got {x}")
    if not lo <= x <= hi:
        raise ProtocolError("value", f"{name} must be in [{lo:g}, {hi:g}], got {_short(x)}")
    return int(x) if integer else float(x)


def name_of(d: dict[str, Any], key: str) -> str | None:
    x = d.get(key)
    if x is None:
        return None
    if not isinstance(x, str) or not 0 < len(x) <= MAX_NAME:
        raise ProtocolError("item", f"{key} must be a string of 1..{MAX_NAME} characters")
    return x


def prompt_of(item: Any) -> tuple[str, str | None, list[int] | None, int, str | None, str | None]:
    """(rid, text, token_ids, max_new_tokens, source, class) of one predict item, or ProtocolError('item', ...)."""
    if not isinstance(item, dict) or not isinstance(item.get("rid"), str) or not 0 < len(item["rid"]) <= MAX_RID:
        raise ProtocolError("item", f"item must be a map with a string rid of 1..{MAX_RID} characters")
    text, ids = item.get("text"), item.get("token_ids")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ProtocolError("item", f"text is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if text is not None and not isinstance(text, str):
        raise ProtocolError("item", "text must be a string")
    if ids is not None and not isinstance(ids, list):
        raise ProtocolError("item", "token_ids must be a list of integers")
    if ids is None and (text is None or not text.strip()):
        raise ProtocolError("item", "empty prompt")
    mnt = item.get("max_new_tokens")
    if not isinstance(mnt, int) or isinstance(mnt, bool) or not 0 < mnt <= MAX_TOKENS:
        raise ProtocolError("item", f"max_new_tokens must be an integer in [1, {MAX_TOKENS}]")
    source = name_of(item, "source")
    cls = name_of(item, "class") or source
    return item["rid"], text, ids, mnt, source, cls
