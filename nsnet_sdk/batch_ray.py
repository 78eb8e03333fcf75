"""`nsnet batch` on Ray: a pool of scoring actors fed batches of (input, location) from the driver.

Plain actors and tasks, not Ray Data: they work the same through a Ray Client (``ray://``)
connection, the driver bounds what is in flight (two batches per actor) so a listing of millions
of inputs streams, and each batch's rows come back keyed as listed. The model file travels
through the object store, so workers need no shared filesystem for it; inputs are read by the
actors (`batch_rows.score_items`), so image bytes never pass through the driver. A batch whose actor
died is retried one input at a time, on the actors that are up; an input that kills its actor
alone (a native decoder crash) is an error row. An actor that died takes no work until Ray has
restarted it (which may be never, when its node is gone and the others are full).
A local Ray started for the job runs in its own temp folder, watched by a small process
(`batch_reaper`) that stops it when the driver exits in any way, SIGKILL included.
"""
from __future__ import annotations

import collections
import os
import shutil
import socket
import sys
import tempfile
import time
from typing import Any, Callable, Iterator

from .batch_reaper import Reaper
from .batch_rows import Item, failed_row, score_items
from .cache import run_store

IN_FLIGHT_PER_ACTOR = 2
# A job whose actors have all been down this long (their nodes died and Ray found no room to
# restart them) fails, its finished rows kept for --resume, instead of waiting for ever.
NO_ACTOR_SECONDS = 600.0
PROBE_TRIES = 3  # probes of a lost actor answered "died" before it counts as gone for good
PROBE_SECONDS = 1.0  # between probes of an actor that Ray is restarting
# Tries of an input alone after its batch failed: a task sent to an actor that has just died
# (before Ray has noticed) fails too, so one failure alone does not yet blame the input.
SINGLE_TRIES = 3
CLIENT_TRIES = 3  # Ray Client connections whose server died while starting (see connect)
# What the Ray Client proxy answers when the server it starts for a connection died at once
# ("Starting Ray client server failed") or did not answer within the cluster's
# RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S ("Proxy failed to Connect to backend").
CLIENT_START_FAULTS = ("client server failed", "Proxy failed to Connect to backend")
ADDRESS_FORMS = ("'auto' (the cluster this machine belongs to), 'HOST:6379' (a head node's GCS "
                 "port), 'ray://HOST:10001' (Ray Client), or RAY_ADDRESS")


class Scorer:
    """One actor: a `Detector` on the model sent by the driver; a batch of items in, rows out."""

    def __init__(self, model_name: str, model_ref: list, model_path: str, sha256: str,
                 threshold: float, batch_size: int, threads: int | None, max_pixels: int,
                 provenance: Any = None) -> None:
        from .detector import Detector
        from .options import BackendOptions, InputOptions

        folder = None
        if model_ref:
            import ray

            # inside a list, so Ray passes the reference and the actor fetches the bytes here
            model_bytes = ray.get(model_ref[0])
            # the artifact kind is told by its name, so the copy keeps it; the runtime holds the
            # model once loaded, so the copy is removed at once (a killed actor leaves nothing)
            folder = tempfile.mkdtemp(prefix="nsnet-model-")
            model_path = os.path.join(folder, model_name)
            with open(model_path, "wb") as f:
                f.write(model_bytes)
        try:
            # One decode worker process kept for the actor's life: a native decoder crash costs
            # its input one error row (pipeline.executors), not the actor and its batch.
            self.det = Detector(model_path, threshold=threshold,
                                backend=BackendOptions(intra_op_threads=threads),
                                options=InputOptions(batch_size=batch_size, workers=1, executor="processes",
                                                     max_pixels=max_pixels, provenance=provenance)
                                ).keep_workers()
        finally:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
        self.sha256 = sha256
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        # Files this actor has scored, by content: a repeat is answered without decoding it again.
        self._store = run_store(in_memory=True)
        self.store = self._store.__enter__()

    def ready(self) -> str:
        return self.worker

    def score(self, items: list[Item]) -> tuple[list[dict], str, float]:
        start = time.perf_counter()
        rows = score_items(self.det, items, self.sha256, self.store)
        return rows, self.worker, time.perf_counter() - start


class _LocalRay:
    """A local Ray owned by this job: its own temp folder, and a `Reaper` that kills every process
    it starts once the driver exits, however that happens."""

    def __init__(self, ray_init: dict[str, Any] | None) -> None:
        import ray

        # its own short folder (socket paths are limited), which also marks the processes
        self.reaper = Reaper(tempfile.mkdtemp(prefix="nsray-", dir="/tmp"))
        self.tmp = self.reaper.tmp
        args = dict(include_dashboard=False, log_to_driver=False, _temp_dir=self.tmp)
        args.update(ray_init or {})
        with self.reaper.marking():  # inherited by every process Ray starts from here
            ray.init(**args)

    def close(self) -> None:
        import ray

        ray.shutdown()
        self.reaper.close(kill=True)


