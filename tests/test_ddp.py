"""ssl4eos12.Loader in a real ``torch.distributed`` job: three processes on the ``gloo`` backend, one collective
per batch, over shards of uneven sizes. Every rank must take its rank from ``torch.distributed`` and yield
``len(loader)`` batches in every epoch (one rank short and the others would wait in their next collective), and
the ranks together must read every example at most once per epoch. A rank or world size that is not the job's
must fail at construction, with one ``ValueError``, not hang or skew the epoch.

The ranks run this file as a script (``python test_ddp.py RANK ...``), so that each is a fresh process as under
``torchrun``, and write what they saw as JSON; the test compares the ranks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

WORLD_SIZE = 3
BATCH_SIZE = 2
KEPT = (4, 1, 3, 2, 4, 3)  # examples the filter keeps of each file's 4: uneven shards, 17 examples in all
EPOCHS = 2
TIMEOUT = 90  # seconds for the whole job (5 when all goes well); a collective waiting for a missing batch: 30


def run_rank(rank: int, root: str, samples: list[str], store: str, out: str) -> None:
    """One rank of the job (a child process)."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD_SIZE,
                            timeout=timedelta(seconds=30))
    import ssl4eos12

    result = {}
    for even in ("drop", "pad"):
        loader = ssl4eos12.Loader("S2L2A", data_dir=root, batch_size=BATCH_SIZE, samples=samples, even=even,
                                  seed=3, num_threads=1)
        epochs = []
        for _ in range(EPOCHS):
            seen, reduced = [], []
            for batch in loader:
                size = torch.tensor([len(batch["sample"])])
                dist.all_reduce(size)  # pairs up with the other ranks' batch of the same step, or waits for it
                reduced.append(int(size))
                seen.append(list(batch["sample"]))
            epochs.append({"batches": seen, "reduced": reduced})
        result[even] = {"rank": [loader.rank, loader.world_size], "len": len(loader), "epochs": epochs}
    errors = {}
    for name, wrong in (("world_size", {"world_size": WORLD_SIZE - 1}), ("rank", {"rank": (rank + 1) % WORLD_SIZE})):
        try:
            ssl4eos12.Loader("S2L2A", data_dir=root, batch_size=BATCH_SIZE, samples=samples, **wrong)
            errors[name] = None
        except ValueError as err:
            errors[name] = str(err)
    result["errors"] = errors
    dist.barrier()
    dist.destroy_process_group()
    Path(out).write_text(json.dumps(result))


def run_job(tmp_path: Path, samples: list[str], root: Path) -> list[dict]:
    """Run the ranks; what each saw, by rank."""
    paths = [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, paths)))
    # a launcher's variables that disagree with the job: the loader must ask torch.distributed, not these
    env.update(RANK="0", WORLD_SIZE="1")
    store = tmp_path / "store"
    logs = [tmp_path / f"rank{rank}.log" for rank in range(WORLD_SIZE)]
    outs = [tmp_path / f"rank{rank}.json" for rank in range(WORLD_SIZE)]
    processes = []
    for rank in range(WORLD_SIZE):
        with open(logs[rank], "w") as log:
            processes.append(subprocess.Popen(
                [sys.executable, __file__, str(rank), str(root), json.dumps(samples), str(store), str(outs[rank])],
                env=env, stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + TIMEOUT
    try:
        for process in processes:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    failed = [f"rank {rank} (exit {p.returncode}):\n{logs[rank].read_text()[-3000:]}"
              for rank, p in enumerate(processes) if p.returncode != 0]
    assert not failed, f"ranks failed or did not finish within {TIMEOUT} s:\n" + "\n".join(failed)
    return [json.loads(out.read_text()) for out in outs]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """The job run once over uneven shards: (the samples the filter keeps, what each rank saw)."""
    import pandas as pd

    from ssl4eos12.index import build_index
    from ssl4eos12.synth import synthesize

    torch = pytest.importorskip("torch")
    if not torch.distributed.is_available():
        pytest.skip("this torch build has no torch.distributed")
    tmp_path = tmp_path_factory.mktemp("ddp")
    root = synthesize(tmp_path / "data", splits=("train",), files=len(KEPT), samples=4, size=8,
                      modalities=("S2L2A",))
    build_index(root, workers=1)
    index = pd.read_parquet(root / "splits" / "ssl4eos12_train_index.parquet")
    by_file = index.drop_duplicates("sample").groupby("file", sort=True)["sample"].apply(sorted)
    assert len(by_file) == len(KEPT)
    samples = [s for kept, names in zip(KEPT, by_file) for s in names[:kept]]
    return samples, run_job(tmp_path, samples, root)


def test_ranks_from_torch_distributed_step_together_and_share_the_epoch(job):
    samples, ranks = job
    total = len(samples)
    for even, per_rank in (("drop", total // WORLD_SIZE), ("pad", -(-total // WORLD_SIZE))):
        batches = -(-per_rank // BATCH_SIZE)
        for rank, result in enumerate(ranks):
            assert result[even]["rank"] == [rank, WORLD_SIZE], f"even={even}: rank {rank} is not torch.distributed's"
            assert result[even]["len"] == batches, f"even={even}: len(loader) on rank {rank}"
        orders = []
        for epoch in range(EPOCHS):
            runs = [result[even]["epochs"][epoch] for result in ranks]
            where = f"even={even}, epoch {epoch}"
            assert [len(run["batches"]) for run in runs] == [batches] * WORLD_SIZE, f"{where}: batches per rank"
            assert [sum(map(len, run["batches"])) for run in runs] == [per_rank] * WORLD_SIZE, f"{where}"
            for step in range(batches):  # each step's collective joined the same step of every rank
                sizes = [len(run["batches"][step]) for run in runs]
                assert [run["reduced"][step] for run in runs] == [sum(sizes)] * WORLD_SIZE, f"{where}, step {step}"
            seen = [s for run in runs for batch in run["batches"] for s in batch]
            assert set(seen) <= set(samples), f"{where}: a sample the filter left out"
            if even == "drop":
                assert len(set(seen)) == len(seen), f"{where}: a sample read twice across ranks"
                assert total - len(seen) == total % WORLD_SIZE <= WORLD_SIZE - 1, f"{where}: examples left out"
            else:
                assert set(seen) == set(samples), f"{where}: with even='pad' every example is read"
                assert len(seen) - total == (-total) % WORLD_SIZE, f"{where}: repeats beyond the padding"
            orders.append(seen)
        assert orders[0] != orders[1], f"even={even}: the second epoch repeats the first's order"


def test_rank_or_world_size_other_than_the_jobs_is_refused(job):
    _, ranks = job
    for rank, result in enumerate(ranks):
        errors = result["errors"]
        assert errors["world_size"] == (
            f"world_size={WORLD_SIZE - 1} given, but torch.distributed runs this process as rank {rank} of world_size "
            f"{WORLD_SIZE}: leave rank= and world_size= out (they default to torch.distributed's)")
        assert errors["rank"] is not None and errors["rank"].startswith(
            f"rank={(rank + 1) % WORLD_SIZE} given, but torch.distributed runs this process as rank {rank} of "), errors


if __name__ == "__main__":
    run_rank(int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), sys.argv[4], sys.argv[5])
