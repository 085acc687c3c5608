"""Scheduler-side client of the predictor service: never blocks, never raises (CacheOPT C1).

Why: the scheduler must not wait for a model. A request is submitted the moment it arrives (before it is
schedulable); by the time the scheduler considers it the answer has usually come. If not, the scheduler takes the
documented fallback bound (:meth:`PredictorClient.fallback`), counted in ``counters['fallbacks']``.

Fallback bound: ``fallback='max_new_tokens'`` (default) reserves the request's cap — the safe choice, what SGLang
does without a predictor. ``fallback='mean'`` uses the service's last advertised constant bound (the training-length
quantile at ``alpha``, sent in every pong), capped by ``max_new_tokens``; before any pong it is ``max_new_tokens``.

Answers (protocol v2) carry the request's calibrated quantiles; :meth:`PredictorClient.estimate` returns them as
``LengthEstimate.dist`` (a :class:`~policies.length_dist.LengthDistribution`) beside ``point``/``bound``/
``confidence``, so consumers of either form work.

Robustness: a DEALER socket with linger 0, bounded queues (HWM) and non-blocking sends. Every submitted request
stays *outstanding* until its answer arrives; outstanding requests are resent when (a) the service leaves a message
unanswered for ``dead_after_s`` (the socket is closed and recreated, then everything outstanding goes again; an idle
scheduler that sends nothing never looks like a dead service), (b) a pong shows a new
service instance (a restart: messages queued to the old one were lost), or (c) a send found the queue full. Answers
are idempotent (a duplicate overwrites), so nothing is lost and nothing fails. The reservation decision (confidence,
reserve tokens) expires ``reservation_ttl_s`` after it was received: a silent service cannot pin the pool to a stale
decision; :meth:`reservation` then returns None and the host uses its configured default.

Feedback: :meth:`report_finish` sends the exact final output length the host gives (an integer; anything else is
refused here, counted in ``finish_invalid``, and not sent).
"""

from __future__ import annotations

import logging
import operator
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from policies.length_dist import LengthDistribution
from policies.views import LengthEstimate
from predictors.protocol import MAX_NAME, REPLY_TYPES, VERSION, ProtocolError, pack, unpack

log = logging.getLogger("predictors.client")


