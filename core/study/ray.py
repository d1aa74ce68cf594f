"""Studies on a Ray cluster: every cell a Ray task, written to the study folder as it finishes.

``polyprune study STUDY.yaml --ray [ADDRESS]`` runs :func:`polyprune.study.run_study` with a
:class:`RayRunner`: the grid, the resume rule (cells whose ``results.json`` exists are skipped), the
tables, mask agreement and paired differences are those of the sequential run; only the cells run
elsewhere. Each cell is one task (``ray.remote`` with the study's per-cell requests,
:class:`~polyprune.study.config.RayConfig`: CPUs, GPUs, memory) that loads the model, prunes,
evaluates and writes the cell folder in a private temporary folder, exactly as the sequential
runner does (:func:`polyprune.study.run.run_cells` on that one cell), and returns the folder's
files; the driver writes them into the study folder (``results.json`` last, so a cell is
finished only when it is complete), so no shared filesystem is needed. The dense evaluation runs
first, as one task, since every cell's ``delta`` needs it.

* Without an address a local Ray cluster is started on this machine (and stopped at the end);
  an address that does not answer is reported before anything runs.
* A task whose worker dies (killed, out of memory, machine lost) is started again by Ray, up to
  ``max_retries`` times. A cell that fails (an exception in the cell) is not retried: its message
  goes to ``cells/<id>/failed.json`` and the other cells go on; it runs again on the next call.
* Cancelling (Ctrl-C, the GUI's cancel) cancels the outstanding tasks; finished cells stay.

Results equal the sequential run's: the cells are pruned from the same dense weights with the
same settings (the sequential runner restores them bit for bit between cells) and evaluated the
same way; a worker uses ``num_cpus`` torch threads.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

from ..errors import Cancelled, PolypruneError
from ..fileio import atomic_write_bytes, atomic_write_text, dumps
from ..memory import parse_size
from ..progress import Progress, ensure
from .config import Cell, RayConfig, StudyConfig, eval_config, eval_signature, plan
from .folder import cell_dir, finished_rows
from .run import StudyResult, run_cells, run_study

FAILED = "failed.json"


def ray_available() -> bool:
    """Whether the ``ray`` package can be imported (``pip install 'polyprune[cluster]'``)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise PolypruneError("Running a study on Ray needs the 'ray' package",
                             "pip install 'polyprune[cluster]' (or pip install ray), or run the study without --ray") from e
    return ray


def check_address(address: str, timeout: float = 5.0) -> None:
    """Raise unless something answers at ``address`` (``host:port`` or ``ray://host:port``;
    ``auto`` is left to Ray).

    Raises:
        PolypruneError: a malformed address, or nothing listening there within ``timeout`` seconds.
    """
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise PolypruneError(f"The Ray address {address!r} is not host:port",
                             "give the head node's address, e.g. --ray 10.0.0.5:6379 or --ray ray://10.0.0.5:10001, "
                             "or --ray alone for a local cluster")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise PolypruneError(f"The Ray cluster at {address} does not answer ({e.strerror or e})",
                             "start it (ray start --head on that machine) or give the right address; --ray alone "
                             "starts a local cluster on this machine") from None


