"""Documentation that runs: every ```python and ```bash block of README.md and of the card ``convert`` writes,
executed in order on generated data, so the docs cannot drift from the code.

Placeholders filled in (the convention README.md states): ``data/ssl4eo-s12`` a generated Zarr root,
``data/ssl4eo-s12-wds`` a generated webdataset root, ``https://host/ssl4eo-s12`` the Zarr root served from
127.0.0.1, ``ORG/NAME`` a repository on a local Hub server, ``out/parquet`` an output folder. A block preceded
by ``<!-- not-run: REASON -->`` is skipped. Python blocks of one document share one namespace, as a reader
pasting them in order would; shell blocks run with ``bash -e`` in the repository root.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from reference import assert_example_equal, expected_examples
from servers import HubServer, RangeHTTPServer, use_hub

from ssl4eos12.constants import HOSTED_ROOT

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_docs_token"
PLACEHOLDER_REPO = "ORG/NAME"
_BLOCK = re.compile(r"^```(python|bash)[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
_NOT_RUN = re.compile(r"<!--\s*not-run:\s*(.+?)\s*-->\s*$")


def code_blocks(markdown: str) -> list[tuple[str, str, str | None, int]]:
    """``(language, code, not-run reason or None, line)`` of every python and bash block, in order."""
    blocks = []
    for match in _BLOCK.finditer(markdown):
        before = markdown[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        reason = _NOT_RUN.search(before)
        line = markdown.count("\n", 0, match.start()) + 1
        blocks.append((match.group(1), match.group(2), reason.group(1) if reason else None, line))
    return blocks


def test_code_blocks_and_not_run_marker():
    text = "a\n<!-- not-run: slow -->\n```bash\necho 1\n```\n\n```python title\nx = 1\n```\n```json\n{}\n```\n"
    assert code_blocks(text) == [("bash", "echo 1\n", "slow", 3), ("python", "x = 1\n", None, 7)]


class Docs:
    """Runs the blocks of documents with the placeholders filled in."""

    def __init__(self, substitutions: dict[str, str], env: dict[str, str]):
        self.substitutions = substitutions
        self.env = env
        self.skipped: list[str] = []

    def fill(self, code: str) -> str:
        for placeholder, value in self.substitutions.items():  # longest first: data/ssl4eo-s12-wds before its prefix
            code = code.replace(placeholder, value)
        return code

    def run(self, name: str, markdown: str, after_block=None) -> dict:
        namespace: dict = {"__name__": f"docs:{name}"}
        ran = 0
        for language, code, reason, line in code_blocks(markdown):
            where = f"{name}:{line}"
            if reason is not None:
                continue
            if "data/ssl4eo-s12-wds" in code and "data/ssl4eo-s12-wds" not in self.substitutions:
                self.skipped.append(f"{where} uses data/ssl4eo-s12-wds, and this branch cannot generate a "
                                    f"webdataset root (no ssl4eos12.synth.synthesize_webdataset)")
                continue
            code = self.fill(code)
            if language == "python":
                exec(compile(code, where, "exec"), namespace)  # noqa: S102 - the documentation's own code
            else:
                result = subprocess.run(["bash", "-e", "-c", code], cwd=REPO_ROOT, env=self.env,
                                        capture_output=True, text=True, timeout=600, check=False)
                assert result.returncode == 0, f"{where} failed:\n{code}\n{result.stdout}\n{result.stderr}"
            ran += 1
            if after_block is not None:
                after_block()
        assert ran, f"{name}: no block ran"
        return namespace


def webdataset_root(path: Path) -> Path | None:
    """A generated webdataset root, where this branch can make one."""
    import ssl4eos12.synth

    make = getattr(ssl4eos12.synth, "synthesize_webdataset", None)
    return None if make is None else Path(make(path, files=2, samples=3, size=16))


@pytest.fixture(scope="module")
def docs_env(tmp_path_factory):
    """Generated data, its HTTP server, a local Hub holding it as the hosted copy, and the placeholders."""
    tmp = tmp_path_factory.mktemp("docs")
    data = tmp / "data"  # empty: the README's `ssl4eos12 synth` block writes it, as it would for a reader
    data.mkdir()
    with RangeHTTPServer(data) as http, HubServer(tokens={TOKEN: "user"}) as hub, \
            use_hub(hub, token=TOKEN, home=tmp / "hf_home"):
        substitutions = {"https://host/ssl4eo-s12": http.url, "data/ssl4eo-s12": str(data),
                         "out/parquet": str(tmp / "out")}
        wds = webdataset_root(tmp / "wds")
        if wds is not None:
            substitutions["data/ssl4eo-s12-wds"] = str(wds)
        substitutions = dict(sorted(substitutions.items(), key=lambda item: -len(item[0])))
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
        yield Docs(substitutions, env), data, tmp, hub


def test_readme_runs(docs_env):
    docs, data, tmp, hub = docs_env
    hosted = HOSTED_ROOT.removeprefix("hf://datasets/")

    seeded = []

    def publish_hosted_copy():  # the local Hub holds the generated data as the hosted copy, once there is some
        if not seeded and any(data.rglob("*.zarr.zip")):
            seeded.append(hub.seed(hosted, data))

    namespace = docs.run("README.md", (REPO_ROOT / "README.md").read_text(encoding="utf-8"), publish_hosted_copy)
    assert seeded, "the README generates its data before loading it"
    assert "loader" in namespace and "batch" in namespace
    # what the README's shell block left behind: a converted, verified folder, pushed to ORG/NAME
    assert (tmp / "out" / ".ssl4eos12" / "manifest.json").is_file()
    assert any(path.endswith(".arrow") for path in hub.files(PLACEHOLDER_REPO))
    if docs.skipped:
        pytest.skip("; ".join(docs.skipped))


def test_card_runs_and_its_recipe_loads_every_example_once(docs_env, converted_dir, data_dir, tmp_path):
    """The card `convert` writes, pasted in order against its repository; its PyTorch recipe over 2 workers."""
    docs, _, _, hub = docs_env
    folder = tmp_path / "card"
    shutil.copytree(converted_dir, folder)
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert f'"{PLACEHOLDER_REPO}"' in card
    hub.seed(PLACEHOLDER_REPO + "-card", folder)
    docs_for_card = Docs({PLACEHOLDER_REPO: PLACEHOLDER_REPO + "-card"}, docs.env)
    namespace = docs_for_card.run("card", card)
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    recipe = namespace["loader"]  # the card's last recipe: Arrow rows and ssl4eos12.collate
    loader = DataLoader(recipe.dataset, batch_size=4, collate_fn=recipe.collate_fn, num_workers=2)
    config, split = "S2L2A", "validation"
    assert 'load_dataset("ORG/NAME", "S2L2A", split="validation", streaming=True)' in card
    expected = {e["sample"]: e for e in expected_examples(data_dir, split, [config])}
    seen = []
    for batch in loader:
        assert batch[config].dtype == torch.int16 and batch[f"{config}_time"].dtype == torch.int64
        for i, sample in enumerate(batch["sample"]):
            example = {name: value[i].numpy() if isinstance(value, torch.Tensor) else value[i]
                       for name, value in batch.items()}
            example[f"{config}_time"] = example[f"{config}_time"].view("datetime64[ns]")
            assert_example_equal(example, expected[sample], f"card recipe {sample}")
            seen.append(sample)
    assert sorted(seen) == sorted(expected), "every example exactly once"
    # the index recipe: what pandas selects from the index config, then exactly those rows of the modality config
    index = pd.concat([pa.ipc.open_stream(pa.memory_map(str(p))).read_pandas()
                       for p in sorted((folder / "index").glob("validation-*.arrow"))])
    box = index[index["center_lat"] >= 0]
    wanted = set(box["sample"]) - set(box.loc[box["S2L2A_cloud_fraction"] > 0.1, "sample"])
    assert namespace["wanted"] == wanted
    assert [row["sample"] for row in namespace["matching"]] == [s for s in expected if s in wanted]
    assert namespace["batch"][config].dtype == torch.int16  # what the card's last block fetched
    # the first recipe, datasets' torch format without the timestamps: widened, the same values
    first = next(iter(DataLoader(namespace["tensors"].with_format("torch"), batch_size=8)))
    assert first[config].dtype == torch.int64 and not any(name.endswith("_time") for name in first)
    np.testing.assert_array_equal(first[config].numpy(),
                                  np.stack([expected[s][config] for s in first["sample"]]).astype(np.int64))
