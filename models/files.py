"""Files hizoo writes and reads.

- Writes are atomic: the data goes to a temporary file in the destination's own folder (so the final
  ``os.replace`` never crosses a filesystem), is flushed to disk, and only then takes the destination's name. A
  crash or ``kill -9`` leaves the old file or the new one, never a truncated one; an interrupted write leaves at
  most a hidden ``.NAME.*.tmp`` next to it. Directories are built the same way (``atomic_directory``).
- Reads name the file in their error and say how to recover (``read_json``), and ``torch`` files are only ever
  loaded with ``torch.load(weights_only=True)`` (``load_torch_file``): a pickle that asks to import or call
  anything beyond tensors and plain containers is refused, never executed.
- Loads are complete: ``check_loaded_keys`` raises when weights the model needs are missing from the files (they
  would silently keep their random initialization), when the files hold weights the model has no place for, or
  when shapes differ; ``unreadable_safetensors`` names the damaged safetensors file of an export.

Lives in ``models/`` so that ``models/``, ``analysis/`` and ``study/`` all import it without a new dependency arrow.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch


def _temporary_name(path: Path, suffix: str) -> Path:
    """A hidden, unique name next to ``path`` (same folder, hence same filesystem)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")


def _fsync_directory(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """``with atomic_open(path) as f: f.write(...)``: the file appears at ``path`` complete when the block ends
    without an exception, and is left untouched otherwise. ``mode`` is ``"w"`` (text) or ``"wb"``."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    tmp = _temporary_name(path, ".tmp")
    # os.open with 0o666 lets the umask set the permissions, as a plain open() would (mkstemp would give 0600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, encoding=encoding if mode == "w" else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_json(path: str | Path, obj: Any, **dumps_kwargs) -> None:
    """``json.dumps(obj, **dumps_kwargs)`` written atomically; the text is built before the file is opened, so an
    object that does not serialize leaves no file behind."""
    atomic_write_text(path, json.dumps(obj, **dumps_kwargs))


def save_figure(fig, path: str | Path, **savefig_kwargs) -> None:
    """``fig.savefig`` written atomically (the format is the file's extension, as matplotlib infers it)."""
    path = Path(path)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format=path.suffix.lstrip(".") or None, **savefig_kwargs)


def read_json(path: str | Path, recover: str | None = None) -> Any:
    """``json.loads`` of a file; an unreadable, non-UTF-8 or malformed file raises a ``ValueError`` that names the
    file, says what is wrong and, when given, how to ``recover`` (e.g. "delete it to start that run again")."""
    path = Path(path)
    hint = f"; {recover}" if recover else ""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text (byte {err.start}): a corrupt file{hint}") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        what = "empty" if not text.strip() else f"not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
        raise ValueError(f"{path} is {what}: a truncated or corrupt file{hint}") from err


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """``with atomic_directory(dst) as tmp: <write files into tmp>``: on success ``tmp`` becomes ``dst``.

    ``tmp`` is a new hidden folder next to ``dst``; if the block raises it is removed and ``dst`` is untouched. An
    existing ``dst`` is replaced (the caller decides whether that is allowed): it is first renamed aside, the new
    folder renamed into place, then the old one deleted, so at every moment the complete old or the complete new
    folder exists under one of the two names (a crash between the two renames leaves the old one as
    ``.DST.*.old``)."""
    path = Path(path)
    tmp = _temporary_name(path, ".tmp")
    os.mkdir(tmp, 0o777)  # permissions from the umask, like a plain mkdir
    try:
        yield tmp
        if path.exists() or path.is_symlink():
            old = _temporary_name(path, ".old")
            os.rename(path, old)
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(old, path)
                raise
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink()
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_directory(path.parent)


def peek_torch_file(path: str | Path, what: str = "checkpoint") -> Any:
    """The file's contents with the tensors memory-mapped, not read (``torch.load(weights_only=True, mmap=True)``),
    for a look at its keys; a file that cannot be mapped goes through ``load_torch_file``, whose errors name it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return load_torch_file(path, what)


_UNSAFE_DETAIL = re.compile(r"(unsupported[^\n]*)", re.IGNORECASE)


def load_torch_file(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with errors that name the file.

    A file that holds anything but tensors and plain containers (a pickled object whose ``__reduce__`` would import
    or call something) raises ``ValueError`` "... is not a plain-tensor {what}" without running any of it; a
    truncated, empty or foreign file raises ``ValueError`` "... cannot be read". hizoo never falls back to
    ``weights_only=False``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist" if not path.exists() else f"{what} {path} is not a file")
    if path.stat().st_size == 0:
        raise ValueError(f"{what} {path} cannot be read: it is empty (0 bytes), e.g. a write that was killed")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        message = str(err)
        if "weights only load failed" not in message.lower():
            raise ValueError(f"{what} {path} cannot be read (truncated or corrupt: {message})") from err
        detail = _UNSAFE_DETAIL.search(message)
        detail = detail.group(1).strip().rstrip(".") if detail else "unsupported content"
        if "global" in detail.lower():  # a pickled object: it would import (and possibly call) what it names
            raise ValueError(
                f"{what} {path} is not a plain-tensor {what}: it holds pickled Python objects ({detail}) that "
                "torch.load(weights_only=True) refuses. hizoo never loads files with weights_only=False, since "
                "unpickling such a file can run arbitrary code; re-save it with tensors and plain types only") from None
        raise ValueError(
            f"{what} {path} cannot be read: it is not a plain-tensor {what} that torch.load(weights_only=True) "
            f"accepts ({detail}): truncated, corrupt, or not written by torch.save") from None
    except Exception as err:  # torch raises EOFError, RuntimeError, IndexError, KeyError, ... for damaged files
        raise ValueError(
            f"{what} {path} cannot be read (truncated, corrupt or not a torch file: {type(err).__name__}: {err})"
        ) from err


def _compact_keys(keys, limit: int = 12) -> str:
    """Weight names with their layer indices gathered: model.layers.{0, 1}.attn_conn.alpha."""
    groups: dict[str, list[str]] = {}
    for key in sorted(keys):
        match = re.search(r"(?<=\.)\d+(?=\.)", key)  # the first index (the layer's)
        pattern = key if match is None else key[: match.start()] + "{}" + key[match.end():]
        groups.setdefault(pattern, []).append(match.group() if match else "")
    names = []
    for pattern, indices in groups.items():
        unique = sorted(set(indices), key=lambda i: int(i) if i else -1)
        names.append(pattern.replace("{}", "{" + ", ".join(unique) + "}" if len(unique) > 1 else unique[0]))
    return ", ".join(names[:limit]) + (f", ... {len(names) - limit} more" if len(names) > limit else "")


def check_loaded_keys(model, missing, unexpected, mismatched, source, hint: str | None = None) -> None:
    """Raise ``ValueError`` naming ``source`` when loading weights into ``model`` left names ``missing`` (the model
    needs them; they would keep their random initialization), ``unexpected`` (the files hold them; they would be
    dropped) or ``mismatched`` ((name, shape in the files, shape in the model)). ``hint`` replaces the closing
    advice."""
    missing, unexpected, mismatched = sorted(missing), sorted(unexpected), sorted(mismatched)
    if not (missing or unexpected or mismatched):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} weights the model needs are not in the files (they would start random): "
                        + _compact_keys(missing))
    if unexpected:
        problems.append(f"{len(unexpected)} weights in the files have no place in the model: "
                        + _compact_keys(unexpected))
    if mismatched:
        shown = ", ".join(f"{k} (files {tuple(a)} vs model {tuple(b)})" for k, a, b in mismatched[:6])
        problems.append(f"{len(mismatched)} weights have another shape: {shown}"
                        + (f", ... {len(mismatched) - 6} more" if len(mismatched) > 6 else ""))
    c = model.config
    raise ValueError(
        f"{source} does not hold the weights of the model its config describes ({type(model).__name__} with "
        f"num_hidden_layers={c.num_hidden_layers}, residual={c.residual!r}, n_streams={c.n_streams}, "
        f"ffn={c.ffn!r}, hidden_size={c.hidden_size}): " + "; ".join(problems) + ". "
        + (hint or "Use the config the weights were saved with (strict=False loads anyway, with random "
                   "weights where they are missing)"))


def unreadable_safetensors(directory) -> str:
    """Which safetensors file of ``directory`` is damaged (its header does not parse), as a message."""
    from safetensors import SafetensorError, safe_open

    bad = []
    for file in sorted(Path(directory).glob("*.safetensors")) if Path(directory).is_dir() else ():
        try:
            with safe_open(file, framework="pt"):
                pass
        except (SafetensorError, OSError):
            bad.append(str(file))
    return (f"{', '.join(bad)} cannot be read: a truncated or corrupt safetensors file" if bad
            else f"the weights of {directory} cannot be read: a truncated or corrupt safetensors file")