def run_cell_task(cfg_dict: dict, cell_id: str | None, dense_rows: list | None, cwd: str, threads: int) -> dict:
    """One cell (or, with ``cell_id=None``, the dense evaluation) in a worker: the sequential runner
    on that cell in a private folder; returns ``{file name: bytes}`` of the cell's folder.

    Raises:
        PolypruneError: the cell's id is not in the study (the study changed), or the cell's own errors.
    """
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the driver shows the study's progress
    hf_logging.set_verbosity_error()
    if os.path.isdir(cwd):
        os.chdir(cwd)  # relative paths of the study (data, calibration files) as the driver sees them
    torch.set_num_threads(max(1, threads))
    cfg = StudyConfig.from_dict(cfg_dict)
    tmp = Path(tempfile.mkdtemp(prefix="polyprune-cell-"))
    try:
        cfg.out = str(tmp)
        cells = plan(cfg)
        ev = eval_config(cfg.evaluation)
        todo = [c for c in cells if c.id == cell_id]
        if cell_id is not None and not todo:
            raise PolypruneError(f"The cell {cell_id} is not in the study", "run the study again (it changed)")
        run_cells(cfg, cells, todo, ev, eval_signature(ev), tmp, {}, Progress(), lambda m: None, None, None, dense_rows)
        folder = cell_dir(tmp, cell_id or "dense")
        return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_cell_files(out: Path, cid: str, files: dict[str, bytes]) -> None:
    """Write a finished cell's files into the study folder, ``results.json`` last (see
    :func:`polyprune.study.folder.finished_rows`); a failure note of an earlier run is removed."""
    d = cell_dir(out, cid)
    d.mkdir(parents=True, exist_ok=True)
    for name in sorted(files, key=lambda n: n == "results.json"):
        atomic_write_bytes(d / name, files[name])
    (d / FAILED).unlink(missing_ok=True)


def failed_cells(out: str | Path, cells: list[Cell]) -> dict[str, str]:
    """``{cell id: error message}`` of the cells whose last run failed and that are not finished."""
    out = Path(out).expanduser()
    res = {}
    for c in cells:
        p = cell_dir(out, c.id) / FAILED
        if p.is_file() and not (cell_dir(out, c.id) / "results.json").is_file():
            try:
                res[c.id] = json.loads(p.read_text(encoding="utf-8")).get("error", "")
            except (OSError, ValueError):
                res[c.id] = "(unreadable failure note)"
    return res


