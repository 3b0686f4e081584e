"""After training: ``HizooLightningModule.load_from_checkpoint``, ``python train.py test`` on a held-out test split,
``python train.py predict`` (generation from a prompts file) and the Hugging Face export as a callback, on one tiny
run (configs/tiny.yaml, 10 steps, a test split carved from the held-out documents)."""

import json
import math
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from hizoo import HizooForCausalLM
from hizoo.data import HizooDataModule
from hizoo.data.datamodule import split_held_out
from hizoo.data.prompts import read_prompts
from hizoo.models.generation import GenerationSettings
from hizoo.models.lightning import HizooLightningModule, load_model_from_checkpoint
from hizoo.training import HFExportCallback

REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO / "configs" / "tiny.yaml")
STEPS = 10

sys.path.insert(0, str(REPO))
import train  # noqa: E402  (train.py is a script at the repository root)


def _data_args(cache: Path) -> list[str]:
    # tiny.yaml holds out 1 of 30 documents (val_every 20); every 10th gives 3 held-out documents: 2 val, 1 test
    return ["--data.cache_dir", str(cache), "--data.val_every", "10", "--data.test_fraction", "0.5"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(run folder, the in-run LightningModule after fit, data arguments)."""
    workdir = tmp_path_factory.mktemp("evaluate")
    run_dir = workdir / "tiny"
    data = _data_args(workdir / "cache")
    cli = train.main(["fit", "--config", TINY, "--trainer.default_root_dir", str(run_dir), "--trainer.max_steps",
                      str(STEPS), "--trainer.val_check_interval", str(STEPS), *data])
    return run_dir, cli.model, data


def _scalars(run_dir: Path, tag: str) -> list:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return events.Scalars(tag)


# -- load_from_checkpoint ---------------------------------------------------------------------------------------
@pytest.mark.slow  # uses the module's training run of train.py (the tiny config)
def test_load_from_checkpoint_gives_the_trained_modules_logits(run, monkeypatch):
    run_dir, trained, _ = run
    last = run_dir / "checkpoints" / "last.ckpt"
    calls, real = [], torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    loaded = HizooLightningModule.load_from_checkpoint(last).eval()
    assert calls and all(flag is True for flag in calls), calls  # only safe loads
    vocab = trained.model.config.vocab_size
    assert vocab == len(trained.trainer.datamodule.tokenizer) == 384
    assert loaded.hparams.model_config["vocab_size"] == vocab  # self-describing: no data module needed
    assert loaded.checkpoint_step == STEPS
    ids = torch.randint(0, vocab, (2, 16))
    trained.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, trained.model(ids).logits, atol=0, rtol=0)


@pytest.mark.slow  # uses the module's training run of train.py (the tiny config)
def test_load_from_checkpoint_of_an_earlier_version_takes_the_vocabulary_from_the_model_config(run, tmp_path):
    """Checkpoints written before the vocabulary size went into the hyperparameters carry HizooConfig's default
    there; the model config saved next to the weights has the tokenizer's size."""
    run_dir, trained, _ = run
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    from hizoo import HizooConfig

    checkpoint["hyper_parameters"]["model_config"]["vocab_size"] = HizooConfig().vocab_size
    assert HizooConfig().vocab_size != 384
    torch.save(checkpoint, tmp_path / "old.ckpt")
    loaded = HizooLightningModule.load_from_checkpoint(tmp_path / "old.ckpt").eval()
    assert loaded.model.config.vocab_size == 384 and loaded.hparams.model_config["vocab_size"] == 384
    ids = torch.randint(0, 384, (1, 12))
    trained.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, trained.model(ids).logits, atol=0, rtol=0)


