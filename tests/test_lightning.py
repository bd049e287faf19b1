"""ssl4eos12.lightning.SSL4EOS12DataModule under a real ``lightning.Trainer`` on CPU: the training batches of a run
resumed from a checkpoint saved mid-epoch are the ones the uninterrupted run gave; validation evaluates every
example once, in order."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from ssl4eos12.lightning import SSL4EOS12DataModule
from ssl4eos12.synth import synthesize

BATCH_SIZE = 2
STEPS = 9  # 12 examples: 6 batches an epoch, so the run ends in its second epoch


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("lightning"), files=4, samples=3, size=8, modalities=("S2L2A",))


class Recorder(LightningModule):
    """A one-weight model that records the samples of every batch it is given."""

    def __init__(self, estimate: bool = False):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.estimate = estimate
        self.trained: list[list[str]] = []
        self.validated: list[list[str]] = []

    def training_step(self, batch, batch_idx):
        self.trained.append(list(batch["sample"]))
        x = batch["S2L2A"].float().mean(dim=(1, 2, 3, 4)).unsqueeze(1) / 1000
        return self.layer(x).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.validated.append(list(batch["sample"]))

    def configure_optimizers(self):
        if self.estimate:  # builds the train loader before Lightning restores a checkpoint's loops
            assert self.trainer.estimated_stepping_batches == STEPS
        return torch.optim.SGD(self.parameters(), lr=0.01)


def trainer(tmp_path, callbacks=(), **kwargs) -> Trainer:
    """A CPU trainer for STEPS steps (max_epochs too, else estimated_stepping_batches would not build the loader),
    checkpointing only through the ``callbacks`` given."""
    return Trainer(accelerator="cpu", devices=1, max_epochs=2, max_steps=STEPS, limit_val_batches=1, logger=False,
                   enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                   callbacks=list(callbacks), enable_checkpointing=bool(callbacks), **kwargs)


@pytest.mark.parametrize("estimate", [False, True])
def test_a_checkpoint_saved_mid_epoch_resumes_the_loader(root, tmp_path, estimate):
    data = {"data_dir": str(root), "batch_size": BATCH_SIZE, "seed": 4, "num_threads": 1}
    saves = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{step}", every_n_train_steps=4, save_top_k=-1)
    model = Recorder(estimate)
    trainer(tmp_path, callbacks=[saves]).fit(model, datamodule=SSL4EOS12DataModule("S2L2A", **data))
    assert len(model.trained) == STEPS and all(len(batch) == BATCH_SIZE for batch in model.trained)
    first_epoch = sorted(s for batch in model.trained[:6] for s in batch)
    assert len(set(first_epoch)) == 12, "the first epoch reads every example once"
    for step, epoch in ((4, 0), (8, 1)):  # mid-epoch both: the second lies across an epoch's end
        path = tmp_path / "ckpt" / f"step={step}.ckpt"
        saved = torch.load(path, weights_only=False)["SSL4EOS12DataModule"]["train_loader"]
        assert (saved["epoch"], saved["segments"]) == (epoch, [{"world_size": 1, "batch_size": BATCH_SIZE,
                                                                "batches": step - 6 * epoch}])
        resumed = Recorder(estimate)
        trainer(tmp_path).fit(resumed, datamodule=SSL4EOS12DataModule("S2L2A", **data), ckpt_path=path)
        assert resumed.trained == model.trained[step:], f"resumed from step {step}"


def test_validation_reads_every_example_once_in_order(root, tmp_path):
    from datasets import load_dataset

    module = SSL4EOS12DataModule("S2L2A", data_dir=str(root), batch_size=BATCH_SIZE, val_batch_size=5, seed=4,
                                 even="drop", drop_last=True, crop=4, crop_mode="random", num_threads=1)
    loader = module.val_dataloader()
    assert (loader.shuffle, loader.even, loader.drop_last, loader.crop, loader.crop_mode, loader.batch_size) == (
        False, "pad", False, 4, "center", 5)
    model = Recorder()
    Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
            default_root_dir=tmp_path).validate(model, datamodule=module)
    expected = [e["sample"] for e in load_dataset("ssl4eos12", "S2L2A", data_dir=str(root), split="validation",
                                                  streaming=True)]
    assert [len(batch) for batch in model.validated] == [5, 5, 2]
    assert [s for batch in model.validated for s in batch] == expected


def test_arguments_the_module_sets_are_refused(root):
    from types import SimpleNamespace

    with pytest.raises(TypeError, match="world_size= is set by the data module"):
        SSL4EOS12DataModule("S2L2A", data_dir=str(root), world_size=2)
    module = SSL4EOS12DataModule("S2L2A", data_dir=str(root))
    # a model-parallel strategy: data-parallel groups of 2 in a job of 4
    module.trainer = SimpleNamespace(global_rank=3, world_size=4,
                                     distributed_sampler_kwargs={"rank": 1, "num_replicas": 2})
    with pytest.raises(ValueError, match=r"data-parallel group \(rank 1 of 2\) is not the job \(rank 3 of 4\)"):
        module.train_dataloader()


class Reloads(SSL4EOS12DataModule):
    made = 0

    def train_dataloader(self):
        type(self).made += 1
        return super().train_dataloader()


def test_a_train_loader_made_again_goes_on_with_the_next_epoch(root, tmp_path):
    runs = []
    for reload in (0, 1):
        model = Recorder()
        Reloads.made = 0
        trainer(tmp_path, reload_dataloaders_every_n_epochs=reload).fit(
            model, datamodule=Reloads("S2L2A", data_dir=str(root), batch_size=BATCH_SIZE, seed=4, num_threads=1))
        assert Reloads.made == 1 + reload
        runs.append(model.trained)
    assert runs[0] == runs[1], "the reloaded loader runs the second epoch as the first loader would have"
    assert runs[0][6:] != runs[0][:3], "the second epoch's order is not the first's"


class Ranks(Recorder):
    """Writes what each rank trained on to a file (ddp_spawn hands back nothing of the other ranks)."""

    def __init__(self, out):
        super().__init__()
        self.out = str(out)

    def on_train_end(self):
        import json

        with open(f"{self.out}.{self.global_rank}", "w") as f:
            json.dump({"trained": self.trained, "world_size": self.trainer.world_size}, f)


def test_ddp_ranks_read_their_part_without_a_distributed_sampler(root, tmp_path):
    """Two CPU processes (ddp_spawn, gloo), Lightning's default use_distributed_sampler=True: the Loader reaches the
    loop as it is, each rank reads half the epoch, the same number of steps."""
    import json

    module = SSL4EOS12DataModule("S2L2A", data_dir=str(root), batch_size=BATCH_SIZE, seed=4, num_threads=1)
    Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=1, limit_val_batches=0, logger=False,
            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
            default_root_dir=tmp_path).fit(Ranks(tmp_path / "seen"), datamodule=module)
    ranks = [json.loads((tmp_path / f"seen.{rank}").read_text()) for rank in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [len(r["trained"]) for r in ranks] == [3, 3]
    seen = [s for r in ranks for batch in r["trained"] for s in batch]
    assert len(seen) == len(set(seen)) == 12, "every example once across the two ranks"
