"""The job behind every per-(protein, layer) analysis rule: model, SAE, selected mutants, resume, outputs.

:func:`run_analysis` takes plain paths and typed settings (no Snakemake object, no config
dict), so it can be run and tested outside Snakemake too; the rule scripts in
``workflow_scripts/`` only call it with their analysis.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from esmsae.analyses.api import Analysis, LayerMeta, analyse
from esmsae.analyses.scoring import selected_mutants
from esmsae.config.settings import (
    LayerJob,
    Runtime,
    as_params,
)
from esmsae.inputs.mutations import Mutant, mutant_window
from esmsae.model.esm import MAX_TOKENS, EsmLM, open_model
from esmsae.model.sae import TopKSAE, open_sae
from esmsae.model.splice import Splice
from esmsae.pipeline.errors import InputError
from esmsae.pipeline.resume import WorkFolder, file_identity, fingerprint

log = logging.getLogger("esmsae")


def run_analysis(analysis: Analysis, settings, job: LayerJob, runtime: Runtime, inputs: Mapping[str, Path],
                 outputs: Mapping[str, Path]) -> None:
    """One per-(protein, layer) analysis job: every selected mutant, resumable, then its outputs.

    `inputs` has the rule's named inputs: ``checkpoint``, ``sae``, ``scores`` and any
    the analysis reads itself (its ``context``); `outputs` the rule's named outputs.
    """
    lm = open_model(inputs["checkpoint"], job.forward, runtime)
    sae = open_sae(inputs["sae"], job.k, lm, job.layer)
    mutants = selected_mutants(job.wt_seq, inputs["scores"])
    splice = splices(lm, sae, job, runtime, mutants)
    context = analysis.context(inputs, mutants, settings) if analysis.context else None
    work = WorkFolder(next(iter(outputs.values())), _fingerprint(analysis, settings, job, mutants, inputs),
                      keep=runtime.keep_pieces)
    results = analyse(analysis, splice, mutants, settings, context=context, work=work)
    analysis.write(results, outputs, settings, LayerMeta(protein=job.protein, layer=job.layer, k=sae.k,
                                                         d_sae=sae.info.d_sae, wt_seq=job.wt_seq,
                                                         activations=job.forward.activations))
    work.finish()


def splices(lm: EsmLM, sae: TopKSAE, job: LayerJob, runtime: Runtime, mutants: list[Mutant]) -> Splice | dict:
    """The engine for the job: one splice of the WT sequence, or for a sequence longer than the model's context
    one per window, by mutant (METHOD.md "Long sequences"; mutants sharing a window share its WT forward).
    The scores table holds only mutants that have a window."""
    if len(job.wt_seq) + 2 <= MAX_TOKENS:
        return Splice(lm, sae, job.wt_seq, job.layer, runtime.batch_size, protein=job.protein)
    by_window: dict[tuple[int, int], Splice] = {}
    out = {}
    for mutant in mutants:
        window = mutant_window(mutant, len(job.wt_seq))
        if window is None:
            raise InputError(f"{job.protein} {mutant.name}: its sites lie further apart than the model's window")
        if window not in by_window:
            by_window[window] = Splice(lm, sae, job.wt_seq, job.layer, runtime.batch_size, protein=job.protein,
                                       window=window)
        out[mutant.name] = by_window[window]
    log.info("%s (%d residues, longer than the model's context): %d mutants on %d windows of %d tokens",
             job.protein, len(job.wt_seq), len(mutants), len(by_window), MAX_TOKENS)
    return out


def _fingerprint(analysis: Analysis, settings, job: LayerJob, mutants: list[Mutant],
                 inputs: Mapping[str, Path]) -> str:
    """What keys a job's resume pieces: everything that decides its numbers (science settings, the
    mutants, every input file), never runtime knobs such as the batch size or the device."""
    return fingerprint(rule=analysis.rule, settings=as_params(settings), job=as_params(job),
                       mutants=[m.name for m in mutants],
                       inputs={name: file_identity(path) for name, path in sorted(inputs.items())})
