"""Runs environment calls (`start`, `step`) with a per-call timeout, in the driver or in
a pool of worker processes, and turns every failure into a per-call `EnvFailure`
instead of an exception:

    runner = EnvRunner("gsm8k_calculator", {}, tokenizer, vocab_size=151936, num_workers=4, timeout_s=10)
    starts = runner.start(rows)                          # [Start | EnvFailure]
    obs = runner.step([(row, turn, state), ...])         # [Observation | EnvFailure]
    runner.close()

Failure kinds: "exception" (the environment raised), "timeout" (no answer within
timeout_s), "malformed" (not a valid Start/Observation: base.check_*), "crash" (the
worker process died). The episode runner ends an episode with a failure with finish
reason "env_error" (episode/finish/env_error), drops it from its group; the run goes on.

num_workers=0: calls run in the driver, each in a daemon thread joined with the
timeout. A call that hangs is abandoned there (Python cannot stop a thread): it keeps
its thread, and the environment instance it ran on is replaced so no later call shares
its state. Use worker processes for environments that may hang or crash.
num_workers>0: spawn-started processes, each building its own environment instance
(the tokenizer is pickled to them). A worker whose call times out is killed and
replaced; a call's arguments and result must pickle. Calls of one batch run in
parallel over the workers; results come back in input order either way.
"""
from __future__ import annotations

import dataclasses
import multiprocessing as mp
import threading
import time
from collections.abc import Mapping, Sequence
from multiprocessing.connection import wait
from typing import Any

from .base import MalformedError, Observation, Start, Turn, check_observation, check_start
from .registry import make_env

FAILURE_KINDS = ("exception", "timeout", "malformed", "crash")


@dataclasses.dataclass(frozen=True)
class EnvFailure:
    """Why one environment call gave no usable result."""

    kind: str  # one of FAILURE_KINDS
    message: str


def _call(env, kind: str, args: tuple):
    return env.start(*args) if kind == "start" else env.step(*args)


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _worker_main(conn, name: str, kwargs: Mapping[str, Any], tokenizer, imports: Sequence[str]) -> None:
    """A pool process: build the environment, then answer (id, kind, args) requests with
    (id, "ok", result) or (id, "exception", message) until the pipe closes."""
    try:
        env = make_env(name, kwargs, tokenizer, imports)
    except BaseException as e:  # noqa: BLE001 - reported to the driver, which raises it
        conn.send(("init", "exception", _describe(e)))
        return
    conn.send(("init", "ok", None))
    while True:
        try:
            cid, kind, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply = (cid, "ok", _call(env, kind, args))
        except BaseException as e:  # noqa: BLE001 - any failure of user code is the episode's
            reply = (cid, "exception", _describe(e))
        try:
            conn.send(reply)
        except Exception as e:  # noqa: BLE001 - e.g. a state that does not pickle
            conn.send((cid, "exception", f"the result could not be sent to the driver: {_describe(e)}"))


class _Worker:
    def __init__(self, ctx, name, kwargs, tokenizer, imports, start_timeout_s: float):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, name, kwargs, tokenizer, imports), daemon=True)
        self.proc.start()
        child.close()
        if not self.conn.poll(start_timeout_s):
            self.kill()
            raise RuntimeError(f"environment {name!r}: a worker process did not start within {start_timeout_s} s")
        try:
            _, status, msg = self.conn.recv()
        except EOFError:
            self.kill()
            raise RuntimeError(f"environment {name!r}: a worker process died while starting") from None
        if status != "ok":
            self.kill()
            raise ValueError(f"environment {name!r} could not be built: {msg}")

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()


