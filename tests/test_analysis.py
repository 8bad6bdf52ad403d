"""The one-analysis API: a new analysis is a function of a mutant's view, and the shared job runs it.

The analysis defined here (the full effect of the mutant's layer-ℓ representation at its
sites) is written the way patching, IG and circuits are: a pure function of the view, a
writer and a summary. The shared job gives it the model, the SAE, the selected mutants, the
engine's batching and resume.
"""

from __future__ import annotations

import dataclasses
import logging

import pandas as pd
import pytest

from esmsae.analyses.api import Analysis
from esmsae.analyses.job import run_analysis
from esmsae.analyses.scoring import scores_table
from esmsae.config.settings import LayerJob, PatchSettings, Runtime
from esmsae.inputs.mutations import parse_mutant
from esmsae.pipeline.io import write_csv

from .conftest import DEFAULTS, FAIR_ESM, WT, K, view_of
from .reference import hooked_logits, score_from_logits

SEQ = WT["PR40A_HUMAN"]
LAYER = 3


def full_effect(view, settings, context):
    """The mutant's own representation at its sites, spliced into the WT run (METHOD.md "Spread over positions")."""
    return float(view.effects(view.end.unsqueeze(0), view.error_change.unsqueeze(0)).effects[0])


def write_full_effects(results, outputs, settings, meta):
    write_csv(pd.DataFrame({"effect": results, "layer": meta.layer, "k": meta.k, "d_sae": meta.d_sae}),
              outputs["table"])


FULL_EFFECT = Analysis(rule="full_effect", settings=PatchSettings, run=full_effect, write=write_full_effects,
                       summary=lambda effect: f"effect {effect:.4g}")


@pytest.fixture
def job_files(tiny_dir, lm, tmp_path):
    """A scores table with four selected mutants of PR40A, and the tiny model's files."""
    table = scores_table(lm, "PR40A_HUMAN", SEQ, None, dataclasses.replace(
        DEFAULTS.proteins["P"].selection, source="model", n=4))
    scores = tmp_path / "scores.csv"
    write_csv(table, scores)
    mutants = [parse_mutant(m, SEQ) for m in table.loc[table["selected"], "mutant"]]
    inputs = {"checkpoint": tiny_dir / "esm2_tiny.pt", "sae": tiny_dir / f"sae_l{LAYER}.safetensors",
              "scores": scores}
    return inputs, mutants


JOB = LayerJob(protein="PR40A_HUMAN", wt_seq=SEQ, layer=LAYER, k=K, forward=FAIR_ESM)


def runtime(batch_size):
    return Runtime(device="cpu", batch_size=batch_size, trust_pickle=False)


def test_a_new_analysis_runs_as_a_job(job_files, lm, saes, tmp_path):
    inputs, mutants = job_files
    out = tmp_path / "full.csv"
    run_analysis(FULL_EFFECT, DEFAULTS.patching, JOB, runtime(None), inputs, {"table": out})
    table = pd.read_csv(out)
    assert len(table) == 4 and (table["layer"] == LAYER).all() and (table["k"] == K).all()
    # Each number is the hooked fair-esm forward with the mutant's own vector at the site.
    from esmsae.model.splice import Splice

    splice = Splice(lm, saes[LAYER], SEQ, LAYER)
    for effect, mutant in zip(table["effect"], mutants, strict=True):
        view = view_of(splice, mutant)
        h_mut = splice.hidden([mutant.apply(SEQ)])[0]
        base = score_from_logits(hooked_logits(lm, SEQ, LAYER, {}), lm, mutant)
        direct = hooked_logits(lm, SEQ, LAYER, {s.pos: h_mut[s.pos] for s in mutant.sites})
        assert abs(effect - (score_from_logits(direct, lm, mutant) - base)) <= 1e-5
        assert view.mutant == mutant


def test_a_killed_job_resumes_with_another_batch_size(job_files, tmp_path, caplog):
    """The batch size is a runtime knob: a rerun with another one reuses the finished mutants' pieces."""
    inputs, _ = job_files
    out = tmp_path / "full.csv"
    calls = []

    def dies_on_the_third(view, settings, context):
        calls.append(view.mutant.name)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return full_effect(view, settings, context)

    with pytest.raises(RuntimeError, match="killed"):
        run_analysis(dataclasses.replace(FULL_EFFECT, run=dies_on_the_third), DEFAULTS.patching, JOB,
                     runtime(64), inputs, {"table": out})
    assert not out.exists() and len(list((tmp_path / "full.csv.work").glob("*/*.pkl"))) == 2
    with caplog.at_level(logging.INFO):
        run_analysis(FULL_EFFECT, DEFAULTS.patching, JOB, runtime(1), inputs, {"table": out})
    assert "resume: 2 of 4 mutants already done" in caplog.text
    resumed = out.read_bytes()
    run_analysis(FULL_EFFECT, DEFAULTS.patching, JOB, runtime(None), inputs, {"table": out})
    assert out.read_bytes() == resumed
    # A science setting is part of the fingerprint: other settings never reuse these pieces.
    with pytest.raises(RuntimeError, match="killed"):
        calls.clear()
        run_analysis(dataclasses.replace(FULL_EFFECT, run=dies_on_the_third), DEFAULTS.patching, JOB,
                     runtime(64), inputs, {"table": out})
    caplog.clear()
    with caplog.at_level(logging.INFO):
        run_analysis(FULL_EFFECT, dataclasses.replace(DEFAULTS.patching, seed=1), JOB, runtime(64), inputs,
                     {"table": out})
    assert "resume: 0 of 4 mutants already done" in caplog.text
