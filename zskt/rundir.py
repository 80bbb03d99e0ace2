"""The run dir: the names of the files a run writes there (this module is the one place they are
spelled; `scripts/summarize.py` reads runs through them too), one run at a time in it (a lock), and the
files a resumed run reads back (run_config.yaml, results.json, few_shot_indices.json, last.ckpt)
checked before anything is written, each failure a one-line `UserError` that names the file and what
to do. Also the one line for a full disk, and the run dir's life around Hydra (`HydraRunDir`): a
command refused at start leaves no run dir behind, and a resumed run keeps its first `.hydra/`.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from zskt.errors import RefusedBeforeRun, UserError

if TYPE_CHECKING:  # annotations only: scripts that read run dirs need not load torch
    import torch

# the files a run writes into its output dir
RUN_CONFIG = "run_config.yaml"  # the resolved config; a resumed run reads it back
RESULTS = "results.json"
MODEL_FILE = "model.pt"  # the trained student
FEW_SHOT_INDICES = "few_shot_indices.json"  # the chosen subset of a few-shot run
TEACHER_SUBDIR = "teacher"  # where a run trains its missing teacher (teacher.train_if_missing=true)
TRANSITION_CURVES = "transition_curves.csv"  # method=abm's curves, and their figure
TRANSITION_PLOT = "transition_curves.png"
# Lightning's checkpoints (conf/callbacks/default.yaml names the same folder and files)
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"  # the last evaluation's
INTERRUPTED_CHECKPOINT = "interrupted.ckpt"  # the moment a run was stopped (callbacks.on_exception)
# keys without which a saved config cannot be a run's (a damaged or foreign run_config.yaml)
RUN_CONFIG_KEYS = ("method", "dataset", "student", "trainer", "paths", "seed")
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _resume_command(output_dir: Path) -> str:
    return f"`python -m zskt.run hydra.run.dir={output_dir} resume=true`"


# ---------------------------------------------------------------------------- one run per dir
class RunDirLock:
    """An exclusive `flock` on the run dir itself (no lock file: nothing is written), held while
    this object lives or until `release`. The kernel drops it when the process ends, however it
    ends (SIGKILL too), so a crashed run never leaves a stale lock behind. On a file system
    without flock (some network mounts) the dir is simply not locked."""

    def __init__(self, output_dir: str | os.PathLike) -> None:
        self.fd: int | None = os.open(output_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.release()
            raise UserError(f"another zskt run is running in {output_dir} (it holds the dir's lock): wait for it "
                            "to end, or pass another hydra.run.dir") from None
        except OSError:  # no flock here: run unlocked rather than not at all
            self.release()

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None

    def __del__(self) -> None:
        self.release()


_held: list[RunDirLock] = []  # the locks this process holds, innermost run last


def lock_run_dir(output_dir: str | os.PathLike) -> None:
    """Take the run dir's lock (a `UserError` if another run holds it) until the function wrapped
    in `releases_run_dir_locks` returns. Only global rank 0 locks: under srun/torchrun every rank
    runs the whole program in the same dir."""
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) == 0:
        _held.append(RunDirLock(output_dir))


def releases_run_dir_locks(run: Callable) -> Callable:
    """Decorate the function that runs one job: the locks it takes are released when it returns
    or raises (a sweep's next job, or a resumed run in the same process, can take them again)."""
    @functools.wraps(run)
    def wrapper(*args, **kwargs):
        depth = len(_held)
        try:
            return run(*args, **kwargs)
        finally:
            while len(_held) > depth:
                _held.pop().release()
    return wrapper


# ---------------------------------------------------------------------------- the run dir around Hydra
HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")  # what Hydra writes into <run dir>/.hydra
# run dir -> (the outermost folder this process created for it, or None; the dir's entries before)
_made: dict[Path, tuple[Path | None, set[str]]] = {}
_sweeps: dict[Path, tuple[bool, set[str]]] = {}  # sweep dir -> (created by this process, its entries before)


def _outermost_missing(path: Path) -> Path | None:
    """The outermost of `path` and its parents that does not exist yet (None: `path` exists)."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


def note_new_run_dir(output_dir: str | os.PathLike) -> None:
    """Remember what is in `output_dir` (and which of it and its parents is missing) before this process
    writes there, so a refused command can take away what it added (`remove_refused_run_dir`)."""
    path = Path(output_dir).absolute()
    if path not in _made:
        _made[path] = (_outermost_missing(path), set(os.listdir(path)) if path.is_dir() else set())


def refuse_file(run_dir: Path, key: str) -> None:
    """Refuse the dir Hydra is about to create when it cannot be a folder (Hydra's own mkdir would end
    in a traceback): a `RefusedBeforeRun`, which Hydra does not turn into a warning as it does an
    Exception."""
    from zskt.validation import wrong_kind

    if (problem := wrong_kind(run_dir, "folder")) is not None:
        raise RefusedBeforeRun(f"{key} {run_dir} {problem}: pass another {key} (or paths.outputs=<a folder>)")


class HydraRunDir(Callback):
    """Hydra's callback (conf/hydra/default.yaml) around the run dir it creates before the run starts:
    notes whether the dir is new (a refused command then removes it), and on `resume=true` puts the
    first run's `.hydra/` back after Hydra rewrote it (its overrides would be `- resume=true`)."""

    def __init__(self) -> None:
        self.first_hydra: dict[Path, dict[str, bytes]] = {}

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        run_dir = Path(str(config.hydra.run.dir)).absolute()  # `${now:}` is cached: the dir Hydra makes next
        refuse_file(run_dir, "hydra.run.dir")
        note_new_run_dir(run_dir)
        hydra_dir = run_dir / str(config.hydra.output_subdir or ".hydra")
        if config.get("resume") is True and hydra_dir.is_dir():
            self.first_hydra[run_dir] = {name: (hydra_dir / name).read_bytes() for name in HYDRA_FILES
                                         if (hydra_dir / name).is_file()}

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
        refuse_file(sweep_dir, "hydra.sweep.dir")
        _sweeps[sweep_dir] = (not sweep_dir.exists(), set(os.listdir(sweep_dir)) if sweep_dir.is_dir() else set())
        note_new_run_dir(sweep_dir)

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        from zskt.io import atomic_write_bytes

        run_dir = Path(str(config.hydra.runtime.output_dir)).absolute()
        for name, content in self.first_hydra.pop(run_dir, {}).items():
            atomic_write_bytes(content, run_dir / str(config.hydra.output_subdir or ".hydra") / name)


def remove_refused_run_dir(output_dir: str | os.PathLike) -> None:
    """After a command refused at start: remove what Hydra wrote into the run dir (`.hydra/`, the job's
    log) unless it was there before, then the dir and the parents this process created for it while
    they are empty. Nothing that was there before is touched; a dir holding anything else stays."""
    path = Path(output_dir).absolute()
    for inner in sorted((p for p in _made if path in p.parents), key=lambda p: len(p.parts), reverse=True):
        remove_refused_run_dir(inner)  # a teacher's run dir inside it (teacher.train_if_missing), deepest first
    if path.parent in _sweeps:  # a sweep's job: its dir is new unless it was in the sweep dir when the sweep began
        created, entries = _sweeps[path.parent]
        if not created and path.name in entries:
            return
        outermost, before = _made.get(path.parent, (path, set()))[0] or path, set()
    elif path in _made:
        outermost, before = _made[path]
    else:
        return
    if not path.is_dir():
        return
    hydra_dir = path / ".hydra"
    added = set(os.listdir(path)) - before
    logs = {entry for entry in added if entry.endswith(".log")}
    if not added <= {".hydra", *logs}:
        return  # the run wrote outputs: not a refusal at start
    if ".hydra" in added and hydra_dir.is_dir():
        if not set(os.listdir(hydra_dir)) <= set(HYDRA_FILES):
            return
        for name in HYDRA_FILES:
            (hydra_dir / name).unlink(missing_ok=True)
        hydra_dir.rmdir()
    for log_file in logs:
        (path / log_file).unlink()
    _made.pop(path, None)
    if outermost is None:
        return
    for folder in (path, *path.parents):
        sweep = _sweeps.get(folder)
        if sweep is not None and sweep[0] and set(os.listdir(folder)) <= {"multirun.yaml"}:
            (folder / "multirun.yaml").unlink(missing_ok=True)  # a sweep this process began, with no job left
        try:
            folder.rmdir()  # only ever an empty one
        except OSError:
            break
        if folder == outermost:
            break


# ---------------------------------------------------------------------------- files read back on resume
def load_run_config(path: Path) -> DictConfig:
    """A run's saved run_config.yaml, or a one-line `UserError` if it is damaged."""
    damaged = "the run cannot resume without it; restore it, or start the run again in a new dir (without resume=true)"
    try:
        saved = OmegaConf.load(path)
    except Exception as err:  # noqa: BLE001 - yaml's parser errors, a binary file, an unreadable one
        first = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise UserError(f"{path} is not valid YAML ({first}): {damaged}") from None
    missing = [key for key in RUN_CONFIG_KEYS if not isinstance(saved, DictConfig) or key not in saved]
    if missing:
        raise UserError(f"{path} is not a zskt run config (no {', '.join(missing)}): {damaged}")
    return saved


def read_results(path: Path) -> dict:
    """A run's results.json, or a one-line `UserError` if it is damaged."""
    try:
        results = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({str(err)[:80]}): delete it and resume again; the run "
                        "continues from checkpoints/last.ckpt (or starts again where there is none)") from None
    if not isinstance(results, dict):
        raise UserError(f"{path} holds a {type(results).__name__}, not a run's results: delete it and resume again; "
                        "the run continues from checkpoints/last.ckpt (or starts again where there is none)")
    return results


