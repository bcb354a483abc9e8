"""Folders that belong to one run: a lock against a second writer, and a trainer's run record.

`lock(folder)` (the trainers' work directories, the output folders of `experiments.predict` and
`experiments.evaluate`): the file `.lock` names the holder (host, pid, start time, command). It is
created atomically (written aside, then hard-linked into place), so a second run that finds it
is refused with a message naming the holder. A lock is stale, and is replaced with a warning,
when its process has ended on this host (kill -9, a crash), when this host has rebooted since,
or when it carries this process's own pid (a restarted container). A lock from another host
cannot be checked from here: the message says to delete the file once that run is gone. The
lock is removed when its holder ends normally (also after an error or SIGTERM), and so is the
folder when the lock created it and nothing else was written.

`output_folder(folder, what, overwrite)`: the one rule of every command that writes an --out or
report folder (predict, evaluate, evaluate_imc, kcmi, sensitivity, export). A folder is never left
half old, half new: the run holds the lock, and records every file it wrote in `.outputs.json`
(written at the start with the files that were already there, completed at the end; a run that
was killed leaves the start record, from which the next run tells its files apart). A folder that
already holds files is refused, naming them, unless `overwrite`: then the files an earlier run
recorded as its own are deleted (and said so) and the others are kept, also said so. A refused
or failed run that created the folder and wrote nothing removes it again.

`check_run` / `write_run`: `run.json` in a trainer's work directory records the settings that
define the run (mantra_jax.train.loop.run_settings lists them). A rerun with any other value is
refused before anything is written, naming each difference; `delete_run` starts over, and only
where run.json says a run owns the folder.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Iterable, Iterator, Optional

from mantra_jax.errors import UserError

LOCK_FILE = ".lock"
RUN_FILE = "run.json"
OUTPUTS_FILE = ".outputs.json"
_BOOKKEEPING = {LOCK_FILE, OUTPUTS_FILE}

log = logging.getLogger(__name__)


class Locked(UserError):
    """The folder is held by another run."""


class OtherRun(UserError):
    """The work directory holds a run with other defining settings."""


# -- output folders -------------------------------------------------------------------------------
def check_output_folder(folder, flag: str = "--out") -> Path:
    """Raises UserError, naming the flag and the path, unless `folder` is a folder or can be made
    one: not a file, not below a file, not in a folder this user cannot write. Creates nothing."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {folder} is a file, not a folder: give a folder for the outputs")
    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"{flag} {folder}: {ancestor} is a file, so no folder can be made below it")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {folder}: {ancestor} cannot be written by this user")
    return folder


# -- the lock -------------------------------------------------------------------------------------
@contextlib.contextmanager
def lock(folder, what: str = "run") -> Iterator[Path]:
    """Holds `folder/.lock` while the block runs (creating the folder); raises Locked when another
    live process holds it, and UserError when `folder` exists and is not a folder."""
    folder = check_output_folder(folder, "--workdir" if what == "training run" else "--out")
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    mine = _acquire(path, what)
    try:
        yield path
    finally:
        if _holder(path) == mine:
            path.unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when the run wrote nothing


def _me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "boot_id": _boot_id(),
            "since": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:500] if sys.argv else ""}


def _acquire(path: Path, what: str) -> dict:
    me = _me()
    aside = path.with_name(f"{path.name}.{me['host']}.{me['pid']}")
    aside.write_text(json.dumps(me))
    try:
        for _ in range(3):
            try:
                os.link(aside, path)
                return me
            except FileExistsError:
                holder = _holder(path)
                if not _stale(holder, me):
                    raise Locked(_held_message(path, holder, what)) from None
                log.warning("%s: removing the stale lock of pid %s on %s (that process has ended)",
                            path.parent, holder.get("pid"), holder.get("host"))
                path.unlink(missing_ok=True)
        raise Locked(f"{path.parent}: could not take the lock {path}; another run keeps taking it")
    finally:
        aside.unlink(missing_ok=True)