@pytest.mark.slow  # uses the module's training run of train.py (the tiny config)
def test_load_from_checkpoint_refuses_unsafe_and_bad_files(run, tmp_path):
    run_dir, _, _ = run
    with pytest.raises(ValueError, match="weights_only=False is refused"):
        HizooLightningModule.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    with pytest.raises(FileNotFoundError, match="nope.ckpt does not exist"):
        HizooLightningModule.load_from_checkpoint(tmp_path / "nope.ckpt")
    (tmp_path / "corrupt.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt.ckpt cannot be read"):
        HizooLightningModule.load_from_checkpoint(tmp_path / "corrupt.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(ValueError, match="hizoo_config"):
        HizooLightningModule.load_from_checkpoint(tmp_path / "foreign.ckpt")


# -- the test split and `train.py test` -------------------------------------------------------------------------
def test_split_held_out_spreads_the_test_documents_evenly():
    docs = list(range(8))
    assert split_held_out(docs, 0.0) == (docs, [])
    assert split_held_out(docs, 0.5) == ([0, 2, 4, 6], [1, 3, 5, 7])
    assert split_held_out(docs, 0.25) == ([0, 1, 2, 4, 5, 6], [3, 7])
    assert split_held_out(docs[:3], 0.5) == ([0, 2], [1])


@pytest.mark.slow  # uses the module's training run of train.py (the tiny config)
def test_test_split_is_disjoint_and_leaves_the_training_split_unchanged(run, tmp_path):
    """Document by document: train, validation and test are disjoint and cover the corpus; with test_fraction the
    training documents and packed sequences (hence the training order) are those of test_fraction=0, and the
    validation and test documents together are test_fraction=0's validation documents."""
    cache = Path(run[2][1])
    splits = {}

    def packed_documents(fraction: float) -> HizooDataModule:
        dm = HizooDataModule(source="stdlib", max_files=30, vocab_size=384, seq_len=64, batch_size=8, val_every=10,
                             cache_dir=str(cache), test_fraction=fraction)
        pack = dm._pack

        def spy(docs, split):
            splits[(fraction, split)] = [(d.domain, d.text) for d in docs]
            return pack(docs, split)

        dm._pack = spy
        dm.setup("fit")
        return dm

    with_test, without = packed_documents(0.5), packed_documents(0.0)
    train, val, test = (set(splits[(0.5, s)]) for s in ("train", "validation", "test"))
    assert test and val and not (train & val) and not (train & test) and not (val & test)
    assert splits[(0.5, "train")] == splits[(0.0, "train")]
    assert sorted(splits[(0.5, "validation")] + splits[(0.5, "test")]) == sorted(splits[(0.0, "validation")])
    assert torch.equal(with_test.train_set.input_ids, without.train_set.input_ids)
    assert without.test_set is None
    with pytest.raises(ValueError, match=r"test_fraction=0.0: this data module has no test split"):
        without.test_dataloader()


@pytest.mark.slow  # uses the module's training run of train.py (the tiny config)
def test_test_subcommand_logs_the_mean_token_cross_entropy_of_the_test_split(run):
    run_dir, _, data = run
    config_yaml = (run_dir / "config.yaml").read_bytes()
    cli = train.main(["test", "--config", TINY, "--trainer.default_root_dir", str(run_dir), *data,
                      "--data.batch_size", "3", "--ckpt_path", "last"])  # batches of 3 and 1: a weighted mean
    logged = float(cli.trainer.callback_metrics["test/loss"])
    assert float(cli.trainer.callback_metrics["test/ppl"]) == pytest.approx(math.exp(logged), rel=1e-6)

    # independently: the checkpoint loaded outside Lightning, every test sequence, F.cross_entropy over all tokens
    model = load_model_from_checkpoint(run_dir / "checkpoints" / "last.ckpt").eval()
    test_ids = cli.datamodule.test_set.input_ids  # [N, seq_len]
    assert test_ids.shape[0] % 3 and test_ids.shape[0] > 3  # several batches, the last one smaller
    total, count = 0.0, 0
    with torch.no_grad():
        for rows in test_ids.split(3):
            logits = model(rows).logits[:, :-1]  # [B, T-1, V]
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1),
                                     reduction="sum").item()
            count += rows[:, 1:].numel()
    assert logged == pytest.approx(total / count, rel=1e-5)

    points = _scalars(run_dir, "test/loss")  # in the run folder's TensorBoard, at the tested step
    assert [p.step for p in points] == [STEPS] and points[0].value == pytest.approx(logged)
    assert (run_dir / "config.yaml").read_bytes() == config_yaml  # the training run's config stays
    assert (run_dir / "config_test.yaml").is_file()


@pytest.mark.slow  # uses the module's training run of train.py (the tiny config)
def test_test_subcommand_refuses_what_would_not_be_held_out(run, tmp_path):
    run_dir, _, data = run
    base = ["test", "--config", TINY, "--trainer.default_root_dir", str(run_dir)]
    with pytest.raises(ValueError, match="test evaluates a trained checkpoint: give --ckpt_path"):
        train.main([*base, *data])
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        train.main(["test", "--config", TINY, "--trainer.default_root_dir", str(tmp_path / "empty"), *data,
                    "--ckpt_path", "last"])
    # the run's validation documents would become test documents
    other = [*data[:-1], "0.4"]  # the third held-out document instead of the second
    with pytest.raises(ValueError, match=r"data.test_fraction: 0.5 in the checkpoint, 0.4 now"):
        train.main([*base, *other, "--ckpt_path", "last"])


# -- `train.py predict` -----------------------------------------------------------------------------------------
PROMPTS = ["def main(", "import os\n"]