def check_saved_subset(path: Path, indices: torch.Tensor | None) -> None:
    """On resume: the few-shot subset recorded in few_shot_indices.json must be the one the saved
    config chooses now (the data set or the file changed otherwise)."""
    if indices is None or not path.is_file():
        return
    what_to_do = ("the run cannot continue on another subset; restore the data set (or the file), or start "
                  "the run again in a new dir (without resume=true)")
    try:
        saved = json.loads(path.read_text())
        saved_indices = saved["indices"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise UserError(f"{path} is damaged ({type(err).__name__}: {str(err)[:60]}): {what_to_do}") from None
    if saved_indices != indices.tolist():
        raise UserError(f"{path} no longer matches the few-shot subset this run's config chooses (the data set "
                        f"changed?): {what_to_do}")


def check_last_checkpoint(path: Path, allow_unsafe: bool) -> None:
    """On resume: last.ckpt must load and be a Lightning checkpoint, checked before anything is
    written (Lightning itself reads it only after creating the logger's files)."""
    from zskt.checkpoints import read_checkpoint

    fix = "the run cannot resume from it; start it again in a new dir (without resume=true)"
    checkpoint = read_checkpoint(path, allow_unsafe, fix=fix)
    if not isinstance(checkpoint, dict) or not {"state_dict", "global_step", "epoch"} <= checkpoint.keys():
        raise UserError(f"checkpoint {path} is not a Lightning training checkpoint: {fix}")


def check_resume(output_dir: Path, indices: torch.Tensor | None, trains: bool, allow_unsafe: bool) -> None:
    """Everything a resumed run reads back from its dir, checked before it writes anything."""
    check_saved_subset(output_dir / FEW_SHOT_INDICES, indices)
    last = output_dir / CHECKPOINTS / LAST_CHECKPOINT
    if trains and not (last.exists() or last.is_symlink()):  # died before its first evaluation
        last = output_dir / CHECKPOINTS / INTERRUPTED_CHECKPOINT
    if trains and (last.exists() or last.is_symlink()):
        check_last_checkpoint(last, allow_unsafe)


# ---------------------------------------------------------------------------- a full disk
def disk_full(err: BaseException) -> OSError | None:
    """The first 'no space left' (or quota) error in `err`'s chain, if there is one: a save that
    fails can make the exception handlers' own saves fail too."""
    found = None
    while err is not None:
        if isinstance(err, OSError) and err.errno in DISK_FULL:
            found = err
        err = err.__context__
    return found


def disk_full_message(err: OSError, output_dir: str | os.PathLike) -> str:
    """The one line for a run stopped by a full disk: what failed, what is safe, how to go on."""
    where = f" writing {err.filename}" if err.filename else ""
    return (f"no space left on the device{where} ({err.strerror or os.strerror(err.errno)}): the run stopped; "
            f"{Path(output_dir) / CHECKPOINTS / LAST_CHECKPOINT} (if any) is the last complete checkpoint. "
            f"Free some space, then resume with {_resume_command(Path(output_dir))}")
