"""Bad inputs get one clear error naming the file, row or key, and leave no partial output."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch

from esmsae.config.parse import load
from esmsae.model.esm import EsmLM
from esmsae.model.splice import Splice
from esmsae.pipeline.errors import InputError
from esmsae.pipeline.io import atomic_path, write_csv

from .conftest import WT


def study(**changes) -> dict:
    """A minimal valid config with `changes` to its top-level keys."""
    return {"outdir": "o", "esm_checkpoint": "m.pt", "sae": {"dir": "s", "pattern": "l{layer}", "k": 8},
            "proteins": {"P": {"wt_seq": "MKV"}}, "mutations": {"source": "model"},
            "patching": {"layers": [1]}, "ig": {"layers": [1]}, **changes}


def test_sequence_longer_than_the_context(lm, saes):
    """A long sequence is read on windows; nothing runs the model past its context."""
    with pytest.raises(InputError, match=r"WT sequence: sequence of 1023 residues is longer.*on windows"):
        Splice(lm, saes[1], "A" * 1023, 1)
    with pytest.raises(ValueError, match=r"1025 tokens exceed the model's context of 1024"):
        lm.hidden(lm.tokenize(["A" * 1023]), 1)
    with pytest.raises(ValueError, match=r"1025 tokens exceed"):
        lm.on("fair-esm").logits(lm.tokenize(["A" * 1023]))


def test_sequence_with_non_canonical_residue(lm):
    with pytest.raises(InputError, match=r"proteins\.BAD\.wt_seq.*'X'"):
        load(study(proteins={"BAD": {"wt_seq": "MKXV"}}))


@pytest.mark.parametrize("layer", [0, 5, 33])
def test_layer_outside_the_model(lm, layer):
    with pytest.raises(InputError, match=f"layer {layer} is outside 1..4"):
        lm.check_layer(layer, where="patching.layers")


def test_nan_activations_are_refused(lm, saes):
    broken = copy.deepcopy(lm.model)
    with torch.no_grad():
        broken.layers[0].fc1.weight[0, 0] = float("nan")
    with pytest.raises(InputError, match="layer 2: the model's activations .* NaN or Inf"):
        Splice(EsmLM(broken, activations="interprot"), saes[2], WT["EPHB2_HUMAN"], 2)


def test_per_layer_k_must_cover_every_layer():
    config = study(sae={"dir": "s", "pattern": "l{layer}", "k": {2: 8}}, patching={"layers": [2, 4]},
                   ig={"layers": [2]})
    with pytest.raises(InputError, match=r"sae\.k: no k given for layer\(s\) \[4\]"):
        load(config)


def test_source_dms_needs_an_assay():
    with pytest.raises(InputError, match=r"proteins\.P\.dms: required"):
        load(study(mutations={"source": "dms"}))


def test_schema_holds_the_defaults_of_optional_blocks():
    """`demo` and `sae.train` may be null; when given, the schema fills in their defaults."""
    loaded = load(study(demo={"layers": 2, "embed_dim": 8, "heads": 2},
                        sae={"dir": "s", "pattern": "l{layer}", "k": 4, "train": {"d_sae": 16}}))
    assert loaded.demo.seed == 0 and loaded.train.steps == 2000 and loaded.train.lr == 0.001
    assert load(study()).demo is None and load(study()).train is None


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    with pytest.raises(InputError, match="output folder is not writable.*outdir"):
        write_csv(pd.DataFrame({"a": [1]}), blocker / "out.csv")


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "table.csv"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half a tab")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_killed_writer_leaves_no_partial_output(tmp_path):
    """SIGKILL a process in the middle of a large atomic write: the target never exists half-written."""
    target = tmp_path / "big.csv"
    script = textwrap.dedent(f"""
        import os, sys
        from esmsae.pipeline.io import atomic_path
        with atomic_path({str(target)!r}) as tmp:
            with open(tmp, "w") as fh:
                fh.write("x" * 1000)
                fh.flush()
                print("writing", flush=True)
                os.kill(os.getpid(), {int(signal.SIGKILL)})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL and "writing" in proc.stdout
    assert not target.exists()
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".big.csv.")  # the hidden temporary only
    write_csv(pd.DataFrame({"a": [1]}), target)  # the next write cleans it up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.csv"]
    assert os.path.getsize(target) > 0


def test_tables_are_read_back_with_their_columns_checked(tmp_path):
    from esmsae.pipeline.columns import TABLES, read_table

    path = tmp_path / "EPHB2_HUMAN_L2.csv"
    pd.DataFrame({"mutant": ["A1C"], "effect": [0.5]}).to_csv(path, index=False)
    with pytest.raises(InputError, match=r"EPHB2_HUMAN_L2\.csv: not a patching table \(missing column\(s\) position"):
        read_table(path, "patching")
    pd.DataFrame({c: [] for c in TABLES["patching"]}).to_csv(path, index=False)
    assert list(read_table(path, "patching").columns) == TABLES["patching"]
    with pytest.raises(InputError, match="nowhere.csv: scores table not found"):
        read_table(tmp_path / "nowhere.csv", "scores")
