"""train.py on the scale-up data paths: exact resume of a domain mixture over a prepared folder and of a
stream through Lightning's checkpoints, and the export of a run on a prepared folder carries its tokenizer."""

import json
import random
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from hizoo.data.prepare import prepare

REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO / "configs" / "tiny.yaml")
sys.path.insert(0, str(REPO))
import train  # noqa: E402  (train.py is a script at the repository root)

pytestmark = pytest.mark.slow  # training runs on prepared shards, one under DDP

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two domains of different sizes and a small byte-level BPE saved as an HF tokenizer folder."""
    root = tmp_path_factory.mktemp("scale")
    rng = random.Random(0)
    for name, n in (("big", 120), ("small", 40)):
        (root / f"{name}.jsonl").write_text("\n".join(
            json.dumps({"text": " ".join(rng.choices(WORDS[:9] if name == "big" else WORDS[9:], k=rng.randint(5, 60)))})
            for _ in range(n)))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([" ".join(WORDS)] * 20, trainer=trainers.BpeTrainer(
        vocab_size=200, special_tokens=["<pad>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>").save_pretrained(root / "tok")
    files = [str(root / "big.jsonl"), str(root / "small.jsonl")]
    prepare(files, str(root / "tok"), root / "prepared", val_every=10, progress=False)
    return root, files


def _args(workdir: Path, *extra: str) -> list[str]:
    """configs/tiny.yaml for 14 steps (its checkpoint every 10 steps), no logger: what the run writes is found by
    name under ``workdir`` (config.yaml, hf_model/, last.ckpt)."""
    return ["fit", "--config", TINY, "--trainer.default_root_dir", str(workdir), "--trainer.logger", "false",
            "--trainer.max_steps", "14", "--trainer.val_check_interval", "14", "--trainer.limit_val_batches", "1",
            "--data.seq_len", "32", "--data.batch_size", "4", "--data.val_every", "10", *extra]


class _Batches(L.Callback):
    """Records every training batch and interrupts after optimizer step ``crash_at`` (as Ctrl-C does)."""

    def __init__(self, crash_at: int | None = None):
        self.crash_at, self.seen = crash_at, []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.seen.append(batch["input_ids"].clone())

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.crash_at:
            raise KeyboardInterrupt


def _interrupted_and_resumed(workdir: Path, extra: list[str]) -> list[torch.Tensor]:
    first = _Batches(crash_at=12)  # a checkpoint at step 10; steps after the checkpoint are trained again
    with pytest.raises(SystemExit):
        train.main(_args(workdir, *extra), trainer_defaults={"callbacks": [first]})
    last = next(workdir.rglob("last.ckpt"))
    step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert step in (10, 12)
    second = _Batches()
    train.main(_args(workdir, *extra, "--ckpt_path", str(last)), trainer_defaults={"callbacks": [second]})
    return first.seen[:step] + second.seen


@pytest.mark.parametrize("source", ["mixture", "stream"])
def test_resume_continues_the_data_order_exactly(corpus, tmp_path, source):
    """14 steps straight vs interrupted after step 12 and resumed from its checkpoint: the same batches.
    Two short Lightning runs and one resumed run per case (about 10 s each on a quiet machine)."""
    root, files = corpus
    if source == "mixture":
        extra = ["--data.source", str(root / "prepared"), "--data.weights", "{big: 0.3, small: 0.7}"]
    else:
        extra = ["--data.source", files[0], "--data.streaming", "true", "--data.tokenizer", str(root / "tok"),
                 "--data.val_sequences", "4"]
    straight = _Batches()
    train.main(_args(tmp_path / "straight", *extra), trainer_defaults={"callbacks": [straight]})
    resumed = _interrupted_and_resumed(tmp_path / "resumed", extra)
    assert len(straight.seen) == len(resumed) == 14
    assert all(torch.equal(a, b) for a, b in zip(straight.seen, resumed))
    assert len({tuple(b[0].tolist()) for b in straight.seen}) == 14  # the order moves
    if source == "mixture":  # trained from the prepared folder: the export carries its tokenizer
        saved = yaml.safe_load(next((tmp_path / "straight").rglob("config.yaml")).read_text())
        assert saved["data"]["weights"] == {"big": 0.3, "small": 0.7}  # recorded in the run's config
        export = next((tmp_path / "straight").rglob("hf_model"))
        config = json.loads((export / "config.json").read_text())
        exported, original = AutoTokenizer.from_pretrained(export), AutoTokenizer.from_pretrained(root / "tok")
        assert config["vocab_size"] == len(original)  # the model's vocabulary comes from the tokenizer
        assert exported.eos_token == "</s>" and exported("beta zeta")["input_ids"] == original("beta zeta")["input_ids"]


_DDP_SCRIPT = """
import sys, torch, lightning as L
sys.path.insert(0, {repo!r})
import train

class Record(L.Callback):
    seen = []
    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.seen.append(batch["input_ids"].clone())
    def on_train_end(self, trainer, module):
        torch.save(torch.stack(self.seen), {out!r} + f"/rank{{trainer.global_rank}}.pt")

train.main(sys.argv[1:], trainer_defaults={{"callbacks": [Record()]}})
"""


def test_mixture_shards_one_order_across_ddp_ranks(corpus, tmp_path):
    """2 gloo processes on a prepared folder with weights: rank r trains positions r, r + 2, ... of the one
    global mixture order. Starting two processes takes most of this test's 20-60 s."""
    import subprocess

    import numpy as np

    from hizoo.data import HizooDataModule
    from hizoo.data.mixture import DomainMixtureSampler, normalize_weights, sequence_domains

    root, _ = corpus
    script = tmp_path / "ddp_record.py"
    script.write_text(_DDP_SCRIPT.format(repo=str(REPO), out=str(tmp_path)))
    weights = {"big": 0.3, "small": 0.7}
    args = ["fit", "--config", str(REPO / "configs" / "ddp_cpu.yaml"), "--trainer.max_steps", "3",
            "--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar",
            "false", "--data.source", str(root / "prepared"), "--data.val_every", "10", "--data.seq_len", "32",
            "--data.batch_size", "4", "--data.weights", json.dumps(weights), "--model.model_config.hidden_size", "32",
            "--model.model_config.num_hidden_layers", "1", "--trainer.default_root_dir", str(tmp_path),
            "--trainer.logger", "false"]
    result = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=600,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    dm = HizooDataModule(source=str(root / "prepared"), val_every=10, seq_len=32, batch_size=4)
    dm.setup()
    labels = sequence_domains(dm.train_set, len(dm.domain_names))
    probs = normalize_weights(weights, dm.domain_names)
    for rank in range(2):
        order = list(DomainMixtureSampler(labels, probs, seed=0, num_replicas=2, rank=rank))[:12]
        expected = torch.stack([dm.train_set[i]["input_ids"] for i in order]).view(3, 4, 32)
        assert torch.equal(torch.load(tmp_path / f"rank{rank}.pt"), expected)
    assert not np.array_equal(*(torch.load(tmp_path / f"rank{r}.pt").numpy() for r in range(2)))