@pytest.mark.slow  # uses the module's training run of train.py (the tiny config)
def test_predict_greedy_equals_generate_of_the_exported_model(run, tmp_path):
    """predict writes prompt, completion and ids per prompt to the run folder; each equals what the exported model's
    own generate gives for that prompt alone (loaded through transformers, its tokenizer and generation config)."""
    run_dir, _, data = run
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"text": p}) + "\n" for p in PROMPTS) + "\n")
    cli = train.main(["predict", "--config", TINY, "--trainer.default_root_dir", str(run_dir), *data,
                      "--ckpt_path", "last", "--data.predict_prompts", str(prompts), "--data.prompt_field", "text",
                      "--generation.max_new_tokens", "12"])
    written = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert written == cli.predictions and [p["prompt"] for p in written] == PROMPTS

    from transformers import AutoTokenizer

    export = run_dir / "hf_model"  # written at the end of fit from the same weights as last.ckpt
    model, tokenizer = HizooForCausalLM.from_pretrained(export).eval(), AutoTokenizer.from_pretrained(export)
    for p in written:
        ids = tokenizer(p["prompt"], return_tensors="pt")["input_ids"]
        assert p["prompt_ids"] == ids[0].tolist()
        expected = model.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1]:].tolist()
        assert p["completion_ids"] == expected
        assert p["completion"] == tokenizer.decode(expected, skip_special_tokens=True)
        stopped = expected[-1] == tokenizer.eos_token_id
        assert p["finish_reason"] == ("eos" if stopped else "length") and (stopped or len(expected) == 12)


@pytest.mark.slow  # uses the module's training run of train.py (the tiny config)
def test_predict_sampling_is_seeded_per_prompt(run, tmp_path):
    run_dir, _, data = run
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS[:1] * 2) + "\n")
    out = tmp_path / "sampled.jsonl"
    settings = ["--generation.do_sample", "true", "--generation.temperature", "1.5", "--generation.top_k", "40",
                "--generation.top_p", "0.95", "--generation.seed", "7", "--generation.max_new_tokens", "10"]
    cli = train.main(["predict", "--config", TINY, "--trainer.default_root_dir", str(run_dir), *data,
                      "--ckpt_path", "last", "--data.predict_prompts", str(prompts), *settings,
                      "--predictions_file", str(out)])
    assert [json.loads(line) for line in out.read_text().splitlines()] == cli.predictions
    model = load_model_from_checkpoint(run_dir / "checkpoints" / "last.ckpt").eval()
    tokenizer = cli.datamodule.tokenizer
    for p in cli.predictions:  # prompt i is sampled from seed·100003 + i
        ids = torch.tensor([p["prompt_ids"]])
        torch.manual_seed(7 * 100_003 + p["index"])
        expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=True,
                                  temperature=1.5, top_k=40, top_p=0.95, eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.eos_token_id)
        assert p["completion_ids"] == expected[0, ids.shape[1]:].tolist()


@pytest.mark.slow  # uses the module's training run of train.py (the tiny config)
def test_predict_refuses_bad_prompts_and_settings(run, tmp_path):
    run_dir, _, data = run
    base = ["predict", "--config", TINY, "--trainer.default_root_dir", str(run_dir), *data, "--ckpt_path", "last"]
    with pytest.raises(ValueError, match="data.predict_prompts is not set"):
        train.main(base)
    with pytest.raises(FileNotFoundError, match="data.predict_prompts=.*missing.txt.*no such file"):
        train.main([*base, "--data.predict_prompts", str(tmp_path / "missing.txt")])
    with pytest.raises(ValueError, match=r"generation.max_new_tokens=0 must be an integer >= 1"):
        train.main([*base, "--data.predict_prompts", str(tmp_path / "p.txt"), "--generation.max_new_tokens", "0"])
    long_prompt = tmp_path / "long.txt"
    long_prompt.write_text("x = 1\n")
    with pytest.raises(ValueError, match=r"prompt 0: \d+ prompt tokens \+ generation.max_new_tokens=5000 exceed the "
                                         r"model's context length \(max_position_embeddings=\d+\)"):
        train.main([*base, "--data.predict_prompts", str(long_prompt), "--generation.max_new_tokens", "5000"])