def _holder(path: Path) -> Optional[dict]:
    try:
        holder = json.loads(path.read_text())
        return holder if isinstance(holder, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: held by something we cannot identify


def _stale(holder: Optional[dict], me: dict) -> bool:
    if holder is None:
        return True  # removed meanwhile
    if holder.get("host") != me["host"] or not isinstance(holder.get("pid"), int):
        return False
    if holder.get("boot_id") and me["boot_id"] and holder["boot_id"] != me["boot_id"]:
        return True  # this host has rebooted since
    return holder["pid"] == me["pid"] or not _alive(holder["pid"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _held_message(path: Path, holder: dict, what: str) -> str:
    if not holder:
        return (f"{path.parent} is locked by {path}, which cannot be read. If no other {what} uses "
                f"this folder, delete {path} and start again.")
    text = (f"{path.parent} is in use by another {what}: pid {holder.get('pid')} on "
            f"{holder.get('host')}, since {holder.get('since')} ({holder.get('command')}). Wait "
            f"for it to end or use another folder.")
    if holder.get("host") != socket.gethostname():
        text += (f" That process is on another machine, so this one cannot tell whether it still "
                 f"runs: if it has ended (its machine stopped), delete {path} and start again.")
    return text


# -- output folders -------------------------------------------------------------------------------
class FolderNotEmpty(UserError):
    """An output folder that already holds files (without --overwrite)."""


def _files(folder: Path) -> set[str]:
    """Every file under `folder` (relative POSIX paths), the lock and the manifest left out."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not (Path(dirpath) / d).is_symlink()]
        rel = Path(dirpath).relative_to(folder)
        for name in filenames:
            if rel == Path(".") and (name in _BOOKKEEPING or name.startswith(LOCK_FILE + ".")):
                continue
            out.add((rel / name).as_posix())
    return out


def _earlier_run(folder: Path, present: set[str]) -> tuple[set[str], str]:
    """(the files of `present` an earlier run recorded as its own, that run's command)."""
    try:
        record = json.loads((folder / OUTPUTS_FILE).read_text())
    except FileNotFoundError:
        return set(), ""
    except (OSError, ValueError):
        return set(), ""  # unreadable: nothing is known to be a run's own
    if not isinstance(record, dict):
        return set(), ""
    if isinstance(record.get("files"), list):
        own = set(map(str, record["files"]))
    else:  # interrupted: everything but what was there before it
        own = present - set(map(str, record.get("kept", [])))
    return own & present, str(record.get("command", ""))


def _listing(names: Iterable[str], limit: int = 5) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _remove_empty_dirs(folder: Path, names: Iterable[str]) -> None:
    parents = sorted({p for n in names for p in Path(n).parents if p != Path(".")}, key=lambda p: -len(p.parts))
    for p in parents:
        with contextlib.suppress(OSError):
            (folder / p).rmdir()


def _write_manifest(folder: Path, record: dict) -> None:
    tmp = folder / f"{OUTPUTS_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, folder / OUTPUTS_FILE)


@contextlib.contextmanager
def output_folder(folder, what: str = "run", *, overwrite: bool = False, flag: str = "--out") -> Iterator[Path]:
    """Holds `folder` (created when missing) for one run that writes its outputs there: see the
    module docstring. Raises UserError for a `folder` that is a file, FolderNotEmpty for one that
    holds files (unless `overwrite`), Locked for one in use."""
    folder = check_output_folder(folder, flag)
    with lock(folder, what=what):
        present = _files(folder)
        own, earlier = _earlier_run(folder, present)
        foreign = present - own
        if present and not overwrite:
            if own:
                text = (f"{flag} {folder} holds the outputs of an earlier run"
                        + (f" ({earlier})" if earlier else "") + f": {len(own)} file(s), {_listing(own)}")
                if foreign:
                    text += f"; and {len(foreign)} other file(s): {_listing(foreign)}"
            else:
                text = f"{flag} {folder} is not empty: {len(foreign)} file(s), {_listing(foreign)}"
            raise FolderNotEmpty(text + ". Nothing was changed. Give a new or empty folder, or --overwrite to "
                                 "replace the earlier run's files (files no run of these commands recorded are kept).")
        if own:
            for name in sorted(own):
                (folder / name).unlink(missing_ok=True)
            _remove_empty_dirs(folder, own)
            print(f"--overwrite: deleted the earlier run in {folder} ({len(own)} file(s): {_listing(own)})",
                  file=sys.stderr, flush=True)
        if foreign and overwrite:
            print(f"--overwrite: kept {len(foreign)} file(s) in {folder} that no earlier run recorded: "
                  f"{_listing(foreign)}", file=sys.stderr, flush=True)
        command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:500] if sys.argv else ""
        record = {"command": command, "what": what,
                  "started": datetime.datetime.now().isoformat(timespec="seconds"), "kept": sorted(foreign)}
        _write_manifest(folder, record)
        try:
            yield folder
        finally:
            written = _files(folder) - foreign
            if written:
                _write_manifest(folder, dict(record, files=sorted(written)))
            else:  # a refused or failed run that wrote nothing leaves nothing (lock() removes a folder it made)
                (folder / OUTPUTS_FILE).unlink(missing_ok=True)


# -- the run record -------------------------------------------------------------------------------
def read_run(workdir) -> Optional[dict]:
    path = Path(workdir) / RUN_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        return record["settings"]
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: unreadable run record ({e}); if this work directory is yours, "
                        f"start over with --overwrite, or use another --workdir") from None


def write_run(workdir, settings: dict):
    """Writes run.json (atomically: a reader never sees half of it)."""
    path = Path(workdir) / RUN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"settings": _plain(settings),
                               "created": datetime.datetime.now().isoformat(timespec="seconds")},
                              indent=1))
    os.replace(tmp, path)


