"""The study's scales load from configs/study/*.yaml into the same Scale objects the Python definitions gave, the
package data ships them, and a malformed scale file is refused with a message naming the file and the field."""

import tomllib
from pathlib import Path

import pytest

from hizoo.study import SCALES, Scale
from hizoo.study.variants import SCALES_DIR, load_scale, load_scales

REPO = Path(__file__).resolve().parents[2]

# the definitions study/variants.py held in Python before the scales moved to YAML, written out as they were
EXPECTED = {
    "toy": Scale(
        name="toy",
        model=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                   max_position_embeddings=32),
        data=dict(source="stdlib", max_files=40, vocab_size=384, seq_len=32, batch_size=4),
        num_experts=8, top_k=2, expert_width=16, n_streams=2,
        steps=4, lr=2e-3, warmup_steps=1, val_every=2, val_batches=4, eval_sequences=4, seeds=1),
    "cpu": Scale(
        name="cpu",
        model=dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=384,
                   max_position_embeddings=128),
        data=dict(source="stdlib", max_files=400, vocab_size=2048, seq_len=128, batch_size=8),
        num_experts=16, top_k=4, expert_width=96, n_streams=4,
        steps=600, lr=2e-3, warmup_steps=30, val_every=150, val_batches=None, eval_sequences=64,
        seeds=3),
    "gpu": Scale(
        name="gpu",
        model=dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, intermediate_size=2048,
                   max_position_embeddings=512),
        data=dict(source="stdlib", max_files=None, vocab_size=8192, seq_len=512, batch_size=32),
        num_experts=32, top_k=8, expert_width=256, n_streams=4,
        steps=4000, lr=1e-3, warmup_steps=200, val_every=250, val_batches=None, eval_sequences=64,
        seeds=3, precision="bf16-mixed"),
}


def test_the_yaml_scales_equal_the_former_python_definitions():
    assert list(SCALES) == ["toy", "cpu", "gpu"]  # --scale's choices, smallest first
    assert SCALES == EXPECTED
    for name, scale in SCALES.items():  # same types too (2.0e-3 is a float, not a string; no bool for an int)
        for field, value in vars(scale).items():
            assert type(value) is type(getattr(EXPECTED[name], field)), (name, field)
    assert SCALES_DIR == REPO / "configs" / "study"


def test_package_data_ships_every_scale_file():
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["hizoo"]
    shipped = {p for pattern in patterns for p in REPO.glob(pattern)}
    scale_files = sorted(SCALES_DIR.glob("*.yaml"))
    assert len(scale_files) == len(SCALES) and set(scale_files) <= shipped


def _write(tmp_path, name, text):
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def _toy_yaml(tmp_path, drop=(), **override):
    text = (SCALES_DIR / "toy.yaml").read_text()
    lines = [line for line in text.splitlines() if line.split(":")[0] not in drop]
    lines += [f"{key}: {value}" for key, value in override.items()]
    return "\n".join(lines) + "\n"


def test_a_copy_of_a_scale_file_loads_to_the_same_scale(tmp_path):
    path = _write(tmp_path, "toy", (SCALES_DIR / "toy.yaml").read_text())
    assert load_scale(path) == EXPECTED["toy"]
    assert load_scales(tmp_path) == {"toy": EXPECTED["toy"]}


@pytest.mark.parametrize("case, match", [
    ("unknown", r"toy\.yaml: unknown field\(s\) \['num_expert'\]; a study scale has the fields \['name', 'model'"),
    ("missing", r"toy\.yaml: missing field\(s\) \['top_k', 'seeds'\]; a study scale needs \['name'"),
    ("string_lr", r"toy\.yaml: field 'lr' = '2e-3' \(str\) must be float .*write 2\.0e-3"),
    ("bool_steps", r"toy\.yaml: field 'steps' = True \(bool\) must be int"),
    ("wrong_name", r"toy\.yaml: field 'name' = 'cpu' must be the file's name 'toy'"),
    ("not_a_mapping", r"toy\.yaml: a study scale is a mapping of the fields \['name'"),
])
def test_a_bad_scale_file_is_refused_naming_the_file_and_the_field(tmp_path, case, match):
    text = {
        "unknown": lambda: _toy_yaml(tmp_path, num_expert=8),
        "missing": lambda: _toy_yaml(tmp_path, drop=("top_k", "seeds")),
        "string_lr": lambda: _toy_yaml(tmp_path, drop=("lr",), lr="2e-3"),
        "bool_steps": lambda: _toy_yaml(tmp_path, drop=("steps",), steps="true"),
        "wrong_name": lambda: _toy_yaml(tmp_path, drop=("name",), name="cpu"),
        "not_a_mapping": lambda: "- toy\n",
    }[case]()
    path = _write(tmp_path, "toy", text)
    with pytest.raises(ValueError, match=match):
        load_scale(path)
    with pytest.raises(ValueError, match=match):  # and the folder loader with it
        load_scales(tmp_path)


def test_an_empty_scales_folder_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no study scales"):
        load_scales(tmp_path)
