"""Safe checkpoint loading: never run code from a file a user hands us.

Every checkpoint this package reads goes through :func:`load_checkpoint_file`:

* PyTorch files (``torch.save``: zip or legacy format) are read with
  ``torch.load(..., weights_only=True)``, passed explicitly, so no environment variable
  (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``) can turn it off;
* plain pickles (Detectron2 / Caffe2 model-zoo ``.pkl`` files) are read by
  :class:`RestrictedUnpickler`, which resolves only the allow-listed globals below.

The allow-list is explicit and small: numpy arrays, dtypes and scalars (under their numpy 1.x
and 2.x module paths), ``collections.OrderedDict`` and the plain types torch already allows,
plus what a framework adapter registers with :func:`register_safe_types` for the checkpoints
that framework really writes (``plugins.mm`` adds mmengine's ``HistoryBuffer``). A file that
needs anything else is refused with :class:`CheckpointRefusedError`, one line naming the
type; there is no fallback to full unpickling.

This module is framework-free (torch and numpy only).
"""

from __future__ import annotations

import _compat_pickle
import collections
import os
import pickle
import re
import zipfile
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

__all__ = [
    "CheckpointError",
    "CheckpointRefusedError",
    "CheckpointUnreadableError",
    "RestrictedUnpickler",
    "allowed_type_names",
    "load_checkpoint_file",
    "load_pickle_file",
    "register_installed_framework_types",
    "register_safe_attributes",
    "register_safe_types",
    "save_checkpoint_file",
]


class CheckpointError(RuntimeError):
    """A checkpoint file could not be used (base class of the errors below)."""


class CheckpointRefusedError(CheckpointError, pickle.UnpicklingError):
    """The file needs a type that is not on the allow-list: loading it could run code."""


class CheckpointUnreadableError(CheckpointError):
    """The file is missing, truncated, corrupt or not a checkpoint at all."""


# ----------------------------------------------------------------------------------------
# The allow-list: dotted name as it appears in a pickle -> the object it resolves to.

_ALLOWED: dict[str, Any] = {}


def register_safe_types(*objects: Any, names: Iterable[tuple[Any, str]] = ()) -> None:
    """Add classes / functions to the allow-list of checkpoint loading (process-wide).

    They are registered with ``torch.serialization.add_safe_globals`` (so torch's own
    ``weights_only`` loading, used by the frameworks' tools, accepts them) and with
    :class:`RestrictedUnpickler`.

    Args:
        *objects: classes or functions, recorded under ``module.qualname``.
        names: ``(object, "dotted.name")`` pairs for objects that older files reference
            under another module path (e.g. numpy 1.x's ``numpy.core``).
    """
    pairs = [(obj, f"{obj.__module__}.{obj.__qualname__}") for obj in objects]
    pairs += list(names)
    for obj, name in pairs:
        _ALLOWED[name] = obj
    torch.serialization.add_safe_globals([(obj, name) for obj, name in pairs])


def allowed_type_names() -> list[str]:
    """The dotted names on the allow-list (this module's and the adapters'), sorted."""
    return sorted(_ALLOWED)