def connect(address: str | None, ray_init: dict[str, Any] | None) -> _LocalRay | None:
    """Use the Ray initialised in this process, else connect to ``address``, else start a local
    Ray owned by the job (returned, to be closed). Raises `ConnectionError` naming the address
    forms that work when ``address`` cannot be reached."""
    import ray

    if ray.is_initialized():
        return None
    if address is None and not os.environ.get("RAY_ADDRESS"):
        return _LocalRay(ray_init)
    where = address or os.environ["RAY_ADDRESS"]
    try:
        _reachable(where)  # Ray itself retries an unreachable GCS for minutes
        for attempt in range(CLIENT_TRIES):
            try:
                ray.init(address=address, log_to_driver=False, **(ray_init or {}))
                break
            except ConnectionAbortedError as e:
                # The Ray Client proxy forks a server per connection, and that server sometimes
                # dies in gRPC's fork handling (ray-project/ray#63202); a new one usually starts.
                # Ray's client returns only once the proxy gives up on the dead server's log
                # stream, after the cluster's channel timeout (30 s by default).
                if not any(f in str(e) for f in CLIENT_START_FAULTS) or attempt == CLIENT_TRIES - 1:
                    raise
                print(f"nsnet: the Ray Client server for this connection to {where} did not start "
                      f"(ray-project/ray#63202); connecting again ({attempt + 2}/{CLIENT_TRIES})",
                      file=sys.stderr)
    except Exception as e:
        raise ConnectionError(f"cannot connect to the Ray cluster at {where}: "
                              f"{type(e).__name__}: {e}; --address takes {ADDRESS_FORMS}") from None
    return None


