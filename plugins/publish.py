"""Model-zoo style ("published") checkpoints: the framework-free part.

A published checkpoint is the file a model zoo ships: the weights that were evaluated (the EMA
weights when training kept an average), under the framework's usual key (Detectron2
``"model"``, MMDetection ``"state_dict"``), metadata under ``"meta"``, and nothing else: no
optimizer, scheduler, trainer or message-hub state. It holds only tensors and plain Python
values (``dict``/``list``/``tuple``/``str``/``int``/``float``/``bool``/``None``), so it loads
with ``torch.load(..., weights_only=True)`` and :func:`plugins.safe_load.load_checkpoint_file`.
Its name ends with the first 8 hex digits of the file's SHA-256, as in the Detectron2 and
MMDetection model zoos (``<name>-<sha256[:8]>.pth``, the convention of mmdet's
``tools/model_converters/publish_model.py``).

The framework adapters (:mod:`plugins.d2.publish`, :mod:`plugins.mm.publish`) decide which
weights and metadata go in; this module converts metadata to plain values, writes the file
without ever replacing another one, and reads evaluation results back from training logs.
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import importlib
import json
import os
import platform
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

__all__ = [
    "PUBLISH_FORMAT",
    "META_KEY",
    "PublishError",
    "to_plain",
    "package_versions",
    "utc_now",
    "sha256_of",
    "published_filename",
    "check_published_name",
    "check_checkpoint_content",
    "save_published",
    "metrics_from_json_log",
    "check_state_dict_matches",
]

#: Version of the layout written here (``meta["publish_format"]``).
PUBLISH_FORMAT = 1
#: Key of the metadata in a published checkpoint (mmengine's name; Detectron2 ignores it).
META_KEY = "meta"

_HASH_CHARS = 8
_PLAIN_TYPES = (bool, int, float, str)
_NAME_RE = re.compile(r"^(?P<stem>.+)-(?P<sha>[0-9a-f]{8})\.pth$")
_CHUNK = 1 << 20


class PublishError(ValueError):
    """The checkpoint cannot be published as asked (names the file, key or value)."""


def to_plain(value: Any) -> Any:
    """Convert metadata to plain Python values, recursively.

    Mappings become ``dict`` with ``str`` keys, lists and tuples keep their kind, numpy
    scalars and 0-d tensors become ``int``/``float``/``bool``, small arrays and tensors become
    lists, and anything else (a config object, a path, a class) becomes its ``str``. The result
    never needs a custom class to unpickle.

    Args:
        value: metadata (metrics, versions, config values, ...).

    Returns:
        The same content built from ``dict``, ``list``, ``tuple``, ``str``, ``int``,
        ``float``, ``bool`` and ``None`` only.
    """
    if value is None:
        return None
    for kind in (bool, str, int, float):  # subclasses too (TorchVersion, IntEnum, ...)
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(to_plain(v) for v in value)
    if isinstance(value, (list, set, frozenset)):
        return [to_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return to_plain(value.detach().cpu().tolist())
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item) and getattr(value, "shape", None) == ():
        return to_plain(item())
    tolist = getattr(value, "tolist", None)  # numpy arrays
    if callable(tolist):
        return to_plain(tolist())
    return str(value)


def package_versions(modules: Iterable[str]) -> dict[str, str]:
    """Versions of Python, torch, the plugins and the named modules (``__version__``).

    Args:
        modules: importable module names, e.g. ``["detectron2"]`` or ``["mmdet", "mmengine"]``.

    Returns:
        ``{"python": ..., "torch": ..., "plugins": ..., <module>: ...}``; a module that does not
        import is recorded as ``"not installed"``.
    """
    import plugins

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "plugins": plugins.__version__,
    }
    for name in modules:
        try:
            versions[name] = str(getattr(importlib.import_module(name), "__version__", "unknown"))
        except ImportError:
            versions[name] = "not installed"
    return versions


def utc_now() -> str:
    """The current time as an ISO-8601 UTC string (seconds), e.g. ``2026-11-30T12:00:00Z``."""
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def published_filename(stem: str, sha256: str) -> str:
    """``<stem>-<sha256[:8]>.pth``: the model-zoo name of a file with hash ``sha256``."""
    return f"{stem}-{sha256[:_HASH_CHARS]}.pth"


def check_published_name(path: str | os.PathLike) -> str:
    """Verify that a published file's name carries the prefix of its SHA-256.

    Args:
        path: a file named ``<stem>-<8 hex digits>.pth``.

    Returns:
        The full hex SHA-256 of the file.

    Raises:
        PublishError: the name has no hash suffix, or the suffix does not match the bytes.
    """
    match = _NAME_RE.match(os.path.basename(os.fspath(path)))
    if match is None:
        raise PublishError(f"{path}: expected a name <stem>-<8 hex digits of sha256>.pth")
    sha = sha256_of(path)
    if not sha.startswith(match["sha"]):
        raise PublishError(
            f"{path}: the name says sha256 {match['sha']}..., the file's is {sha[:_HASH_CHARS]}..."
        )
    return sha


def check_checkpoint_content(obj: Any, where: str = "checkpoint") -> None:
    """Check that ``obj`` holds only tensors and plain Python values (exact types: a ``str``
    subclass such as ``torch.__version__`` would need its class to unpickle).

    Raises:
        PublishError: names the first offending key path and type.
    """
    if obj is None or type(obj) in _PLAIN_TYPES or isinstance(obj, torch.Tensor):
        return
    if type(obj) in (dict, collections.OrderedDict):  # torch's weights-only reader allows both
        for key, value in obj.items():
            if type(key) not in (str, int):
                raise PublishError(f"{where}: key {key!r} is a {type(key).__name__}")
            check_checkpoint_content(value, f"{where}[{key!r}]")
        return
    if type(obj) in (list, tuple):
        for i, value in enumerate(obj):
            check_checkpoint_content(value, f"{where}[{i}]")
        return
    raise PublishError(
        f"{where}: a {type(obj).__module__}.{type(obj).__qualname__} cannot go into a published "
        "checkpoint (tensors and plain Python values only)"
    )


def _check_finite(obj: Any, where: str = "checkpoint") -> None:
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and not bool(torch.isfinite(obj).all()):
            raise PublishError(f"{where}: holds NaN or infinite values; not published")
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _check_finite(value, f"{where}[{key!r}]")


def save_published(checkpoint: dict, out_dir: str | os.PathLike, stem: str) -> str:
    """Write ``checkpoint`` as ``<out_dir>/<stem>-<sha256[:8]>.pth``; never replace a file.

    The file is written under a temporary name in ``out_dir``, hashed, then linked to its final
    name. If that name exists already with the same bytes, it is kept and the temporary file
    removed; a different file of that name is an error (nothing is overwritten).

    Args:
        checkpoint: tensors and plain values only (see :func:`check_checkpoint_content`).
        out_dir: destination folder (created if missing).
        stem: file name before the hash, e.g. ``"model_final"``.

    Returns:
        The path of the published file.

    Raises:
        PublishError: bad content or stem, weights with NaN / infinite values, or a different
            file already has the final name.
    """
    if not stem or os.sep in stem or (os.altsep and os.altsep in stem):
        raise PublishError(f"name: expected a file name stem without folders, got {stem!r}")
    check_checkpoint_content(checkpoint)
    _check_finite(checkpoint)
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    # our own temporary name; O_EXCL: never opens an existing file; mode as any new file
    tmp = os.path.join(out_dir, f".{stem}-{secrets.token_hex(8)}.pth.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint, f)
        sha = sha256_of(tmp)
        final = os.path.join(out_dir, published_filename(stem, sha))
        try:
            os.link(tmp, final)  # atomic, and fails instead of replacing an existing file
        except FileExistsError:
            if sha256_of(final) != sha:
                raise PublishError(
                    f"{final} exists and holds other bytes (same sha256 prefix): not replaced"
                ) from None
        except OSError:  # a file system without hard links
            if os.path.exists(final):
                raise PublishError(f"{final} exists: not replaced") from None
            os.rename(tmp, final)
        return final
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)  # our temporary name only; the published file has its own link


def _unflatten(flat: Mapping[str, Any]) -> dict:
    out: dict = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def metrics_from_json_log(
    path: str | os.PathLike, step_key: str, step: int, nested: bool = False
) -> dict:
    """Evaluation results recorded at one step of a JSON-lines training log.

    Detectron2's ``metrics.json`` (``step_key="iteration"``) and mmengine's
    ``vis_data/*.json`` (``step_key="step"``, the epoch for epoch-based validation) write one
    JSON object per line; evaluation results are the keys with a ``/`` (``"bbox/AP"``,
    ``"coco/bbox_mAP"``), training scalars have none.

    Args:
        path: the log file.
        step_key: the key holding the step of a record.
        step: the step to look for.
        nested: split the keys at ``/`` into nested dicts (Detectron2's result layout
            ``{"bbox": {"AP": ...}}``). Default ``False``.

    Returns:
        The results of the last matching record, ``{}`` when there is none or no file.
    """
    found: dict = {}
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except OSError:
        return {}
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or record.get(step_key) != step:
            continue
        results = {k: v for k, v in record.items() if "/" in k and isinstance(v, (int, float))}
        if results:
            found = results
    return _unflatten(found) if nested else found


def check_state_dict_matches(
    state_dict: Mapping[str, Any], expected: Mapping[str, Any], what: str
) -> None:
    """The weights must fit the model the config builds: same keys, same shapes.

    Args:
        state_dict: the weights to publish.
        expected: the model's own ``state_dict()`` (may live on the meta device).
        what: names the checkpoint and config in the message.

    Raises:
        PublishError: lists the first missing / unexpected keys or shape mismatches.
    """
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = sorted(
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if isinstance(state_dict[k], torch.Tensor) and state_dict[k].shape != expected[k].shape
    )
    problems: list[str] = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if items:
            problems.append(f"{len(items)} {label} ({', '.join(_first(items))})")
    if problems:
        raise PublishError(f"{what}: the weights do not fit the model: {'; '.join(problems)}")


def _first(items: Sequence[str], n: int = 3) -> list[str]:
    return list(items[:n]) + (["..."] if len(items) > n else [])