def differences(recorded: dict, settings: dict) -> list[str]:
    """`name: recorded X, now Y` for every setting that differs (nested keys joined by dots)."""
    old, new = _flatten(_plain(recorded)), _flatten(_plain(settings))
    show = lambda tree, k: json.dumps(tree[k]) if k in tree else "(none)"
    return [f"{k}: {show(old, k)} recorded, {show(new, k)} now"
            for k in sorted(set(old) | set(new)) if k not in old or k not in new or old[k] != new[k]]


def check_run(workdir, settings: dict, recorded: Optional[dict] = None):
    """Raises OtherRun, naming the differences, when `workdir` holds a run of other settings.

    `recorded` defaults to run.json. Settings the record lacks (added to the code since it was
    written; an older work directory's model_config.json alone) are not compared.
    """
    if recorded is None:
        recorded = read_run(workdir)
    if recorded is None:
        return
    diffs = differences(recorded, {k: v for k, v in settings.items() if k in recorded})
    if diffs:
        raise OtherRun(
            f"{workdir} holds another run; these settings differ from it:\n  " + "\n  ".join(diffs)
            + f"\nNothing was changed. Use another --workdir, or start over in this one with "
              f"--overwrite (which deletes that run's checkpoints, metrics and reports).")


def present(workdir, entries: Iterable[str]) -> list[str]:
    """The names in `workdir` that match the glob patterns `entries` (folders with a slash)."""
    workdir = Path(workdir)
    return [p.name + ("/" if p.is_dir() and not p.is_symlink() else "")
            for pattern in entries for p in sorted(workdir.glob(pattern)) if p.name != LOCK_FILE]


def delete_run(workdir, entries: Iterable[str]) -> list[str]:
    """Deletes the run's files and folders matching the glob patterns `entries`; returns their
    names. Files of other origin in the folder are kept."""
    workdir = Path(workdir)
    deleted = []
    for pattern in entries:
        for path in sorted(workdir.glob(pattern)):
            if path.name == LOCK_FILE:
                continue
            folder = path.is_dir() and not path.is_symlink()
            shutil.rmtree(path) if folder else path.unlink()
            deleted.append(path.name + ("/" if folder else ""))
    return deleted


def _plain(value):
    """JSON's view of a value (tuples become lists), so records compare with fresh settings."""
    return json.loads(json.dumps(value))


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