class EnvRunner:
    """Environment calls with timeouts, in the driver or in worker processes (module docstring)."""

    def __init__(self, name: str, kwargs: Mapping[str, Any] | None, tokenizer, *, vocab_size: int,
                 num_workers: int = 0, timeout_s: float = 30.0, start_timeout_s: float = 120.0,
                 imports: Sequence[str] = ()):
        """name, kwargs, imports: as registry.make_env; vocab_size: observation ids must lie
        in [0, vocab_size); start_timeout_s: for a worker process to build its environment."""
        if num_workers < 0 or not timeout_s > 0 or vocab_size < 1:
            raise ValueError(f"EnvRunner: num_workers={num_workers} must be >= 0, timeout_s={timeout_s} > 0, "
                             f"vocab_size={vocab_size} >= 1")
        self.name, self.kwargs, self.tokenizer, self.imports = name, dict(kwargs or {}), tokenizer, tuple(imports)
        self.vocab_size, self.timeout_s, self.start_timeout_s = vocab_size, float(timeout_s), start_timeout_s
        self.workers: list[_Worker] = []
        self.env = None
        if num_workers == 0:
            self.env = make_env(name, self.kwargs, tokenizer, self.imports)  # a config error surfaces here
        else:
            self._ctx = mp.get_context("spawn")
            self.workers = [self._new_worker() for _ in range(num_workers)]

    def _new_worker(self) -> _Worker:
        return _Worker(self._ctx, self.name, self.kwargs, self.tokenizer, self.imports, self.start_timeout_s)

    # -------------------------------------------------------------------- public

    def start(self, rows: Sequence[Mapping[str, Any]]) -> list[Start | EnvFailure]:
        """env.start(row) for every row."""
        return self._run("start", [(row,) for row in rows])

    def step(self, calls: Sequence[tuple[Mapping[str, Any], Turn, Any]]) -> list[Observation | EnvFailure]:
        """env.step(row, turn, state) for every (row, turn, state)."""
        return self._run("step", [tuple(c) for c in calls])

    def close(self) -> None:
        for w in self.workers:
            w.kill()
        self.workers = []

    # -------------------------------------------------------------------- internals

    def _check(self, kind: str, result) -> Start | Observation | EnvFailure:
        try:
            return check_start(result, self.vocab_size) if kind == "start" else \
                check_observation(result, self.vocab_size)
        except MalformedError as e:
            return EnvFailure("malformed", str(e))

    def _run(self, kind: str, calls: list[tuple]) -> list:
        raw = self._run_driver(kind, calls) if self.env is not None else self._run_pool(kind, calls)
        return [r if isinstance(r, EnvFailure) else self._check(kind, r) for r in raw]

    def _run_driver(self, kind: str, calls: list[tuple]) -> list:
        out = []
        for args in calls:
            box: dict = {}

            def target(args=args, box=box):
                try:
                    box["ok"] = _call(self.env, kind, args)
                except BaseException as e:  # noqa: BLE001 - any failure of user code is the episode's
                    box["err"] = _describe(e)

            t = threading.Thread(target=target, daemon=True, name=f"env-{self.name}-{kind}")
            t.start()
            t.join(self.timeout_s)
            if t.is_alive():
                out.append(EnvFailure("timeout", f"{kind}() gave no answer within {self.timeout_s:g} s"))
                self.env = make_env(self.name, self.kwargs, self.tokenizer, self.imports)  # the hung call keeps the old
            elif "err" in box:
                out.append(EnvFailure("exception", f"{kind}() raised {box['err']}"))
            else:
                out.append(box["ok"])
        return out

    def _run_pool(self, kind: str, calls: list[tuple]) -> list:
        out: list = [None] * len(calls)
        todo = list(range(len(calls)))[::-1]  # popped from the end: input order
        busy: dict[int, tuple[int, float]] = {}  # worker index -> (call index, deadline)
        while todo or busy:
            for w in range(len(self.workers)):
                if w not in busy and todo:
                    if not self.workers[w].proc.is_alive():  # died between calls (nothing of ours ran)
                        self._replace(w)
                    i = todo.pop()
                    try:
                        self.workers[w].conn.send((i, kind, calls[i]))
                        busy[w] = (i, time.monotonic() + self.timeout_s)
                    except Exception as e:  # noqa: BLE001 - arguments that do not pickle fail this call
                        out[i] = EnvFailure("exception", f"{kind}() arguments could not be sent: {_describe(e)}")
            if not busy:
                continue
            now = time.monotonic()
            ready = wait([self.workers[w].conn for w in busy], timeout=max(0.0, min(d for _, d in busy.values()) - now))
            for w in list(busy):
                i, deadline = busy[w]
                conn = self.workers[w].conn
                # poll: a reply may have come while another worker was being replaced
                if conn in ready or conn.poll(0):
                    try:
                        cid, status, payload = conn.recv()
                    except (EOFError, OSError):
                        out[i] = EnvFailure("crash", f"the worker process died during {kind}() "
                                                     f"(exit code {self.workers[w].proc.exitcode})")
                        self._replace(w)
                    else:
                        assert cid == i, (cid, i)
                        out[i] = payload if status == "ok" else EnvFailure("exception", f"{kind}() raised {payload}")
                    del busy[w]
                elif time.monotonic() >= deadline:
                    out[i] = EnvFailure("timeout", f"{kind}() gave no answer within {self.timeout_s:g} s")
                    self._replace(w)
                    del busy[w]
        return out

    def _replace(self, w: int) -> None:
        self.workers[w].kill()
        self.workers[w] = self._new_worker()
