"""The predictor service: a side process answering length bounds and KV reservation decisions over ZMQ (C1, C3).

Why a side process: the design card keeps the model out of the scheduler's loop. The scheduler sends each request
when it arrives and reads the answer later (``predictors.client``), so a slow or dead model never stalls a batch.

Loop: a ROUTER socket; each wake-up drains every message already queued (up to ``max_drain``), answers pings/stats/
finishes at once and featurizes + predicts *all* prompts of all predict messages in one booster call (batching what
arrived together). Bad input never stops it: each failure is a clear error reply, a log line and a counter.

Online feedback (C1): the service remembers (point, spread, bound) of what it predicted; a ``finish`` with the true
length adds a calibration triple (and an overrun if the bound was exceeded). Every ``refit_every`` finishes the
conformal/Hoeffding calibration is refit on the offline calibration split plus the most recent ``window`` finishes,
in the loop (a sort of a few thousand numbers: no pause worth a thread). The booster itself is not retrained.

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
from predictors.features import FeatureError
from predictors.model import LengthModel
from predictors.protocol import (
    MAX_FRAME_BYTES,
    MAX_ITEMS,
    REPLY_TYPES,
    VERSION,
    ProtocolError,
    error,
    pack,
    prompt_of,
    unpack,
)
from predictors.train import RESIDUALS_FILE

log = logging.getLogger("predictors.service")
MAX_TEXT_CHARS = 65536  # longer texts: tokenize head+tail only and scale the count (a 100k-token prompt costs ~1 ms)
LONG_PROMPT_TOKENS = 32768  # above this a prompt is logged and counted (answered from its head and tail)


class PredictorService:
    def __init__(self, model_dir: str, endpoint: str, bound: str = "conformal", alpha: float = 0.95,
                 beta: float = 0.001, rule: str = "paper", refit_every: int = 50, window: int = 2000,
                 max_frame_bytes: int = MAX_FRAME_BYTES, max_drain: int = 256) -> None:  # fmt: skip
        if bound not in BOUND_KINDS:
            raise ValueError(f"--bound: unknown kind {bound!r}; valid: {', '.join(BOUND_KINDS)}")
        self.model = LengthModel.load(model_dir)
        self.name = Path(model_dir).name
        self.calib = Calibration.from_json(self.model.calibration)
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
        log.info("serving %s on %s (bound=%s, alpha=%s, beta=%s)", self.name, self.endpoint, self.bound,
                 self.alpha, self.beta)  # fmt: skip
        end = None if max_seconds is None else time.monotonic() + max_seconds
        while not self._stop and (end is None or time.monotonic() < end):
            if not self.sock.poll(100):
                continue
            self.step()
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
        if preds:
            self._predict(preds)
        return n

    def _reply(self, ident: bytes, msg: dict[str, Any]) -> None:
        try:
            self.sock.send_multipart([ident, pack(msg)], zmq.NOBLOCK)
        except zmq.ZMQError as e:  # client gone or its queue full: the client resends what it misses
            self.counters["send_failed"] += 1
            log.debug("reply dropped: %s", e)

    def _error(self, ident: bytes, code: str, detail: str, **extra: Any) -> None:
        self.counters[f"error_{code}"] += 1
        log.warning("bad input (%s): %s", code, detail)
        self._reply(ident, error(code, detail, **extra))

    # -- messages -----------------------------------------------------------------------------------------------
    def handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        t = msg["type"]
        if t == "ping":
            return {"v": VERSION, "type": "pong", "t": msg.get("t"), "instance": self.instance, "model": self.name,
                    "bound": self.bound, "conf": self.conf, "fallback_bound": self.fallback_bound,
                    "counters": dict(self.counters)}  # fmt: skip
        if t == "stats":
            return self._stats(msg)
        return self._finish(msg)

    def _stats(self, msg: dict[str, Any]) -> dict[str, Any]:
        pool = msg.get("pool") or {}
        try:
            rate = float(msg.get("arrival_rate", 0.0))
            stats = PoolStats(int(pool.get("capacity_tokens", 0)), int(pool.get("used_tokens", 0)),
                              int(pool.get("running", 0)), tuple(self.overruns))  # fmt: skip
        except (TypeError, ValueError, AttributeError) as e:
            raise ProtocolError("malformed", f"stats: {e}") from None
        self.conf, self.reserve_tokens = reservation_decision(rate, stats, self.alpha, self.beta, self.rule)
        self.counters["stats"] += 1
        return {"v": VERSION, "type": "reservation", "conf": self.conf, "reserve_tokens": self.reserve_tokens,
                "arrival_rate": rate}  # fmt: skip

    def _finish(self, msg: dict[str, Any]) -> dict[str, Any]:
        rid, out = msg.get("rid"), msg.get("output_len")
        if not isinstance(rid, str) or not isinstance(out, int) or isinstance(out, bool) or out < 0:
            raise ProtocolError("malformed", "finish needs a string rid and a non-negative integer output_len")
        self.counters["finishes"] += 1
        got = self.issued.pop(rid, None)
        if got is not None:
            point, spread, bound = got
            self.feedback.append((point, spread, float(max(out, 1))))
            if out > bound:
                self.overruns.append(float(out - bound))
            self._since_refit += 1
            if self._since_refit >= self.refit_every:
                self.refit()
        else:
            self.counters["finish_unknown_rid"] += 1
        return {"v": VERSION, "type": "ack", "rid": rid}

    def refit(self) -> None:
        """Refit the model-based calibration on offline calibration + recent feedback (online, C1)."""
        fb = np.asarray(self.feedback, dtype=np.float64).reshape(-1, 3)
        p, s, y = (np.concatenate([off, fb[:, i]]) for i, off in enumerate(self.offline))
        self.calib.refit(p, s, y, n_online=len(fb))
        self._since_refit = 0
        self.counters["refits"] += 1
        log.info("refit calibration on %d offline + %d online finishes", self.offline[0].size, len(fb))

    def _predict(self, reqs: list[tuple[bytes, dict[str, Any]]]) -> None:
        rows: list[tuple[int, str, str | None, list[int] | None, int]] = []
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
                    errors[k].append({"rid": str(rid), "error": e.detail})
                    self.counters["error_item"] += 1
        ok, X, plen = self._features(rows, errors)
        out: list[list[dict[str, Any]]] = [[] for _ in reqs]
        if ok:
            pred = self.model.predict(X)
            mnt = np.array([rows[i][4] for i in ok])
            conf = self.conf
            bounds = self.calib.bounds(self.bound, pred.point, pred.spread, plen, mnt, conf)
            for j, i in enumerate(ok):
                k, rid = rows[i][0], rows[i][1]
                b = int(bounds[j])
                self.issued[rid] = (float(pred.point[j]), float(pred.spread[j]), b)
                out[k].append({"rid": rid, "point": int(min(round(pred.point[j]), b)), "bound": b, "conf": conf})
            while len(self.issued) > 200_000:
                self.issued.popitem(last=False)
            self.counters["predictions"] += len(ok)
            self.counters["batches"] += 1
        for k, (ident, _) in enumerate(reqs):
            if out[k] or errors[k]:
                self._reply(ident, {"v": VERSION, "type": "predict", "items": out[k], "errors": errors[k]})
        for errs in errors:
            for e in errs:
                log.warning("bad predict item %s: %s", e["rid"], e["error"])

    def _features(self, rows: list, errors: list) -> tuple[list[int], np.ndarray, np.ndarray]:
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
                log.info("long prompt %s: ~%d tokens (features read its head and tail only)", r[1], lens[i])
        try:
            return list(range(len(rows))), fz.transform(ids_list, lens), np.array(lens)
        except FeatureError:
            pass
        ok, Xs = [], []
        for i, r in enumerate(rows):
            try:
                Xs.append(fz.transform([ids_list[i]], [lens[i]]))
                ok.append(i)
            except FeatureError as e:
                errors[r[0]].append({"rid": r[1], "error": str(e)})
                self.counters["error_item"] += 1
        X = np.concatenate(Xs) if Xs else np.zeros((0, fz.dim), np.float32)
        return ok, X, np.array([lens[i] for i in ok])

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
    ap.add_argument("--model", required=True, help="model directory (predictors.train output)")
    ap.add_argument("--endpoint", required=True, help="tcp://HOST:PORT or ipc://PATH to bind")
    ap.add_argument("--bound", default="conformal", choices=BOUND_KINDS)
    ap.add_argument("--alpha", type=float, default=0.95)
    ap.add_argument("--beta", type=float, default=0.001)
    ap.add_argument("--rule", default="paper", choices=("paper", "overcommit"), help="confidence rule")
    ap.add_argument("--refit-every", type=int, default=50, help="refit calibration every N finishes")
    ap.add_argument("--window", type=int, default=2000, help="recent finishes kept for refits")
    ap.add_argument("--log-level", default="INFO")
    a = ap.parse_args(argv)
    logging.basicConfig(level=a.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    svc = PredictorService(a.model, a.endpoint, a.bound, a.alpha, a.beta, a.rule, a.refit_every, a.window)
    signal.signal(signal.SIGTERM, svc.stop)
    signal.signal(signal.SIGINT, svc.stop)
    svc.serve()


if __name__ == "__main__":
    main()
