"""A study run goes through train.py's entry point (HizooCLI with the run's config): the config it passes parses as
``python train.py fit --config`` parses it, and a toy run gives the numbers the study's own Trainer gave before."""

import io
import json
import math
from contextlib import redirect_stdout

import pytest
import yaml

from hizoo import train
from hizoo.study import SCALES, moe_variants, stream_variants
from hizoo.study.runner import load_result, result_path, run_config, train_variant

TOY = SCALES["toy"]


def test_run_config_is_a_train_py_config(tmp_path):
    variant = next(v for v in stream_variants(TOY) if v.name == "mhc_lss")
    config = run_config(variant, TOY, 3, tmp_path, steps=2)
    buffer = io.StringIO()
    with redirect_stdout(buffer), pytest.raises(SystemExit) as done:
        train.main(["fit", "--config", json.dumps(config), "--print_config"])
    assert done.value.code in (0, None)
    printed = yaml.safe_load(buffer.getvalue())
    assert printed["seed_everything"] == 3 and printed["data"]["seed"] == 3  # init and data order from the seed
    assert printed["model"]["model_config"]["residual"] == "mhc"  # the variant's fields over the scale's
    assert printed["model"]["model_config"]["hidden_size"] == TOY.model["hidden_size"]
    assert printed["trainer"]["max_steps"] == 2 and printed["trainer"]["enable_checkpointing"] is False
    assert printed["trainer"]["logger"]["init_args"]["save_dir"] == str(tmp_path / "tensorboard")
    assert printed["trainer"]["default_root_dir"] == str(result_path(tmp_path, "mhc_lss", 3).parent)


@pytest.mark.slow  # one toy training run (about 10 s)
def test_a_toy_run_gives_the_previous_study_numbers(tmp_path):
    """Hi-MoE, seed 0, toy scale. Before the study went through train.py it built its own Trainer and recomputed
    the validation CE after training (float64 sum over the same 4 batches): val ppl 380.2091793987422, with
    58,032 parameters and 39,600 active. The training is the same to the bit (every curve point below is that
    run's); the final CE is now the logged val/ce (Lightning's float32 mean of the batch means), which differs
    from the recomputed sum in the 7th significant digit."""
    variant = next(v for v in moe_variants(TOY) if v.name == "himoe")
    result = train_variant(variant, TOY, 0, tmp_path)
    assert (result["params"], result["active_params"]) == (58032, 39600)
    assert result["val_ppl"] == pytest.approx(380.2091793987422, rel=1e-6)
    assert result["val_ce"] == result["curve"]["val"][-1][1] and result["val_ppl"] == math.exp(result["val_ce"])
    assert [step for step, _ in result["curve"]["val"]] == [2, 4]
    # the previous study's validation curve of this run (its Trainer, same seed): equal here to the bit on one machine
    assert [ce for _, ce in result["curve"]["val"]] == pytest.approx([5.951782703399658, 5.94072151184082], rel=1e-6)
    assert load_result(result_path(tmp_path, "himoe", 0))["val_ppl"] == result["val_ppl"]
    assert list((tmp_path / "tensorboard" / "himoe" / "seed0").glob("events.out.tfevents.*"))
    assert not (result_path(tmp_path, "himoe", 0).parent / "hf_model").exists()  # a study run is not exported