def _reachable(address: str, timeout: float = 10.0) -> None:
    """Raise `OSError` when ``address`` (``HOST:PORT`` or ``ray://HOST:PORT``) takes no TCP
    connection; ``auto`` and other forms are left to Ray."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or not host or "/" in host:
        return
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
        pass


def score_on_ray(batches: Iterator[list[Item]], model: str, sha: str,
                 take: Callable[[list[dict]], None], tick: Callable[[], None],
                 summary: Any, *, address: str | None, workers: int,
                 gpus_per_worker: float, batch_size: int, threshold: float,
                 threads: int | None, ray_init: dict[str, Any] | None, max_pixels: int,
                 provenance: Any = None) -> None:
    """Score ``batches`` on ``workers`` actors, handing each batch's rows to ``take`` as it
    finishes (``tick`` between results); per-actor counts go to ``summary.per_worker``."""
    import ray

    owned = connect(address, ray_init)
    try:
        blob = []  # the driver holds the reference for the whole job, so a restart finds it
        if os.path.isfile(model):
            with open(model, "rb") as f:
                blob = [ray.put(f.read())]
        actor_cls = ray.remote(Scorer).options(
            num_cpus=1, num_gpus=gpus_per_worker or None, max_restarts=-1, max_task_retries=0)
        actors = [actor_cls.remote(os.path.basename(model), blob, model, sha, threshold,
                                   batch_size, threads, max_pixels, provenance)
                  for _ in range(workers)]
        ray.get([a.ready.remote() for a in actors])  # a model no actor can load fails the job here
        _dispatch(ray, actors, batches, take, tick, summary, threshold, sha, provenance is not None)
    finally:
        if owned is not None:
            owned.close()


def _dispatch(ray: Any, actors: list, batches: Iterator[list[Item]],
              take: Callable[[list[dict]], None], tick: Callable[[], None],
              summary: Any, threshold: float, sha: str, provenance: bool) -> None:
    pool = _Pool(ray, actors)
    inflight: dict[Any, tuple[int, list[Item], int]] = {}
    retry: collections.deque[tuple[list[Item], int]] = collections.deque()
    busy: dict[str, list] = {}
    exhausted = False
    while True:
        while retry or not exhausted:
            # An input under suspicion runs alone on its actor: if the actor dies, it is the cause
            # (or, the rarer case its tries allow for, the actor's node died meanwhile).
            i = pool.pick(alone=bool(retry))
            if i is None:
                break
            chunk, tries = retry.popleft() if retry else (next(batches, None), 0)
            if chunk is None:
                exhausted = True
                break
            pool.load[i] += 1
            if tries:
                pool.solo.add(i)
            inflight[actors[i].score.remote(chunk)] = (i, chunk, tries)
        if not inflight and (exhausted and not retry):
            return
        pool.check()
        ready, _ = ray.wait(list(inflight) + pool.probes(), num_returns=1, timeout=0.5)
        for ref in ready:
            if ref not in inflight:
                pool.answered(ref)
                continue
            i, chunk, tries = inflight.pop(ref)
            pool.load[i] -= 1
            if tries:
                pool.solo.discard(i)
            try:
                rows, worker, seconds = ray.get(ref)
            except ray.exceptions.RayError as e:
                if isinstance(e, ray.exceptions.RayActorError):
                    pool.lost(i)  # no more work for it until it answers again
                if len(chunk) > 1:  # find the input that failed: each alone, on any actor
                    retry.extend(([item], 1) for item in chunk)
                elif tries < SINGLE_TRIES:
                    retry.append((chunk, tries + 1))
                else:
                    key = chunk[0][0]
                    reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
                    take([failed_row(key, f"InferenceError: {key}: the scoring worker failed on "
                                     f"this input, tried alone {SINGLE_TRIES} times "
                                     f"({type(e).__name__}: {reason})", threshold, sha, provenance)])
                continue
            acc = busy.setdefault(worker, [0, 0.0])
            acc[0] += len(rows)
            acc[1] += seconds
            for r in rows:
                r["worker"] = worker
            take(rows)
        tick()
        summary.per_worker = {w: (n, s) for w, (n, s) in busy.items()}


class _Pool:
    """Which actors take work. An actor whose task failed with the actor itself (its process or
    its node died) takes none until it answers a probe: Ray restarts it where resources allow, which
    may be never (its node is gone and the others are full), and a task sent to it meanwhile fails
    at once, which would use up an input's tries. Its batches go to the actors that are up; the job
    fails only when none has been up for `NO_ACTOR_SECONDS`."""

    def __init__(self, ray: Any, actors: list) -> None:
        self.ray, self.actors = ray, actors
        self.load = [0] * len(actors)
        self.down: dict[int, Any] = {}  # actor index -> its pending probe (a ready() call) or None
        self.due: dict[int, float] = {}  # when to probe again an actor Ray is restarting
        self.gone: set[int] = set()  # died for good (Ray will not restart it)
        self.died: dict[int, int] = {}  # probes answered "died" in a row, by actor
        self.solo: set[int] = set()  # actors running an input alone
        self.since = time.monotonic()  # when the last actor went down, while none is up

    def pick(self, alone: bool = False) -> int | None:
        """The least loaded actor that is up and has room (``alone``: that has nothing in flight),
        or None. An actor running an input alone takes nothing else meanwhile."""
        room = 1 if alone else IN_FLIGHT_PER_ACTOR
        up = [i for i in range(len(self.actors)) if i not in self.down and i not in self.gone
              and i not in self.solo and self.load[i] < room]
        return min(up, key=self.load.__getitem__) if up else None

    def up(self) -> int:
        return len(self.actors) - len(self.down) - len(self.gone)

    def lost(self, i: int) -> None:
        if i not in self.down and i not in self.gone:
            if self.up() == 1:
                self.since = time.monotonic()
            self.down[i] = self.actors[i].ready.remote()

    def probes(self) -> list:
        return [ref for ref in self.down.values() if ref is not None]

    def answered(self, probe: Any) -> None:
        i = next(j for j, ref in self.down.items() if ref == probe)
        try:
            self.ray.get(probe)
        except self.ray.exceptions.ActorDiedError:
            # a probe sent before Ray noticed the death can get this too; one that keeps getting
            # it means Ray will not restart the actor
            self.died[i] = self.died.get(i, 0) + 1
            if self.died[i] >= PROBE_TRIES:
                del self.down[i]
                self.gone.add(i)
            else:
                self.down[i] = self.actors[i].ready.remote()
        except self.ray.exceptions.RayError:  # restarting (or not yet placed): ask again shortly
            self.down[i] = None
            self.due[i] = time.monotonic() + PROBE_SECONDS
        else:
            self.died[i] = 0
            del self.down[i]  # restarted: it takes work again

    def check(self) -> None:
        """Probe again the actors whose time has come; raise `RuntimeError` when no actor has been
        up for `NO_ACTOR_SECONDS` (or every one died for good)."""
        now = time.monotonic()
        for i, ref in self.down.items():
            if ref is None and now >= self.due[i]:
                self.down[i] = self.actors[i].ready.remote()
        if self.up() == 0 and (not self.down or now - self.since > NO_ACTOR_SECONDS):
            raise RuntimeError("no scoring actor is running (each died, and Ray could not start it "
                               f"again within {NO_ACTOR_SECONDS:.0f} s); the rows scored so far are "
                               "written: add nodes or resources and rerun with --resume")
