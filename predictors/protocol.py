"""Wire schema of the predictor service, version 1 (msgpack maps, one frame per message). Documented in full in
``docs/predictor.md``; this module is the one place that encodes and validates it (CacheOPT C1 service).

Requests (client DEALER -> service ROUTER)::

    {v:1, type:"predict", items:[{rid:str, text?:str, token_ids?:[int], max_new_tokens:int}], conf?:float}
    {v:1, type:"stats", arrival_rate:float, pool:{capacity_tokens, used_tokens, running}}
    {v:1, type:"finish", rid:str, output_len:int}
    {v:1, type:"ping", t?:float}

Replies (service -> client)::

    {v:1, type:"predict", items:[{rid, point, bound, conf}], errors:[{rid, error}]}
    {v:1, type:"reservation", conf, reserve_tokens, arrival_rate}
    {v:1, type:"ack", rid}
    {v:1, type:"pong", t, instance, model, bound, fallback_bound, counters}
    {v:1, type:"error", error:<code>, detail:str, rid?}

Error codes: ``oversized`` (frame above the limit), ``malformed`` (not msgpack / not a map / wrong field types),
``encoding`` (invalid UTF-8), ``version`` (``v`` is not 1), ``type`` (unknown ``type``), ``item`` (per-item,
inside a predict reply: empty prompt, bad token ids, missing rid).
"""

from __future__ import annotations

from typing import Any

import msgpack

VERSION = 1
MAX_FRAME_BYTES = 4 << 20  # a 100k-token prompt is ~0.4 MB as text or token ids; 4 MiB leaves room for batches
MAX_ITEMS = 4096
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
    if msg.get("v") != VERSION:
        raise ProtocolError("version", f"unsupported version {msg.get('v')!r}; this service speaks v{VERSION}")
    if msg.get("type") not in types:
        raise ProtocolError("type", f"unknown type {msg.get('type')!r}; valid: {', '.join(types)}")
    return msg


def error(code: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"v": VERSION, "type": "error", "error": code, "detail": detail, **extra}


def prompt_of(item: Any) -> tuple[str, str | None, list[int] | None, int]:
    """(rid, text, token_ids, max_new_tokens) of one predict item, or ProtocolError('item', ...)."""
    if not isinstance(item, dict) or not isinstance(item.get("rid"), str):
        raise ProtocolError("item", "item must be a map with a string rid")
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
    if not isinstance(mnt, int) or isinstance(mnt, bool) or mnt <= 0:
        raise ProtocolError("item", "max_new_tokens must be a positive integer")
    return item["rid"], text, ids, mnt