class PredictorClient:
    def __init__(self, endpoint: str, fallback: str = "max_new_tokens", ping_interval_s: float = 0.25,
                 dead_after_s: float = 1.0, hwm: int = 10000, max_known: int = 100_000,
                 reservation_ttl_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        if fallback not in ("max_new_tokens", "mean"):
            raise ValueError(f"--ext-predictor-fallback: unknown fallback {fallback!r}")
        self.endpoint, self.fallback_kind, self.hwm, self.max_known = endpoint, fallback, hwm, max_known
        self.ping_interval_s, self.dead_after_s, self.clock = ping_interval_s, dead_after_s, clock
        self.reservation_ttl_s = reservation_ttl_s
        self.ctx = zmq.Context.instance()
        self.sock: zmq.Socket | None = None
        self.outstanding: OrderedDict[str, dict[str, Any]] = OrderedDict()  # rid -> predict item, until answered
        self.unsent: set[str] = set()
        self.answers: OrderedDict[str, LengthEstimate] = OrderedDict()
        self.errors: dict[str, str] = {}  # rid -> the service's item error (the scheduler uses the fallback)
        self.counters: Counter[str] = Counter()
        self.instance: str | None = None
        self.fallback_bound: int | None = None
        self._reservation: tuple[float, int] | None = None
        self._asked_at: float | None = None  # first send since the service last said anything (silence clock)
        self._last_connect = self._last_ping = self.clock()
        self._connect()

    # -- connection -----------------------------------------------------------------------------------------------
    def _connect(self) -> None:
        try:
            if self.sock is not None:
                self.sock.close(0)
            s = self.ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, self.hwm)
            s.setsockopt(zmq.RCVHWM, self.hwm)
            s.setsockopt(zmq.IMMEDIATE, 1)  # queue only to a live connection: a dead peer makes sends fail fast
            s.connect(self.endpoint)
            self.sock = s
        except zmq.ZMQError as e:
            self.sock = None
            self.counters["connect_errors"] += 1
            log.warning("predictor client: cannot connect %s: %s", self.endpoint, e)
        self._last_connect = self.clock()  # the next reconnect waits dead_after_s at least
        self.unsent.update(self.outstanding)

    def _send(self, msg: dict[str, Any]) -> bool:
        if self._asked_at is None:  # a refused send counts too: a dead peer refuses them (IMMEDIATE)
            self._asked_at = self.clock()
        if self.sock is None:
            return False
        try:
            self.sock.send(pack(msg), zmq.NOBLOCK)
            return True
        except zmq.ZMQError:  # zmq.Again (queue full / no peer) or a closed socket
            self.counters["send_blocked"] += 1
            return False

    # -- scheduler API ------------------------------------------------------------------------------------------------
    def submit(self, rid: str, text: str | None = None, token_ids: Sequence[int] | None = None,
               max_new_tokens: int = 1, source: str | None = None, cls: str | None = None) -> None:  # fmt: skip
        """Send the request for prediction now (call at arrival). Never blocks; if it cannot be sent it is kept
        and sent by a later :meth:`poll`. ``source``: who answers (a source the model knows, else ignored there);
        ``cls``: the calibration class finishes adapt (default: ``source``)."""
        try:
            item: dict[str, Any] = {"rid": rid, "max_new_tokens": int(max_new_tokens)}
            for key, val in (("source", source), ("class", cls)):
                if isinstance(val, str) and 0 < len(val) <= MAX_NAME:
                    item[key] = val
            if token_ids is not None:
                item["token_ids"] = [int(t) for t in token_ids]
            else:
                item["text"] = text if text is not None else ""
            self.outstanding[rid] = item
            self.counters["submitted"] += 1
            if not self._send({"v": VERSION, "type": "predict", "items": [item]}):
                self.unsent.add(rid)
        except Exception as e:  # never raise into the scheduler
            self.counters["client_errors"] += 1
            log.warning("predictor submit %s failed: %s", rid, e)

    def poll(self) -> int:
        """Receive every answer already here (non-blocking), ping, detect death/restart, resend; returns the
        number of messages handled."""
        n = 0
        try:
            while self.sock is not None and n < 100_000:
                try:
                    frame = self.sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                n += 1
                self._on_message(frame)
            self._keepalive()
            self._flush()
        except Exception as e:
            self.counters["client_errors"] += 1
            log.warning("predictor poll failed: %s", e)
        return n

    def estimate(self, rid: str) -> LengthEstimate | None:
        """The service's answer for ``rid`` if it has come (call :meth:`poll` first in each scheduling step)."""
        return self.answers.get(rid)

    def fallback(self, rid: str, max_new_tokens: int) -> LengthEstimate:
        """The documented fallback bound (module docstring), counted."""
        self.counters["fallbacks"] += 1
        b = max_new_tokens
        if self.fallback_kind == "mean" and self.fallback_bound is not None:
            b = max(1, min(max_new_tokens, self.fallback_bound))
        return LengthEstimate(point=b, bound=b, confidence=1.0, fallback=True)

    def get(self, rid: str, max_new_tokens: int) -> LengthEstimate:
        """:meth:`estimate`, or :meth:`fallback` when no answer has come."""
        est = self.answers.get(rid)
        return est if est is not None else self.fallback(rid, max_new_tokens)

    def report_finish(self, rid: str, output_len: int) -> None:
        """Tell the service the exact final output length (online calibration); forgets the request here. The value
        is sent exactly as given: an integer (or an integral float) >= 0, else refused and counted."""
        try:
            self.answers.pop(rid, None)
            self.errors.pop(rid, None)
            if self.outstanding.pop(rid, None) is not None:
                self.unsent.discard(rid)
            exact = _exact_length(output_len)
            if exact is None:
                self.counters["finish_invalid"] += 1
                log.warning("predictor report_finish %s: output_len %r is not a non-negative integer", rid, output_len)
                return
            if not self._send({"v": VERSION, "type": "finish", "rid": rid, "output_len": exact}):
                self.counters["feedback_dropped"] += 1  # best effort: calibration loses one sample
        except Exception as e:
            self.counters["client_errors"] += 1
            log.warning("predictor report_finish %s failed: %s", rid, e)

    def push_stats(self, arrival_rate: float, capacity_tokens: int, used_tokens: int, running: int) -> None:
        """Send pool statistics; the reply (confidence, reserve tokens) is read by :meth:`reservation`."""
        pool = {"capacity_tokens": int(capacity_tokens), "used_tokens": int(used_tokens), "running": int(running)}
        if not self._send({"v": VERSION, "type": "stats", "arrival_rate": float(arrival_rate), "pool": pool}):
            self.counters["stats_dropped"] += 1  # stats are periodic: the next push replaces this one

    def reservation(self) -> tuple[float, int] | None:
        """Last (confidence, global reserve tokens) decided by the service; None before any, and None again once
        the service has left a message unanswered for ``reservation_ttl_s`` (it went silent: the host falls back to
        its default). An idle host that asks nothing does not make the service look silent."""
        if self._reservation is not None and self.silence() > self.reservation_ttl_s:
            self._reservation = None
            self.counters["reservation_expired"] += 1
            log.warning("predictor reservation expired (no reply for %.1fs): back to the configured default",
                        self.reservation_ttl_s)  # fmt: skip
        return self._reservation

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(0)
            self.sock = None

    # -- internals ------------------------------------------------------------------------------------------------
    def silence(self) -> float:
        """Seconds since the first message sent after the service last said anything (0 when nothing is unanswered)."""
        return 0.0 if self._asked_at is None else self.clock() - self._asked_at

    def _on_message(self, frame: bytes) -> None:
        self._asked_at = None  # the service is alive (whatever it sent)
        try:
            msg = unpack(frame, types=REPLY_TYPES)
        except ProtocolError as e:
            self.counters["version_mismatch" if e.code == "version" else "bad_replies"] += 1
            log.warning("predictor sent a bad reply: %s", e)
            return
        t = msg["type"]
        if t == "predict":
            levels = msg.get("levels")
            for it in msg.get("items", ()) if isinstance(msg.get("items"), list) else ():
                try:
                    self._on_answer(it, levels)
                except (KeyError, TypeError, ValueError) as e:
                    self.counters["bad_replies"] += 1
                    log.warning("predictor sent a bad answer item: %s", e)
            for e in msg.get("errors", ()) if isinstance(msg.get("errors"), list) else ():
                rid = e.get("rid", "") if isinstance(e, dict) else ""
                if self.outstanding.pop(rid, None) is not None:
                    self.unsent.discard(rid)
                    self.errors[rid] = str(e.get("error", ""))
                    self.counters["item_errors"] += 1
            while len(self.answers) > self.max_known:
                self.answers.popitem(last=False)
        elif t == "pong":
            fb = msg.get("fallback_bound")
            self.fallback_bound = fb if isinstance(fb, int) and not isinstance(fb, bool) and fb > 0 else None
            if self.instance is not None and msg.get("instance") != self.instance:
                self.counters["restarts_seen"] += 1
                self.unsent.update(self.outstanding)  # the old instance's queue is gone: resend
            self.instance = msg.get("instance")
        elif t == "reservation":
            try:
                self._reservation = (float(msg["conf"]), int(msg["reserve_tokens"]))
            except (KeyError, TypeError, ValueError, OverflowError):
                self.counters["bad_replies"] += 1
        elif t == "error":
            self.counters["service_errors"] += 1
            log.warning("predictor service error %s: %s", msg.get("error"), msg.get("detail"))

    def _on_answer(self, it: dict[str, Any], levels: Any) -> None:
        rid = it["rid"]
        if self.outstanding.pop(rid, None) is None and rid in self.answers:
            return  # a duplicate after a resend
        self.unsent.discard(rid)
        dist = None
        if isinstance(levels, list) and isinstance(it.get("q"), list):
            try:
                dist = LengthDistribution(tuple(float(x) for x in levels), tuple(float(x) for x in it["q"]))
            except (TypeError, ValueError):
                self.counters["bad_replies"] += 1
        self.answers[rid] = LengthEstimate(int(it["point"]), int(it["bound"]), float(it["conf"]), dist=dist)
        self.counters["answered"] += 1

    def _keepalive(self) -> None:
        now = self.clock()
        if self.silence() > self.dead_after_s and now - self._last_connect > self.dead_after_s:
            self.counters["reconnects"] += 1
            log.warning("predictor service silent for %.1fs: reconnecting", self.silence())
            self._connect()
        if now - self._last_ping >= self.ping_interval_s:
            self._last_ping = now
            self._send({"v": VERSION, "type": "ping", "t": now})

    def _flush(self, max_batch: int = 256) -> None:
        """Resend outstanding requests that were never (or no longer) delivered, in batches."""
        if not self.unsent:
            return
        rids = [r for r in self.unsent if r in self.outstanding]
        self.unsent.clear()
        for i in range(0, len(rids), max_batch):
            chunk = rids[i : i + max_batch]
            if self._send({"v": VERSION, "type": "predict", "items": [self.outstanding[r] for r in chunk]}):
                self.counters["resent"] += len(chunk)
            else:
                self.unsent.update(rids[i:])
                return


def _exact_length(x: Any) -> int | None:
    """``x`` as an exact non-negative integer (ints, numpy integers, integral floats), else None."""
    if isinstance(x, bool):
        return None
    try:
        if isinstance(x, float):
            return int(x) if x.is_integer() and x >= 0 else None
        v = operator.index(x)
    except (TypeError, ValueError, OverflowError):
        return None
    return v if v >= 0 else None