def _register_numpy() -> None:
    multiarray = np._core.multiarray
    register_safe_types(
        np.ndarray,
        np.dtype,
        multiarray._reconstruct,
        multiarray.scalar,
        *(type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDGSUV"),
        names=[
            # files written with numpy 1.x name the same functions under numpy.core
            (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
            (multiarray.scalar, "numpy.core.multiarray.scalar"),
        ],
    )


_register_numpy()


_ATTRIBUTES: dict[type, frozenset[str]] = {}


def register_safe_attributes(cls: type, names: Iterable[str]) -> None:
    """Allow a pickle to look up the methods ``names`` of the allow-listed class ``cls``.

    Pickles refer to a class's method as ``getattr(cls, "name")``; ``getattr`` itself can
    reach anything, so the allow-list carries :func:`_checked_getattr`, which only answers
    for registered ``(class, method name)`` pairs (and returns plain functions only).

    Args:
        cls: a class already registered with :func:`register_safe_types`.
        names: public method names of ``cls``.
    """
    _ATTRIBUTES[cls] = _ATTRIBUTES.get(cls, frozenset()) | frozenset(names)
    register_safe_types(names=[(_checked_getattr, "builtins.getattr")])


def _checked_getattr(obj: Any, name: str) -> Any:
    """``getattr`` for unpickling: registered class methods only (see above)."""
    allowed = _ATTRIBUTES.get(obj) if isinstance(obj, type) else None
    if not allowed or name not in allowed or name.startswith("_"):
        raise CheckpointRefusedError(
            f"it looks up {getattr(obj, '__name__', type(obj).__name__)}.{name}, which is not "
            "an allowed attribute"
        )
    value = obj.__dict__.get(name)
    if not callable(value) or not hasattr(value, "__code__"):
        raise CheckpointRefusedError(f"it looks up {obj.__name__}.{name}, which is not a method")
    return value


def register_installed_framework_types() -> None:
    """Allow-list the framework types our checkpoints hold, for the frameworks installed.

    ``import plugins.mm`` does this for mmengine; tools that read either framework's files
    without importing an adapter (the converters) call this instead. Today: mmengine's
    ``HistoryBuffer`` (the message hub's logged scalars in every mmengine checkpoint).
    """
    try:
        from mmengine.logging import HistoryBuffer
    except ImportError:
        return
    register_safe_types(HistoryBuffer)
    # a HistoryBuffer pickles its statistics methods (min, max, mean, current, ...) by name
    # (the four built-in ones are filled into the class dict by the first instance)
    methods = {"min", "max", "current", "mean", *HistoryBuffer._statistics_methods}
    register_safe_attributes(HistoryBuffer, methods)


# what RestrictedUnpickler accepts besides the registered names (torch allows these itself)
_PLAIN = {
    "collections.OrderedDict": collections.OrderedDict,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.complex": complex,
    "builtins.bytearray": bytearray,
    "builtins.slice": slice,
    "_codecs.encode": __import__("codecs").encode,  # bytes in protocol-2 pickles
}


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only allow-listed globals.

    Every class or function a pickle refers to goes through :meth:`find_class`; anything not
    on the allow-list raises :class:`CheckpointRefusedError` before it is called, so the
    file cannot run code. Python objects of other classes cannot be built at all.
    """

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names of protocol 0-2 pickles (``__builtin__``, ``copy_reg``), as pickle does
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        dotted = f"{module}.{name}"
        if dotted in _ALLOWED:
            return _ALLOWED[dotted]
        if dotted in _PLAIN:
            return _PLAIN[dotted]
        raise CheckpointRefusedError(f"it needs {dotted}, which is not an allowed checkpoint type")


# ----------------------------------------------------------------------------------------
# Loading.

_GLOBAL_RE = re.compile(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)")
# PROTO 2, LONG1 of 10 bytes, torch's legacy magic number 0x1950A86A20F9469CFC6C
_TORCH_LEGACY_HEAD = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def _refusal(path: str, reason: str) -> CheckpointRefusedError:
    return CheckpointRefusedError(
        f"refused to load {path}: {reason} (checkpoints are read with weights_only=True and "
        "an allow-list, because unpickling anything else can run code). If you trust the "
        "file, re-save its tensors as a plain state dict (torch.save(state_dict)) where it "
        "was made."
    )


def _is_torch_file(path: str) -> bool:
    """Whether ``path`` is a ``torch.save`` file: a zip archive, or the legacy format, which
    starts with its magic number pickled with protocol 2 (compared as bytes, not unpickled)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        head = f.read(len(_TORCH_LEGACY_HEAD))
    return head == _TORCH_LEGACY_HEAD


def load_checkpoint_file(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Read a checkpoint without running code from it.

    Args:
        path: a ``torch.save`` file (``.pth``, ``.pt``, ``.ckpt``, ...) or a plain pickle
            (Detectron2 ``.pkl`` model-zoo format).
        map_location: where tensors go (``torch.load``'s argument). Default ``"cpu"``.

    Returns:
        The loaded object (usually a dict of tensors and plain Python values).

    Raises:
        CheckpointRefusedError: the file needs a type that is not allow-listed (one line
            naming it); it was not unpickled further.
        CheckpointUnreadableError: missing, truncated or corrupt file, or not a checkpoint.
    """
    path = os.fspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise CheckpointUnreadableError(f"checkpoint not found: {path}")
    if not _is_torch_file(path):
        with open(path, "rb") as f:
            if f.read(4) == b"PK\x03\x04":  # a zip that does not open: cut short
                raise CheckpointUnreadableError(
                    f"cannot read checkpoint {path}: the torch file is truncated or corrupt "
                    "(its zip archive does not open)"
                )
        return load_pickle_file(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's weights-only unpickler refused something: name it without unpickling
        match = _GLOBAL_RE.search(str(exc))
        if isinstance(exc.__context__, CheckpointRefusedError):  # raised by _checked_getattr
            raise _refusal(path, str(exc.__context__)) from None
        needed = [match.group(1)] if match else _unsafe_globals(path)
        if needed:
            raise _refusal(
                path, f"it needs {', '.join(needed[:3])}, which is not allowed"
            ) from None
        raise _refusal(path, f"torch's weights-only reader stopped: {_last_reason(exc)}") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        raise CheckpointUnreadableError(
            f"cannot read checkpoint {path}: the file is truncated, corrupt or not a "
            f"checkpoint ({type(exc).__name__}: {_first_line(exc)})"
        ) from None


def _unsafe_globals(path: str) -> list[str]:
    """Globals a torch file needs beyond the allow-list (scanned, not executed)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:
        return []


def _last_reason(exc: BaseException) -> str:
    """The specific line of torch's long weights-only message (skipping its advice)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    specific = [ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln or "unsupported" in ln]
    return (specific or lines[-1:] or [type(exc).__name__])[0]


def load_pickle_file(path: str | os.PathLike, encoding: str = "latin1") -> Any:
    """Read a plain pickle (Detectron2 / Caffe2 ``.pkl`` weights) with :class:`RestrictedUnpickler`.

    Args:
        path: the file.
        encoding: for Python 2 strings in old files. Default ``"latin1"`` (as Detectron2).

    Raises:
        CheckpointRefusedError: the pickle refers to a global that is not allow-listed.
        CheckpointUnreadableError: missing or corrupt file.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, encoding=encoding).load()
    except CheckpointRefusedError as exc:
        raise _refusal(path, str(exc)) from None
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError) as e:
        raise CheckpointUnreadableError(
            f"cannot read checkpoint {path}: the file is corrupt or not a checkpoint (neither "
            f"a torch file nor a readable pickle; {type(e).__name__}: {_first_line(e)})"
        ) from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def save_checkpoint_file(
    obj: Any, path: str | os.PathLike, overwrite: bool = False, inputs: Iterable = ()
) -> None:
    """``torch.save`` that never clobbers a user's file and never leaves half a file.

    The data goes to a temporary file next to ``path`` (ours, removed if writing fails) and is
    then renamed into place in one step.

    Args:
        obj: what to save.
        path: the output file; its folder is created.
        overwrite: replace an existing ``path``. Default ``False``: an existing file is an error.
        inputs: files the output must not replace (e.g. the converter's input), even with
            ``overwrite``.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false, or ``path`` is one of
            ``inputs``.
    """
    path = os.path.abspath(os.fspath(path))
    for src in inputs:
        if os.path.exists(path) and os.path.samefile(path, os.fspath(src)):
            raise FileExistsError(f"output {path} is the input file; choose another output path")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(
            f"output {path} already exists; choose a new path or pass --overwrite to replace it"
        )
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)  # our own temporary file