class RayRunner:
    """The ``runner`` of :func:`polyprune.study.run_study` that runs cells as Ray tasks (see the
    module docstring).

    Args:
        address: the cluster; ``None`` (or ``""``): ``settings.address``, else a local cluster.
        settings: per-cell requests (:class:`~polyprune.study.config.RayConfig`).
        init_kwargs: further ``ray.init`` arguments for a local cluster (e.g. ``num_cpus``).
    """

    def __init__(self, address: str | None = None, settings: RayConfig | None = None, **init_kwargs):
        self.settings = settings or RayConfig()
        self.settings.validate()
        self.address = address or self.settings.address or None
        self.init_kwargs = init_kwargs
        self.failed: dict[str, str] = {}
        if self.address:
            check_address(self.address)
        _import_ray()

    def _connect(self, log):
        ray = _import_ray()
        if ray.is_initialized():
            return ray, False
        try:
            if self.address:
                log(f"Connecting to the Ray cluster at {self.address}")
                ray.init(address=self.address, ignore_reinit_error=True, log_to_driver=True)
            else:
                log("Starting a local Ray cluster on this machine")
                kw = {"include_dashboard": False, "log_to_driver": True} | self.init_kwargs
                ray.init(**kw)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise PolypruneError(f"Could not start or reach the Ray cluster{' at ' + self.address if self.address else ''}: "
                                 f"{str(e).splitlines()[0] if str(e) else type(e).__name__}",
                                 "check the address (ray status on the head node), or run --ray without an address "
                                 "for a local cluster") from None
        return ray, True

    def __call__(self, cfg: StudyConfig, cells, todo, ev, eval_sig, out: Path, done: dict, progress: Progress,
                 log: Callable[[str], None], loaded, evaluate_fn, dense_rows) -> list[str]:
        if loaded is not None or evaluate_fn is not None:
            raise PolypruneError("A study on Ray loads the model in every task and evaluates it the standard way",
                                 "run the study without --ray to pass a loaded model or an evaluation function")
        progress = ensure(progress)
        ray, started = self._connect(log)
        s = self.settings
        opts = {"num_cpus": s.num_cpus, "num_gpus": s.num_gpus, "max_retries": s.max_retries, "retry_exceptions": False}
        if s.memory:
            opts["memory"] = parse_size(s.memory)
        task = ray.remote(run_cell_task).options(**opts)
        cfg_dict = cfg.to_dict()
        cwd = os.getcwd()
        threads = max(1, int(s.num_cpus))
        ran: list[str] = []
        total = len(todo) + (1 if dense_rows is None and ev.enabled else 0)
        finished = 0
        try:
            if dense_rows is None and ev.enabled:
                log("Evaluating the dense model (one Ray task)")
                files = self._wait({task.remote(cfg_dict, None, None, cwd, threads): "dense"}, ray, progress, log,
                                   out, lambda cid, f: None)
                if "dense" not in files:
                    raise PolypruneError(f"The dense evaluation failed: {self.failed.get('dense', '')}",
                                         "fix the evaluation settings (see the message) and run the study again")
                write_cell_files(out, "dense", files["dense"])
                dense_rows = finished_rows(out, "dense", eval_sig)
                finished += 1
                progress.update(finished, total, "Dense model evaluated")
            refs = {task.remote(cfg_dict, c.id, dense_rows, cwd, threads): c.id for c in todo}
            by_id = {c.id: c for c in todo}
            log(f"{len(refs)} cells submitted to Ray ({s.num_cpus:g} CPU, {s.num_gpus:g} GPU"
                + (f", {s.memory}" if s.memory else "") + " each)")

            def finish(cid: str, files: dict) -> None:
                nonlocal finished
                write_cell_files(out, cid, files)
                done[cid] = finished_rows(out, cid, eval_sig)
                ran.append(cid)
                finished += 1
                progress.update(finished, total, f"Cell {by_id[cid].index + 1}/{len(cells)} done: {by_id[cid].label}")
                log(f"Cell {by_id[cid].index + 1}/{len(cells)} done: {by_id[cid].label}")

            self._wait(refs, ray, progress, log, out, finish)
        finally:
            if started:
                ray.shutdown()
        return ran

    def _wait(self, refs: dict, ray, progress: Progress, log, out: Path, on_done) -> dict:
        """Collect tasks as they finish; failures are recorded, cancel cancels the rest."""
        results = {}
        pending = dict(refs)
        try:
            while pending:
                progress.check()
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                for r in ready:
                    cid = pending.pop(r)
                    try:
                        files = ray.get(r)
                    except Exception as e:  # noqa: BLE001 - a failed cell is recorded, the others go on
                        msg = _message(e)
                        self.failed[cid] = msg
                        if cid != "dense":
                            d = cell_dir(out, cid)
                            d.mkdir(parents=True, exist_ok=True)
                            atomic_write_text(d / FAILED, dumps({"error": msg, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                                                 "detail": _detail(e)}))
                        log(f"Cell {cid} failed: {msg}")
                        continue
                    results[cid] = files
                    on_done(cid, files)
        except (Cancelled, KeyboardInterrupt):
            for r in pending:
                ray.cancel(r, force=True)
            raise
        return results


def _message(e: BaseException) -> str:
    """The user-facing message of a task failure (the cell's own PolypruneError when it was one)."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, PolypruneError):
        return f"{cause.problem} (fix: {cause.fix})" if cause.fix else cause.problem
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__


def _detail(e: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(e), e))[-4000:]


def run_study_ray(cfg: StudyConfig, address: str | None = None, progress: Progress | None = None,
                  log: Callable[[str], None] = print, **init_kwargs) -> StudyResult:
    """:func:`polyprune.study.run_study` with every cell a Ray task (see the module docstring).

    Raises:
        PolypruneError: invalid settings (before anything runs), ``ray`` missing, an address that
            does not answer.
        Cancelled: through ``progress``; finished cells and the tables are on disk.
    """
    cfg.ray.validate()
    plan(cfg)  # bad settings fail before a cluster is started
    runner = RayRunner(address, cfg.ray, **init_kwargs)
    return run_study(cfg, progress, log, runner=runner)
