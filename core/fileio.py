"""Every file and folder Polyprune writes goes through here: one atomic writer, one strict JSON
writer, one settings reader, and one rule for output paths.

The rule for output paths (:func:`check_output`):

* never the source model folder, anything inside it, or a folder that contains it;
* an existing folder is replaced only when it is a Polyprune output (it holds the marker file
  :data:`MARKER`, written into every folder Polyprune creates) *and* the user asked to replace it;
  an existing single file likewise (a file Polyprune wrote carries its own signature, see
  :func:`is_polyprune_file`);
* a folder is assembled in a temporary folder beside the target and renamed into place last
  (:func:`output_folder`), so a failed, cancelled or killed run leaves nothing at the target;
  temporaries of earlier killed runs are removed (and reported) the next time the same target is
  written;
* temporary names are unique (``mkstemp``/``mkdtemp``, opened with ``O_EXCL``), so a planted
  symlink is never followed.

Nothing here imports torch.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import stat
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import yaml

from . import __version__
from .errors import PolypruneError

#: Marker file inside every folder Polyprune writes (JSON: tool, version, kind, created).
MARKER = ".polyprune-output.json"
#: Key of the signature object in JSON files Polyprune writes.
JSON_SIGNATURE = "polyprune"
PARTIAL = ".partial-"
OLD = ".old-"


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def _fix_mode(path: Path, directory: bool) -> None:
    """``mkstemp``/``mkdtemp`` create 0600/0700; give the final file or folder the usual mode."""
    base = 0o777 if directory else 0o666
    try:
        os.chmod(path, base & ~_umask())
    except OSError:
        pass


def _os_error(path: Path, e: OSError, what: str = "write") -> PolypruneError:
    if e.errno in (28, 122):  # ENOSPC, EDQUOT
        return PolypruneError(f"The disk is full: could not {what} {path}", "free some disk space or choose another folder")
    if e.errno in (13, 1, 30):  # EACCES, EPERM, EROFS
        return PolypruneError(f"No permission to {what} {path}", "choose a folder you can write to")
    return PolypruneError(f"Could not {what} {path}: {e.strerror or e}", "check the path, free disk space and permissions")


# --------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------
def jsonable(obj: Any) -> Any:
    """A strict-JSON version of ``obj``: NaN and infinities become ``None``, numpy/torch scalars
    and arrays become Python numbers and lists, paths and other objects their ``str``."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy / torch arrays and scalars
        try:
            return jsonable(obj.tolist())
        except (TypeError, ValueError):
            pass
    if hasattr(obj, "item") and callable(obj.item):
        try:
            return jsonable(obj.item())
        except (TypeError, ValueError):
            pass
    return str(obj)


def dumps(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON text of ``obj`` (see :func:`jsonable`): never ``NaN`` or ``Infinity``."""
    return json.dumps(jsonable(obj), indent=indent, ensure_ascii=False, allow_nan=False)


def signature(kind: str) -> dict:
    """The object stored under :data:`JSON_SIGNATURE` in JSON files Polyprune writes."""
    return {"kind": kind, "version": __version__}


# --------------------------------------------------------------------------------------------
# atomic files
# --------------------------------------------------------------------------------------------
@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path``; on success it replaces ``path`` atomically.

    The temporary name is unique (``mkstemp``), so nothing planted there is followed. On any error
    the temporary file is removed and ``path`` is left as it was.

    Raises:
        PolypruneError: the folder cannot be written (permission, disk full).
    """
    p = Path(path).expanduser()
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    except OSError as e:
        raise _os_error(p, e) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _fix_mode(tmp_path, directory=False)
        os.replace(tmp_path, p)
    except OSError as e:
        tmp_path.unlink(missing_ok=True)
        raise _os_error(p, e) from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`); returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path).expanduser()


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_path`); returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any, kind: str | None = None) -> Path:
    """Write ``obj`` as strict JSON, atomically. With ``kind``, a dict gets the Polyprune signature
    ``{"polyprune": {"kind": kind, "version": ...}}`` first (see :func:`is_polyprune_file`)."""
    if kind is not None and isinstance(obj, dict):
        obj = {JSON_SIGNATURE: signature(kind), **{k: v for k, v in obj.items() if k != JSON_SIGNATURE}}
    return atomic_write_text(path, dumps(obj) + "\n")


# --------------------------------------------------------------------------------------------
# settings files
# --------------------------------------------------------------------------------------------
#: Largest settings file read (recipes and studies are a few kilobytes).
MAX_SETTINGS_BYTES = 4 * 2 ** 20


