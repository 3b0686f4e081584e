"""models/files.py: atomic writes leave the old file or the new one (never a partial one, never a temp file),
reads name the damaged file, and torch files load only with weights_only=True: a crafted pickle does not run, a
real HizooLightningModule checkpoint loads."""

import json
import os
import pickle
import zipfile

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from hizoo.models.files import (atomic_directory, atomic_open, atomic_write_json, atomic_write_text, load_torch_file,
                                read_json, save_figure)
from hizoo.models.lightning import HizooLightningModule, load_model_from_checkpoint


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_write_replaces_and_an_interrupted_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "result.json"
    atomic_write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    with pytest.raises(KeyboardInterrupt):  # a kill in the middle of writing
        with atomic_open(path, "w") as f:
            f.write('{"a": 2, "trunc')
            raise KeyboardInterrupt
    assert json.loads(path.read_text()) == {"a": 1}
    with pytest.raises(TypeError):  # an object that does not serialize writes nothing
        atomic_write_json(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert _leftovers(tmp_path) == []


def test_atomic_write_gets_the_permissions_of_a_plain_write(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        (tmp_path / "b.txt").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o644


def test_save_figure_writes_a_png_atomically(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    save_figure(fig, tmp_path / "f.png", dpi=50)
    plt.close(fig)
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("content, fragment", [
    ('{"val_ppl": 3.', "not valid JSON"),
    ("", "is empty"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
])
def test_read_json_names_the_file_and_the_way_out(tmp_path, content, fragment):
    path = tmp_path / "result.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=fragment) as err:
        read_json(path, recover="delete it")
    assert str(path) in str(err.value) and "delete it" in str(err.value)


def test_atomic_directory_appears_complete_or_not_at_all(tmp_path):
    dst = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_directory(dst) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("conversion failed")
    assert not dst.exists() and _leftovers(tmp_path) == []
    with atomic_directory(dst) as tmp:
        (tmp / "a").write_text("1")
    assert sorted(os.listdir(dst)) == ["a"]
    with atomic_directory(dst) as tmp:  # replacing: no stale file of the old folder survives
        (tmp / "b").write_text("2")
    assert sorted(os.listdir(dst)) == ["b"] and _leftovers(tmp_path) == []


class _Payload:
    """What an attacker pickles: unpickling calls ``__reduce__``'s callable, here one that creates a file."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


@pytest.mark.parametrize("writer", ["torch.save", "pickle protocol 2"])
def test_a_crafted_checkpoint_is_refused_without_running_it(tmp_path, writer):
    target = tmp_path / "EXECUTED"
    ckpt = tmp_path / "evil.ckpt"
    payload = {"hizoo_config": {}, "state_dict": {}, "x": _Payload(str(target))}
    if writer == "torch.save":
        torch.save(payload, ckpt)
    else:
        ckpt.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(ValueError, match="not a plain-tensor checkpoint") as err:
        load_torch_file(ckpt)
    assert str(ckpt) in str(err.value) and "likely succeed" not in str(err.value)
    with pytest.raises(ValueError, match="not a plain-tensor checkpoint"):
        load_model_from_checkpoint(ckpt)
    assert not target.exists()  # refused without running it
    # Control: the same pickle does run its payload when unpickled without the weights_only guard.
    if writer == "torch.save":
        with zipfile.ZipFile(ckpt) as archive:
            raw = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    else:
        raw = ckpt.read_bytes()
    pickle.loads(raw)
    assert target.exists()


@pytest.mark.parametrize("damage", ["truncated", "empty", "text"])
def test_a_damaged_checkpoint_names_the_file(tmp_path, damage):
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.randn(64, 64)}}, ckpt)
    data = ckpt.read_bytes()
    ckpt.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "text": b"hello"}[damage])
    with pytest.raises(ValueError, match="cannot be read") as err:
        load_model_from_checkpoint(ckpt)
    assert str(ckpt) in str(err.value)
    assert "likely succeed" not in str(err.value)  # torch's advice to retry with weights_only=False is not passed on


class _Ids(torch.utils.data.Dataset):
    def __init__(self):
        self.ids = torch.randint(0, 32, (8, 9), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i]}


def test_a_real_lightning_checkpoint_loads_with_weights_only(tmp_path):
    """Everything HizooLightningModule and Lightning put into a .ckpt (hyper-parameters, optimizer and scheduler
    state, loop and callback state) unpickles under weights_only=True."""
    L.seed_everything(0, verbose=False)
    module = HizooLightningModule(model_config=dict(vocab_size=32, hidden_size=16, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=32, ffn="moe",
                                                    num_experts=4, num_experts_per_tok=2, moe_intermediate_size=8,
                                                    router="group_limited", n_groups=2, residual="mhc",
                                                    n_streams=2, stream_init="lss"), warmup_steps=1)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    trainer.fit(module, DataLoader(_Ids(), batch_size=4))
    checkpoint = load_torch_file(tmp_path / "last.ckpt")
    assert {"state_dict", "optimizer_states", "lr_schedulers", "hyper_parameters", "hizoo_config"} <= set(checkpoint)
    model = load_model_from_checkpoint(tmp_path / "last.ckpt").eval()
    ids = _Ids().ids[:2]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, module.model.eval()(ids).logits)
