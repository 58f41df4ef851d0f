"""plugins.publish: plain metadata, hash-named files that never replace another file."""

from __future__ import annotations

import collections
import enum
import json

import numpy as np
import pytest
import torch

from plugins.publish import (
    PublishError,
    check_checkpoint_content,
    check_published_name,
    check_state_dict_matches,
    metrics_from_json_log,
    save_published,
    sha256_of,
    to_plain,
)
from plugins.safe_load import load_checkpoint_file


class _Level(enum.IntEnum):
    HIGH = 3


def test_to_plain_leaves_only_builtin_types():
    meta = to_plain(
        {
            "version": torch.__version__,  # a str subclass (TorchVersion)
            "level": _Level.HIGH,
            "ap": np.float64(0.25),
            "count": np.int64(7),
            "stats": np.arange(3),
            "loss": torch.tensor(1.5),
            "classes": ("a", "b"),
            "nested": collections.OrderedDict(x={1, 2}),
            "obj": object(),
        }
    )
    check_checkpoint_content(meta)  # raises on anything else
    assert type(meta["version"]) is str and meta["level"] == 3 and type(meta["level"]) is int
    assert meta["ap"] == 0.25 and type(meta["ap"]) is float and meta["count"] == 7
    assert meta["stats"] == [0, 1, 2] and meta["loss"] == 1.5 and meta["classes"] == ("a", "b")
    assert type(meta["nested"]) is dict and meta["nested"]["x"] == [1, 2]
    assert meta["obj"].startswith("<object object")


def test_content_check_names_the_offending_key():
    with pytest.raises(PublishError, match=r"\['meta'\]\['v'\].*TorchVersion"):
        check_checkpoint_content({"meta": {"v": torch.__version__}})
    with pytest.raises(PublishError, match="numpy"):
        check_checkpoint_content({"model": {"w": np.zeros(2)}})


def test_save_published_names_by_hash_and_never_replaces(tmp_path):
    ckpt = {"model": {"w": torch.arange(4.0)}, "meta": {"a": 1}}
    path = save_published(ckpt, tmp_path, "model_final")
    sha = check_published_name(path)
    assert path.endswith(f"model_final-{sha[:8]}.pth") and sha == sha256_of(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"model_final-{sha[:8]}.pth"]
    loaded = load_checkpoint_file(path)  # weights_only + allow-list
    assert torch.equal(loaded["model"]["w"], ckpt["model"]["w"]) and loaded["meta"] == {"a": 1}
    assert save_published(ckpt, tmp_path, "model_final") == path  # same bytes: kept as is
    assert len(list(tmp_path.iterdir())) == 1
    # a file of that name with other bytes (a forged hash prefix) is not replaced
    other = tmp_path / "x"
    other.mkdir()
    victim = other / f"model_final-{sha[:8]}.pth"
    victim.write_bytes(b"user data")
    with pytest.raises(PublishError, match="not replaced"):
        save_published(ckpt, other, "model_final")
    assert victim.read_bytes() == b"user data" and len(list(other.iterdir())) == 1
    with pytest.raises(PublishError, match="NaN"):
        save_published({"model": {"w": torch.tensor([float("nan")])}}, tmp_path, "bad")
    with pytest.raises(PublishError, match="stem"):
        save_published(ckpt, tmp_path, "a/b")
    assert len(list(tmp_path.iterdir())) == 2  # the file and the folder x, no leftovers


def test_renamed_or_modified_file_fails_the_name_check(tmp_path):
    path = save_published({"model": {}, "meta": {}}, tmp_path, "m")
    wrong = tmp_path / "m-00000000.pth"
    wrong.write_bytes(open(path, "rb").read())
    with pytest.raises(PublishError, match="the name says sha256 00000000"):
        check_published_name(wrong)
    with pytest.raises(PublishError, match="expected a name"):
        check_published_name(tmp_path / "m.pth")


def test_metrics_from_json_log(tmp_path):
    log = tmp_path / "metrics.json"
    records = [
        {"iteration": 2, "loss": 1.0},
        {"iteration": 3, "bbox/AP": 1.0, "bbox/AP50": 2.0, "lr": 0.1},
        {"iteration": 3, "bbox/AP": 5.0, "bbox/AP-cat": float("nan")},
    ]
    log.write_text("\n".join(json.dumps(r) for r in records) + "\nnot json\n")
    nested = metrics_from_json_log(log, "iteration", 3, nested=True)
    assert nested["bbox"]["AP"] == 5.0 and np.isnan(nested["bbox"]["AP-cat"])
    assert metrics_from_json_log(log, "iteration", 2) == {}
    assert metrics_from_json_log(tmp_path / "absent.json", "iteration", 3) == {}


def test_state_dict_fit_check_lists_the_problems():
    expected = {"a": torch.zeros(2), "b": torch.zeros(3), "c": torch.zeros(1)}
    check_state_dict_matches(dict(expected), expected, "x.pth")
    bad = {"a": torch.zeros(4), "b": torch.zeros(3), "d": torch.zeros(1)}
    with pytest.raises(PublishError, match=r"x.pth.*1 missing \(c\); 1 unexpected \(d\); 1 shape"):
        check_state_dict_matches(bad, expected, "x.pth")