def test_prompt_files_are_checked_line_by_line(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "a\\nb"}\n\n{"prompt": "c", "id": 2}\n')
    assert read_prompts(good) == ["a\nb", "c"]
    cases = {
        "empty.txt": ("", "holds no prompts"),
        "blank.txt": ("one\n\nthree\n", r"blank.txt, line 2 is empty"),
        "bad.jsonl": ('{"prompt": "a"}\n{"prompt": \n', r"bad.jsonl, line 2 is not valid JSON"),
        "field.jsonl": ('{"text": "a"}\n', r"field.jsonl, line 1 has no field data.prompt_field='prompt' \(found: \['text'\]\)"),
        "type.jsonl": ('{"prompt": 3}\n', r"field 'prompt' must be a non-empty string, got 3"),
        "prompts.csv": ("a\n", r"must end in .txt or .jsonl"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=message):
            read_prompts(tmp_path / name)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        read_prompts(tmp_path / "latin1.txt")


@pytest.mark.parametrize("settings, message", [
    (dict(max_new_tokens=0), r"generation.max_new_tokens=0 must be an integer >= 1"),
    (dict(do_sample="yes"), r"generation.do_sample='yes' must be true or false"),
    (dict(do_sample=True, temperature=0.0), r"generation.temperature=0.0 must be a finite number > 0"),
    (dict(do_sample=True, temperature=float("nan")), r"generation.temperature=nan must be a finite number > 0"),
    (dict(do_sample=True, top_k=0), r"generation.top_k=0 must be an integer >= 1, or null"),
    (dict(do_sample=True, top_p=1.5), r"generation.top_p=1.5 must be a number in \(0, 1\]"),
    (dict(seed=-1), r"generation.seed=-1 must be an integer >= 0"),
    (dict(temperature=0.7, top_k=5), r"generation.temperature=0.7, generation.top_k=5: apply only when sampling"),
])
def test_generation_settings_are_validated(settings, message):
    with pytest.raises(ValueError, match=message):
        GenerationSettings(**settings)


@pytest.mark.parametrize("fraction", [1.0, -0.1, float("nan"), "half", True])
def test_test_fraction_is_validated(fraction):
    with pytest.raises(ValueError, match=r"test_fraction=.* must be a number in \[0, 1\)"):
        HizooDataModule(test_fraction=fraction)


# -- the export as a callback -----------------------------------------------------------------------------------
@pytest.mark.slow  # uses the module's training run of train.py (the tiny config)
def test_export_callback_exports_after_validate_in_a_users_trainer(run, tmp_path):
    """A plain Trainer with HFExportCallback(on_validate=True): validate of the run's checkpoint exports to
    <root>/hf_model-step10 a model with the checkpoint's logits; without a trained checkpoint nothing is written."""
    run_dir, _, data = run
    last = run_dir / "checkpoints" / "last.ckpt"
    module = HizooLightningModule.load_from_checkpoint(last)
    dm = HizooDataModule(source="stdlib", max_files=30, vocab_size=384, seq_len=64, batch_size=8, val_every=10,
                         cache_dir=data[1], test_fraction=0.5)
    exporter = HFExportCallback(on_validate=True)
    trainer = L.Trainer(default_root_dir=tmp_path, callbacks=[exporter], logger=False, accelerator="cpu",
                        limit_val_batches=1, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(module, datamodule=dm, ckpt_path=last)
    assert exporter.exported == tmp_path / f"hf_model-step{STEPS}" and exporter.refused is None
    exported = HizooForCausalLM.from_pretrained(exporter.exported).eval()
    reference = load_model_from_checkpoint(last).eval()
    ids = torch.randint(0, 384, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, reference(ids).logits, atol=0, rtol=0)
    assert (exporter.exported / "tokenizer.json").is_file() and (exporter.exported / "README.md").is_file()

    untrained = HizooLightningModule(model_config=dict(module.hparams.model_config))
    fresh = HFExportCallback(on_validate=True, dirpath=str(tmp_path / "untrained"))
    L.Trainer(default_root_dir=tmp_path, callbacks=[fresh], logger=False, accelerator="cpu", limit_val_batches=1,
              enable_progress_bar=False, enable_model_summary=False).validate(untrained, datamodule=dm)
    assert fresh.refused.startswith("the run took no optimizer step") and fresh.exported is None
    assert not (tmp_path / "untrained").exists()


@pytest.mark.slow  # uses the module's training run of train.py (the tiny config)
def test_learning_rate_is_logged(run):
    """configs/tiny.yaml's LearningRateMonitor: the learning rate of each AdamW parameter group (decayed and not),
    every log_every_n_steps=5 steps, as the schedule gives it: lr 3e-3, 5 warm-up steps, then cosine to 0.1·lr
    over the remaining 5 steps."""
    run_dir, _, _ = run

    def schedule(step: int) -> float:
        if step < 5:
            return 3e-3 * (step + 1) / 5
        return 3e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - 5) / (STEPS - 5))))

    points = _scalars(run_dir, "lr-AdamW/pg1")
    assert [p.step for p in points] == [4, 9]
    for point in points:
        assert point.value == pytest.approx(schedule(point.step), rel=1e-6)
    assert [p.value for p in _scalars(run_dir, "lr-AdamW/pg2")] == [p.value for p in points]