def read_settings_file(path: str | Path, what: str) -> Any:
    """Parse a JSON (``.json``) or YAML (anything else) settings file with a safe loader.

    Raises:
        PolypruneError: missing file, a folder, a file too large or not UTF-8, or a parse error
            with its position.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise PolypruneError(f"The {what} {p} is a folder, not a file", f"choose the {what} file (YAML or JSON)")
    if not p.is_file():
        raise PolypruneError(f"The {what} file {p} does not exist", "check the path")
    if p.stat().st_size > MAX_SETTINGS_BYTES:
        raise PolypruneError(f"The {what} file {p} is larger than {MAX_SETTINGS_BYTES // 2 ** 20} MB",
                             f"give a {what} file of settings (YAML or JSON)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PolypruneError(f"The {what} file {p} is not UTF-8 text ({e.reason})", "save it as UTF-8") from None
    return parse_settings(text, f"{what} {p}", json_only=p.suffix.lower() == ".json")


def parse_settings(text: str, where: str, json_only: bool = False) -> Any:
    """Parse settings text (YAML, which includes JSON; strict JSON when ``json_only``).

    Raises:
        PolypruneError: a syntax error, with its line.
    """
    try:
        if json_only:
            return json.loads(text) if text.strip() else None
        return yaml.safe_load(text) if text.strip() else None
    except json.JSONDecodeError as e:
        raise PolypruneError(f"Could not parse the {where}: {e.msg} at line {e.lineno}", "fix the JSON syntax there") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise PolypruneError(f"Could not parse the {where}{at}: {getattr(e, 'problem', None) or e}",
                             "fix the YAML syntax there") from None


# --------------------------------------------------------------------------------------------
# the output rule
# --------------------------------------------------------------------------------------------
def is_polyprune_folder(path: str | Path) -> bool:
    """True when ``path`` is a folder holding the marker file :data:`MARKER`."""
    p = Path(path)
    return p.is_dir() and not p.is_symlink() and (p / MARKER).is_file()


def is_polyprune_file(path: str | Path) -> bool:
    """True when ``path`` is a file Polyprune wrote: a JSON object with the Polyprune signature, a
    CSV/JSON Lines file whose folder is a Polyprune output, or a file with a sidecar
    ``<name>.polyprune.json``."""
    p = Path(path)
    if not p.is_file() or p.is_symlink():
        return False
    if is_polyprune_folder(p.parent) or p.with_name(p.name + ".polyprune.json").is_file():
        return True
    if p.suffix.lower() == ".json" and p.stat().st_size < 512 * 2 ** 20:
        try:
            with open(p, encoding="utf-8") as fh:
                head = fh.read(256)
            if JSON_SIGNATURE not in head:
                return False
            obj = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return False
        return isinstance(obj, dict) and isinstance(obj.get(JSON_SIGNATURE), dict)
    return False


def _related(a: Path, b: Path) -> bool:
    return a == b or b in a.parents or a in b.parents


def _a(noun: str) -> str:
    """``noun`` with its indefinite article (``an export folder``, ``a results file``)."""
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def check_output(target: str | Path, *, sources: Iterable[str | Path | None] = (), overwrite: bool = False,
                 kind: str = "folder", what: str = "output folder", replace_hint: str = "pass --overwrite") -> Path:
    """Validate an output path before any work is done; return it resolved.

    Args:
        target: the folder or file to write.
        sources: folders that must never be written (the source model folder, input data).
        overwrite: the user asked to replace an existing Polyprune output.
        kind: ``folder`` or ``file``.
        what: how messages name the path (``export folder``, ``results file``).
        replace_hint: how the user asks to replace (``--overwrite``, or the GUI's check box).

    Raises:
        PolypruneError: the target is, contains or lies inside a source; it exists and either
            ``overwrite`` is false or it is not a Polyprune output; it is of the other kind; or its
            folder cannot be written.
    """
    out = Path(target).expanduser().resolve()
    for src in sources:
        if src is None:
            continue
        s = Path(src).expanduser().resolve()
        if _related(out, s) if kind == "folder" else (out == s or s in out.parents):
            raise PolypruneError(f"The {what} {out} would overwrite the source {s} (or lie inside it)",
                                 f"choose {_a(what)} outside {s}; the source is never modified")
    if out.exists() or out.is_symlink():
        is_dir = out.is_dir()
        if kind == "folder" and not is_dir:
            raise PolypruneError(f"The {what} {out} is an existing file", f"choose a new folder name for the {what}")
        if kind == "file" and is_dir:
            raise PolypruneError(f"The {what} {out} is an existing folder", "give a file name, not a folder")
        ours = is_polyprune_folder(out) if kind == "folder" else is_polyprune_file(out)
        if not ours:
            raise PolypruneError(f"The {what} {out} already exists and was not written by Polyprune",
                                 f"choose a new {'folder' if kind == 'folder' else 'file'}; Polyprune never replaces "
                                 "files it did not write")
        if not overwrite:
            raise PolypruneError(f"The {what} {out} already exists",
                                 f"choose a new {'folder' if kind == 'folder' else 'file'}, or {replace_hint} to replace it")
    parent = out.parent
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise PolypruneError(f"Cannot create the {what} {out}: {existing} is not a folder", "choose another location")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PolypruneError(f"No permission to write in {existing}", f"choose {_a(what)} in a folder you can write to")
    return out


def check_free_space(folder: str | Path, need_bytes: int, what: str) -> None:
    """Raise when the disk holding ``folder`` has less than ``need_bytes`` free (with 5% margin).

    Raises:
        PolypruneError: naming how much is needed and how much is free.
    """
    p = Path(folder).expanduser()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        free = shutil.disk_usage(p).free
    except OSError:
        return
    if free < need_bytes * 1.05:
        raise PolypruneError(f"{what} needs about {need_bytes / 2 ** 30:.2f} GiB but {p} has {free / 2 ** 30:.2f} GiB free",
                             "free some disk space or choose a folder on another disk")


def clean_stale(parent: Path, name: str, log: Callable[[str], None] | None = None, min_age_s: float = 0.0) -> list[Path]:
    """Remove temporaries of earlier interrupted writes of ``parent/name`` (``.NAME.partial-*``,
    ``.NAME.old-*`` holding the marker file, and ``.NAME.*.tmp`` files); return what was removed."""
    removed = []
    if not parent.is_dir():
        return removed
    now = time.time()
    for p in parent.iterdir():
        n = p.name
        if not n.startswith(f".{name}."):
            continue
        try:
            st = p.lstat()
        except OSError:
            continue
        if now - st.st_mtime < min_age_s:
            continue
        ours = (p / MARKER).is_file() or (p / "previous" / MARKER).is_file()
        if stat.S_ISDIR(st.st_mode) and (PARTIAL in n or OLD in n) and ours:
            shutil.rmtree(p, ignore_errors=True)
        elif stat.S_ISREG(st.st_mode) and n.endswith(".tmp"):
            p.unlink(missing_ok=True)
        else:
            continue
        removed.append(p)
        if log is not None:
            log(f"Removed {p}, left by an interrupted earlier run")
    return removed


def write_marker(folder: Path, kind: str, complete: bool = True, extra: dict | None = None) -> None:
    """Write the marker file that makes ``folder`` a Polyprune output."""
    body = {"written_by": "polyprune", "version": __version__, "kind": kind, "complete": complete,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")} | (extra or {})
    (folder / MARKER).write_text(dumps(body) + "\n", encoding="utf-8")


@contextmanager
def output_folder(target: str | Path, *, kind: str, sources: Iterable[str | Path | None] = (),
                  overwrite: bool = False, what: str = "output folder", replace_hint: str = "pass --overwrite",
                  log: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Assemble a whole output folder in a temporary folder beside ``target`` and move it into place.

    Yields the temporary folder to write into. On success the marker is completed and the folder
    renamed to ``target`` (an existing Polyprune output is replaced only with ``overwrite``); on
    any error, cancel or interrupt the temporary folder is removed and ``target`` stays as it was.

    Raises:
        PolypruneError: see :func:`check_output`; a failed write (disk full, permissions).
    """
    out = check_output(target, sources=sources, overwrite=overwrite, kind="folder", what=what,
                       replace_hint=replace_hint)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(out.parent, out.name, log)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}{PARTIAL}", dir=out.parent))
        write_marker(tmp, kind, complete=False)
    except OSError as e:
        raise _os_error(out, e) from None
    try:
        yield tmp
        write_marker(tmp, kind, complete=True)
        _fix_mode(tmp, directory=True)
        for p in tmp.rglob("*"):  # writers that use mkstemp (safetensors, via save_pretrained) leave 0600
            _fix_mode(p, directory=p.is_dir())
        if out.exists():
            # check again: the folder may have changed while the work ran
            check_output(out, sources=sources, overwrite=overwrite, kind="folder", what=what, replace_hint=replace_hint)
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}{OLD}", dir=out.parent))
            os.replace(out, old / "previous")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _os_error(out, e) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def fresh_folder(base: Path) -> Path:
    """``base`` when it does not exist, else ``base-2``, ``base-3``, ... (never an existing folder):
    where a run goes when its recipe names a folder that is already there."""
    if not base.exists():
        return base.resolve()
    k = 2
    while Path(f"{base}-{k}").exists():
        k += 1
    return Path(f"{base}-{k}").resolve()
