"""A Lightning ``LightningDataModule`` over :class:`ssl4eos12.Loader` (optional extra ``lightning``)::

    from ssl4eos12.lightning import SSL4EOS12DataModule

    data = SSL4EOS12DataModule("S2L2A", data_dir="data/ssl4eo-s12", batch_size=64, crop=224, normalize=True)
    trainer = lightning.Trainer(accelerator="gpu", devices=8, strategy="ddp")
    trainer.fit(model, datamodule=data)            # trainer.fit(..., ckpt_path=...) resumes mid-epoch

Each process reads its own part of the epoch (:class:`~ssl4eos12.Loader` on the trainer's rank and world size), so
every rank steps the same number of batches. Lightning only puts a ``DistributedSampler`` into a
``torch.utils.data.DataLoader``: a ``Loader`` passes through untouched whatever ``use_distributed_sampler`` says.
The strategy must be data parallel over all processes (DDP, FSDP, DeepSpeed); where a model-parallel strategy
makes data-parallel groups smaller than the job, every process of a group would need the same batches, which the
``Loader`` does not give, and this module says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

try:
    from lightning.pytorch import LightningDataModule
except ImportError:
    raise ImportError("ssl4eos12.lightning needs Lightning: pip install 'ssl4eos12[lightning]'") from None

from .loader import Loader

#: Loader keywords that shape training only: validation reads every example once, in order, centre-cropped.
TRAIN_ONLY = ("shuffle", "seed", "shuffle_window", "even", "drop_last", "crop_mode")


class SSL4EOS12DataModule(LightningDataModule):
    """``train_dataloader()`` and ``val_dataloader()`` as :class:`ssl4eos12.Loader` s of the splits ``train`` and
    ``validation``, on the trainer's rank and world size.

    Args:
        config, data_dir, root: as for :class:`~ssl4eos12.Loader`.
        batch_size: examples per batch and process.
        val_batch_size: the same for validation (default: ``batch_size``).
        **loader_keywords: any other ``Loader`` keyword (``crop``, ``normalize``, ``device``, ``num_threads``,
            ``seed``, ``even``, the builder's filters, ...) but ``split``, ``rank`` and ``world_size``, which the
            module sets (``TypeError``). Validation takes them too, except those of
            :data:`TRAIN_ONLY`: it runs with ``shuffle=False``, ``even="pad"`` and every last batch, so every
            validation example is evaluated (at most ``world_size - 1`` of them twice, as with Lightning's own
            ``DistributedSampler``; for exact metrics validate on one device, or count each ``sample`` once), and
            every rank runs the same number of validation steps (``sync_dist`` logging stays in step).

    Resuming: ``state_dict()`` is the training ``Loader``'s position, saved in every checkpoint;
    ``trainer.fit(..., ckpt_path=...)`` continues with the batches after it, mid-epoch too (also where
    ``configure_optimizers`` asks ``trainer.estimated_stepping_batches``, which makes Lightning build the loader
    before it restores its own copy of that position). Without a trainer (plain use), the loaders take the rank
    from ``torch.distributed`` or the environment, as ``Loader`` does.
    """

    def __init__(self, config: str = "all", *, data_dir: str | None = None, root: str | None = None,
                 batch_size: int = 8, val_batch_size: int | None = None, **loader_keywords: Any):
        super().__init__()
        for name in ("split", "rank", "world_size"):
            if name in loader_keywords:
                raise TypeError(f"SSL4EOS12DataModule: {name}= is set by the data module (the split per loader, the "
                                f"rank and world size from the trainer); leave it out")
        self.config = config
        self.data_dir = data_dir
        self.root = root
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.loader_keywords = loader_keywords
        self.train_loader: Loader | None = None
        self._state: Mapping | None = None  # a checkpoint's position, loaded before the loader exists

    def _loader(self, split: str, batch_size: int, **keywords) -> Loader:
        return Loader(self.config, data_dir=self.data_dir, root=self.root, split=split, batch_size=batch_size,
                      **self._ranks(), **keywords)

    def _ranks(self) -> dict:
        trainer = self.trainer
        if trainer is None:
            return {}
        ranks = {"rank": trainer.global_rank, "world_size": trainer.world_size}
        sampler = trainer.distributed_sampler_kwargs  # the data-parallel group, where the strategy has one
        if sampler is not None and (sampler.get("rank"), sampler.get("num_replicas")) != (ranks["rank"],
                                                                                         ranks["world_size"]):
            raise ValueError(f"SSL4EOS12DataModule: the strategy's data-parallel group (rank {sampler.get('rank')} "
                             f"of {sampler.get('num_replicas')}) is not the job (rank {ranks['rank']} of "
                             f"{ranks['world_size']}): model parallelism is not supported; use a data-parallel "
                             f"strategy (ddp, fsdp, deepspeed)")
        return ranks

    def train_dataloader(self) -> Loader:
        # a loader made again (reload_dataloaders_every_n_epochs) goes on from where the last one stopped
        state = self._state if self._state is not None else (
            self.train_loader.state_dict() if self.train_loader is not None else None)
        loader = self._loader("train", self.batch_size, **self.loader_keywords)
        if state is not None:
            loader.load_state_dict(state)
        self._state = None
        self.train_loader = loader
        return loader

    def val_dataloader(self) -> Loader:
        keywords = {k: v for k, v in self.loader_keywords.items() if k not in TRAIN_ONLY}
        return self._loader("validation", self.val_batch_size, shuffle=False, even="pad", drop_last=False, **keywords)

    def state_dict(self) -> dict:
        state = self.train_loader.state_dict() if self.train_loader is not None else self._state
        return {} if state is None else {"train_loader": state}

    def load_state_dict(self, state_dict: dict) -> None:
        state = state_dict.get("train_loader")
        if state is None:
            return
        if self.train_loader is not None:
            self.train_loader.load_state_dict(state)
        else:
            self._state = state


__all__ = ["TRAIN_ONLY", "SSL4EOS12DataModule"]
