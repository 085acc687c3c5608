"""The predictor service: a side process answering per-request length distributions and KV reservation decisions
over ZMQ (C1, C3).

Why a side process: the design card keeps the model out of the scheduler's loop. The scheduler sends each request
when it arrives and reads the answer later (``predictors.client``), so a slow or dead model never stalls a batch.

Loop: a ROUTER socket; each wake-up drains every message already queued (up to ``max_drain``), answers pings/stats/
finishes at once and featurizes + predicts *all* prompts of all predict messages in one booster call (batching what
arrived together). Each answer is the request's calibrated quantiles of its total output length (levels 0.5 ... 0.99,
:mod:`predictors.calibration`) plus the ``bound`` at the current confidence, read from them.

Input cannot kill it: every message is validated (:mod:`predictors.protocol`: NaN, infinities, negatives, huge
numbers, wrong types, truncated or extra frames, other versions, random bytes); what fails gets one error reply, a
log line and a ``refused`` counter (by code, in every pong and reservation reply), and anything unforeseen is
caught per message (code ``internal``). State stays bounded: remembered predictions and calibration classes are
capped.

Online feedback (C1): a ``finish`` with the exact final length updates the calibration of the request's class and
of ``"*"`` at once (quantile tracking, :class:`~predictors.calibration.OnlineCalibrator`). For the single-bound kinds
(``--bound`` other than ``conformal``) the :mod:`predictors.bounds` calibration is also refit every ``refit_every``
finishes on the offline calibration split plus the most recent ``window`` finishes. The booster is not retrained.

    python -m predictors.service --model predictors/models/alpaca-mistral --endpoint tcp://127.0.0.1:5757
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, OrderedDict, deque
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from predictors.bounds import BOUND_KINDS, Calibration, PoolStats, reservation_decision
from predictors.calibration import OnlineCalibrator, StaticCalibration, quantile_at
from predictors.features import FeatureError, Features
from predictors.model import LengthModel
from predictors.protocol import (
    MAX_FRAME_BYTES,
    MAX_ITEMS,
    MAX_RATE,
    MAX_TOKENS,
    REPLY_TYPES,
    VERSION,
    ProtocolError,
    error,
    number,
    pack,
    prompt_of,
    unpack,
)
from predictors.train import RESIDUALS_FILE

log = logging.getLogger("predictors.service")
MAX_TEXT_CHARS = 65536  # longer texts: tokenize head+tail only and scale the count (a 100k-token prompt costs ~1 ms)
LONG_PROMPT_TOKENS = 32768  # above this a prompt is logged and counted (answered from its head and tail)
LOG_PER_S = 5  # refusal log lines per second and code
MAX_ISSUED = 200_000  # predictions remembered for feedback (oldest forgotten first)
SHIPPED_MODEL = str(Path(__file__).resolve().parent / "models" / "alpaca-mistral")


class PredictorService:
    def __init__(self, model_dir: str, endpoint: str, bound: str = "conformal", alpha: float = 0.95,
                 beta: float = 0.001, rule: str = "paper", refit_every: int = 50, window: int = 2000,
                 max_frame_bytes: int = MAX_FRAME_BYTES, max_drain: int = 256, step: float | None = None,
                 lag_scale: float | None = None) -> None:  # fmt: skip
        if bound not in BOUND_KINDS:
            raise ValueError(f"--bound: unknown kind {bound!r}; valid: {', '.join(BOUND_KINDS)}")
        self.model = LengthModel.load(model_dir)
        self.name = Path(model_dir).name
        self.calib = Calibration.from_json(self.model.calibration)
        if "quantile" not in self.model.calibration:
            raise ValueError(f"{model_dir}: no per-level calibration (retrain it with `python -m predictors.train`)")
        tune = {k: v for k, v in (("step", step), ("lag_scale", lag_scale)) if v is not None}
        self.online = OnlineCalibrator(StaticCalibration.from_json(self.model.calibration["quantile"]), **tune)
        self.levels = list(self.model.levels)
        res_path = Path(model_dir) / RESIDUALS_FILE
        res = json.loads(res_path.read_text()) if res_path.exists() else {"point": [], "spread": [], "true": []}
        self.offline = tuple(np.asarray(res[k], dtype=np.float64) for k in ("point", "spread", "true"))
        self.endpoint, self.bound, self.alpha, self.beta, self.rule = endpoint, bound, alpha, beta, rule
        self.conf = alpha
        self.reserve_tokens = 0
        self.refit_every, self.max_frame_bytes, self.max_drain = refit_every, max_frame_bytes, max_drain
        self.issued: OrderedDict[str, tuple[float, float, int]] = OrderedDict()  # rid -> (point, spread, bound)
        self.feedback: deque[tuple[float, float, float]] = deque(maxlen=window)
        self.overruns: deque[float] = deque(maxlen=window)
        self.counters: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self._log_budget: dict[str, tuple[float, int]] = {}
        self.instance = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._stop = False
        self._since_refit = 0
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        self.sock.bind(endpoint)
        mnt = np.array([10**9])
        self.fallback_bound = int(self.calib.bounds("quantile", np.ones(1), np.ones(1), np.ones(1), mnt, alpha)[0])

    # -- loop ---------------------------------------------------------------------------------------------------
    def serve(self, max_seconds: float | None = None) -> None:
        log.info("serving %s on %s (bound=%s, alpha=%s, beta=%s, protocol v%d)", self.name, self.endpoint,
                 self.bound, self.alpha, self.beta, VERSION)  # fmt: skip
        end = None if max_seconds is None else time.monotonic() + max_seconds
        while not self._stop and (end is None or time.monotonic() < end):
            try:
                if self.sock.poll(100):
                    self.step()
            except zmq.ZMQError as e:  # a socket-level failure is fatal: let the supervisor restart us
                log.error("socket error, stopping: %s", e)
                raise
            except Exception:  # a bug must not end the service; step() already isolates messages
                self.counters["internal_errors"] += 1
                log.exception("unexpected error in the service loop (continuing)")
        self.sock.close(0)

    def step(self) -> int:
        """Drain what is queued and answer it; returns the number of messages handled."""
        preds: list[tuple[bytes, dict[str, Any]]] = []
        n = 0
        while n < self.max_drain:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                break
            n += 1
            self.counters["messages"] += 1
            ident, body = frames[0], frames[1:]
            try:
                if len(body) != 1:
                    raise ProtocolError("malformed", f"expected one frame per message, got {len(body)}")
                msg = unpack(body[0], self.max_frame_bytes)
                if msg["type"] == "predict":
                    preds.append((ident, msg))
                else:
                    self._reply(ident, self.handle(msg))
            except ProtocolError as e:
                self._error(ident, e.code, e.detail)
            except Exception as e:
                log.exception("internal error on a message (dropped)")
                self._error(ident, "internal", f"{type(e).__name__} while handling the message")
        if preds:
            try:
                self._predict(preds)
            except Exception as e:
                log.exception("internal error on a predict batch (answered with errors)")
                for ident, _ in preds:
                    self._error(ident, "internal", f"{type(e).__name__} while predicting")
        return n

    def _reply(self, ident: bytes, msg: dict[str, Any]) -> None:
        try:
            self.sock.send_multipart([ident, pack(msg)], zmq.NOBLOCK)
        except zmq.ZMQError as e:  # client gone or its queue full: the client resends what it misses
            self.counters["send_failed"] += 1
            log.debug("reply dropped: %s", e)

    def _error(self, ident: bytes, code: str, detail: str, **extra: Any) -> None:
        self.counters[f"error_{code}"] += 1
        self.refused[code] += 1
        self._warn(code, detail)
        self._reply(ident, error(code, detail, **extra))

    def _warn(self, code: str, detail: str) -> None:
        """One log line per refusal, at most ``LOG_PER_S`` a second per code (a flood must not fill the disk)."""
        now = time.monotonic()
        sec, n = self._log_budget.get(code, (0.0, 0))
        if now - sec >= 1.0:
            if n > LOG_PER_S:
                log.warning("refused (%s): %d more in the last second", code, n - LOG_PER_S)
            sec, n = now, 0
        if n < LOG_PER_S:
            log.warning("refused (%s): %s", code, detail[:300])
        self._log_budget[code] = (sec, n + 1)

    def refused_summary(self) -> dict[str, int]:
        return {"total": sum(self.refused.values()), **self.refused}

    # -- messages -----------------------------------------------------------------------------------------------
    def handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        t = msg["type"]
        if t == "ping":
            return {"v": VERSION, "type": "pong", "t": msg.get("t"), "instance": self.instance, "model": self.name,
                    "bound": self.bound, "conf": self.conf, "fallback_bound": self.fallback_bound,
                    "levels": self.levels, "counters": dict(self.counters), "refused": self.refused_summary(),
                    "calibration": {"step": self.online.step_now(), "lag": round(self.online.lag, 3),
                                    "classes": self.online.coverage()}}  # fmt: skip
        if t == "stats":
            return self._stats(msg)
        return self._finish(msg)

    def _stats(self, msg: dict[str, Any]) -> dict[str, Any]:
        """A new (confidence, reserve) decision from pool statistics; a bad field refuses the whole message and
        leaves the previous decision in force."""
        rate = number(msg, "arrival_rate", 0.0, MAX_RATE)
        pool = msg.get("pool")
        cap = number(pool, "capacity_tokens", 0, MAX_TOKENS, integer=True, where="pool.")
        used = number(pool, "used_tokens", 0, MAX_TOKENS, integer=True, where="pool.")
        running = number(pool, "running", 0, MAX_TOKENS, integer=True, where="pool.")
        stats = PoolStats(int(cap), int(used), int(running), tuple(self.overruns))
        self.conf, self.reserve_tokens = reservation_decision(rate, stats, self.alpha, self.beta, self.rule)
        self.counters["stats"] += 1
        return {"v": VERSION, "type": "reservation", "conf": self.conf, "reserve_tokens": self.reserve_tokens,
                "arrival_rate": rate, "refused": sum(self.refused.values())}  # fmt: skip

    def _finish(self, msg: dict[str, Any]) -> dict[str, Any]:
        rid = msg.get("rid")
        if not isinstance(rid, str):
            raise ProtocolError("malformed", "finish needs a string rid")
        out = int(number(msg, "output_len", 0, MAX_TOKENS, integer=True))
        self.counters["finishes"] += 1
        if not self.online.observe(rid, out):
            self.counters["finish_unknown_rid"] += 1
        got = self.issued.pop(rid, None)
        if got is not None:
            point, spread, bound = got
            self.feedback.append((point, spread, float(max(out, 1))))
            if out > bound:
                self.overruns.append(float(out - bound))
            self._since_refit += 1
            if self._since_refit >= self.refit_every:
                self.refit()
        return {"v": VERSION, "type": "ack", "rid": rid}

    def refit(self) -> None:
        """Refit the single-bound calibration on offline calibration + recent feedback (online, C1)."""
        fb = np.asarray(self.feedback, dtype=np.float64).reshape(-1, 3)
        p, s, y = (np.concatenate([off, fb[:, i]]) for i, off in enumerate(self.offline))
        self.calib.refit(p, s, y, n_online=len(fb))
        self._since_refit = 0
        self.counters["refits"] += 1
        log.info("refit calibration on %d offline + %d online finishes", self.offline[0].size, len(fb))

    def _predict(self, reqs: list[tuple[bytes, dict[str, Any]]]) -> None:
        rows: list[tuple[int, str, str | None, list[int] | None, int, str | None, str | None]] = []
        errors: list[list[dict[str, str]]] = [[] for _ in reqs]
        for k, (ident, msg) in enumerate(reqs):
            items = msg.get("items")
            if not isinstance(items, list) or len(items) > MAX_ITEMS:
                self._error(ident, "malformed", f"predict needs a list of at most {MAX_ITEMS} items")
                continue
            for it in items:
                try:
                    rows.append((k, *prompt_of(it)))
                except ProtocolError as e:
                    rid = it.get("rid") if isinstance(it, dict) else None
                    errors[k].append({"rid": rid if isinstance(rid, str) else "", "error": e.detail})
                    self.counters["error_item"] += 1
                    self.refused["item"] += 1
        ok, F, plen = self._features(rows, errors)
        out: list[list[dict[str, Any]]] = [[] for _ in reqs]
        if ok:
            sel = [rows[i] for i in ok]
            pred = self.model.predict_features(F, [r[5] for r in sel])
            mnt = np.array([r[4] for r in sel], dtype=np.float64)
            dist = np.minimum(self.online.issue([r[1] for r in sel], pred.log_quantiles, [r[6] for r in sel]),
                              mnt[:, None])  # fmt: skip
            conf = self.conf
            if self.bound == "conformal":
                bounds = np.clip(np.ceil(quantile_at(dist, self.levels, conf)), 1, mnt).astype(np.int64)
            else:
                bounds = self.calib.bounds(self.bound, pred.point, pred.spread, plen, mnt, conf)
            raw_point, raw_spread = pred.point.tolist(), pred.spread.tolist()
            points = np.minimum(np.maximum(np.rint(dist[:, 0]), 1), bounds).astype(np.int64).tolist()
            qs, bl = dist.round(1).tolist(), bounds.tolist()
            for j, r in enumerate(sel):
                self.issued.pop(r[1], None)
                self.issued[r[1]] = (raw_point[j], raw_spread[j], bl[j])
                out[r[0]].append({"rid": r[1], "point": points[j], "bound": bl[j], "conf": conf, "q": qs[j]})
            while len(self.issued) > MAX_ISSUED:
                self.issued.popitem(last=False)
            self.counters["predictions"] += len(ok)
            self.counters["batches"] += 1
        for k, (ident, _) in enumerate(reqs):
            if out[k] or errors[k]:
                self._reply(ident, {"v": VERSION, "type": "predict", "levels": self.levels, "items": out[k],
                                    "errors": errors[k]})  # fmt: skip
        for errs in errors:
            for e in errs:
                self._warn("item", f"{e['rid'][:64]!r}: {e['error']}")

    def _features(self, rows: list, errors: list) -> tuple[list[int], Features | None, np.ndarray]:
        """Features of all rows in one call; if one row is bad, isolate it (row by row) and report it alone."""
        fz = self.model.featurizer
        ids_list: list[Any] = [r[3] for r in rows]
        lens = [len(r[3]) if r[3] is not None else 0 for r in rows]
        need = [i for i, r in enumerate(rows) if r[3] is None]
        if need:
            heads = [rows[i][2] if len(rows[i][2]) <= MAX_TEXT_CHARS else rows[i][2][: MAX_TEXT_CHARS // 2] + "\n"
                     + rows[i][2][-MAX_TEXT_CHARS // 2 :] for i in need]  # fmt: skip
            for i, h, ids in zip(need, heads, fz.sp.encode(heads, num_threads=1), strict=True):
                ids_list[i], lens[i] = ids, int(len(ids) * len(rows[i][2]) / len(h))
        for i, r in enumerate(rows):
            if lens[i] > LONG_PROMPT_TOKENS:
                self.counters["long_prompt"] += 1
                log.info("long prompt %r: ~%d tokens (features read its head and tail only)", r[1][:64], lens[i])
        if not rows:
            return [], None, np.zeros(0)
        try:
            return list(range(len(rows))), fz.transform(ids_list, lens), np.array(lens)
        except FeatureError:
            pass
        ok = []
        for i, r in enumerate(rows):
            try:
                fz.transform([ids_list[i]], [lens[i]])
                ok.append(i)
            except FeatureError as e:
                errors[r[0]].append({"rid": r[1], "error": str(e)})
                self.counters["error_item"] += 1
                self.refused["item"] += 1
        if not ok:
            return [], None, np.zeros(0)
        return ok, fz.transform([ids_list[i] for i in ok], [lens[i] for i in ok]), np.array([lens[i] for i in ok])

    def stop(self, *_: Any) -> None:
        self._stop = True


def spawn(model_dir: str, endpoint: str, *extra: str, log_path: str | None = None) -> subprocess.Popen:
    """Start the service as a child process (the plugin's way to get one beside the server)."""
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    cmd = [sys.executable, "-m", "predictors.service", "--model", model_dir, "--endpoint", endpoint, *extra]
    return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_ready(endpoint: str, timeout_s: float = 10.0) -> dict[str, Any] | None:
    """Ping until a pong comes back; the pong (service identity, counters) or None after ``timeout_s``."""
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    end = time.monotonic() + timeout_s
    try:
        while time.monotonic() < end:
            s.send(pack({"v": VERSION, "type": "ping", "t": time.monotonic()}), zmq.NOBLOCK)
            if s.poll(100):
                msg = unpack(s.recv(), types=REPLY_TYPES)
                if msg["type"] == "pong":
                    return msg
        return None
    finally:
        s.close(0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=SHIPPED_MODEL, help="model directory (predictors.train output; default: the "
                    "shipped model)")  # fmt: skip
    ap.add_argument("--endpoint", required=True, help="tcp://HOST:PORT or ipc://PATH to bind")
    ap.add_argument("--bound", default="conformal", choices=BOUND_KINDS)
    ap.add_argument("--alpha", type=float, default=0.95)
    ap.add_argument("--beta", type=float, default=0.001)
    ap.add_argument("--rule", default="paper", choices=("paper", "overcommit"), help="confidence rule")
    ap.add_argument("--refit-every", type=int, default=50, help="refit calibration every N finishes")
    ap.add_argument("--window", type=int, default=2000, help="recent finishes kept for refits")
    ap.add_argument("--step", type=float, default=None, help="online calibration step (default: the calibrator's)")
    ap.add_argument("--lag-scale", type=float, default=None, help="online calibration lag scale (default: likewise)")
    ap.add_argument("--log-level", default="INFO")
    a = ap.parse_args(argv)
    logging.basicConfig(level=a.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    svc = PredictorService(a.model, a.endpoint, a.bound, a.alpha, a.beta, a.rule, a.refit_every, a.window,
                           step=a.step, lag_scale=a.lag_scale)  # fmt: skip
    signal.signal(signal.SIGTERM, svc.stop)
    signal.signal(signal.SIGINT, svc.stop)
    svc.serve()


if __name__ == "__main__":
    main()
