"""One entry point per Snakemake rule that runs the model; the scripts in ``workflow_scripts/`` only call
these (and :mod:`esmsae.reports`, the light rules' entry points).

Each function takes plain paths and typed settings (no Snakemake object, no config
dict), writes its outputs atomically, and logs what it read and kept, so it can be run and tested
outside Snakemake too.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from esmsae.analysis import Analysis, LayerMeta, analyse
from esmsae.columns import TABLES, read_table
from esmsae.demo import write_tiny_esm2
from esmsae.engine import Splice
from esmsae.esm import MAX_TOKENS, EsmLM, load_esm, resolve_device, set_precision
from esmsae.fasta import Skipped, reference_sequences
from esmsae.features import feature_activity, output_effects
from esmsae.host import hold_freed_memory
from esmsae.io import write_csv
from esmsae.labels import Activity
from esmsae.logs import log_to  # noqa: F401 (the rule scripts' log set-up, re-exported)
from esmsae.mutations import AMINO_ACIDS, Mutant, Site, parse_mutant
from esmsae.quality import residue_activations, sae_quality
from esmsae.resume import WorkFolder, file_identity, fingerprint, run_items
from esmsae.sae import TopKSAE, load_sae, save_sae, train_sae
from esmsae.scoring import read_scores, scores_table
from esmsae.settings import (
    DemoSettings,
    FeatureSettings,
    LayerJob,
    Protein,
    Runtime,
    TrainSettings,
    as_params,
)

log = logging.getLogger("esmsae")


def open_model(checkpoint: str | Path, precision: str, runtime: Runtime) -> EsmLM:
    """The ESM-2 checkpoint at `precision`, on the runtime's device."""
    device = resolve_device(runtime.device)
    model = load_esm(checkpoint, trust_pickle=runtime.trust_pickle)
    lm = EsmLM(set_precision(model, precision), device)
    log.info("loaded %s: %d layers, width %d, %.1fM parameters, on %s", checkpoint,
             lm.num_layers, lm.embed_dim, lm.num_parameters() / 1e6, device)
    return lm


def open_sae(path: str | Path, k: int, lm: EsmLM, layer: int) -> TopKSAE:
    """The SAE file for `layer`, checked against the model."""
    lm.check_layer(layer, where=f"config: layer {layer}")
    sae = load_sae(path, k, layer=layer, d_in=lm.embed_dim)
    log.info("loaded SAE for layer %d: d_sae=%d k=%d from %s", layer, sae.info.d_sae, sae.k, sae.info.source)
    return sae


def set_up_host(threads: int) -> None:
    """The rule's thread count for torch, and freed memory held for reuse (see esmsae.host)."""
    torch.set_num_threads(max(1, int(threads)))
    hold_freed_memory()


# -- rules ----------------------------------------------------------------------
def build_demo_model(demo: DemoSettings, checkpoint: str | Path) -> None:
    """Rule build_demo_model: a tiny random ESM-2 in fair-esm's format."""
    model = write_tiny_esm2(checkpoint, num_layers=demo.layers, embed_dim=demo.embed_dim,
                            attention_heads=demo.heads, seed=demo.seed)
    log.info("wrote a tiny ESM-2 (%d layers, width %d, %d heads) to %s", model.num_layers,
             model.embed_dim, model.attention_heads, checkpoint)


def training_sequences(wt_seqs: list[str], n_mutants: int, seed: int) -> list[str]:
    """WT sequences plus `n_mutants` random single mutants of each, reproducible for a seed."""
    rng = np.random.default_rng(seed)
    seqs = []
    for wt in wt_seqs:
        seqs.append(wt)
        for _ in range(n_mutants):
            pos = int(rng.integers(1, len(wt) + 1))
            mut = str(rng.choice([a for a in AMINO_ACIDS if a != wt[pos - 1]]))
            seqs.append(Mutant(f"{wt[pos - 1]}{pos}{mut}", (Site(wt[pos - 1], pos, mut),)).apply(wt))
    return seqs


def train_layer_sae(train: TrainSettings, wt_seqs: list[str], layer: int, k: int, precision: str,
                    runtime: Runtime, checkpoint: str | Path, out: str | Path) -> None:
    """Rule train_sae: fit a TopK SAE to layer `layer`'s residual stream on the study's sequences."""
    lm = open_model(checkpoint, precision, runtime)
    lm.check_layer(layer, where=f"sae.train: layer {layer}")
    seqs = training_sequences(wt_seqs, train.n_mutants, train.seed)
    x = residue_activations(lm, seqs, [layer])[layer]
    log.info("layer %d: %d activation vectors from %d sequences", layer, x.shape[0], len(seqs))
    sae = train_sae(x.to(lm.device), d_sae=train.d_sae, k=k, steps=train.steps, lr=train.lr,
                    batch_size=train.batch_size, seed=train.seed, layer=layer)
    save_sae(sae, out)


def score_protein(protein: Protein, precision: str, runtime: Runtime, checkpoint: str | Path,
                  assay: str | Path | None, out: str | Path) -> None:
    """Rule score_mutations: WT-marginal scores and the selection for one protein."""
    lm = open_model(checkpoint, precision, runtime)
    table = scores_table(lm, protein.name, protein.wt_seq, assay, protein.selection)
    if precision != "fp32":  # report the drift from fp32 on the same mutants
        reference = open_model(checkpoint, "fp32", runtime)
        fp32 = scores_table(reference, protein.name, protein.wt_seq, assay, protein.selection)
        drift = (table["wt_marginal"] - fp32["wt_marginal"]).abs()
        log.warning("precision %s: wt_marginal differs from fp32 by max %.4g, median %.4g over %d mutants",
                    precision, drift.max(), drift.median(), len(drift))
    log.info("%s: %d mutants scored, %d selected", protein.name, len(table), int(table["selected"].sum()))
    write_csv(table, out)


def selected_mutants(wt_seq: str, scores: str | Path) -> list[Mutant]:
    """The selected mutants of one protein, read back from its scores table."""
    table = read_scores(scores)
    names = table.loc[table["selected"].astype(bool), "mutant"]
    return [parse_mutant(name, wt_seq, where=f"{scores}") for name in names]


def measure_sae_quality(wt_seqs: dict[str, str], saes: dict[int, str | Path], k: dict[int, int], precision: str,
                        runtime: Runtime, checkpoint: str | Path, scores: dict[str, str | Path],
                        out: str | Path) -> None:
    """Rule measure_sae_quality: FVE, L0 and dead latents per layer on WT and selected mutant sequences."""
    lm = open_model(checkpoint, precision, runtime)
    seqs = []
    for protein, wt in wt_seqs.items():
        seqs += [wt] + [m.apply(wt) for m in selected_mutants(wt, scores[protein])]
    opened = {layer: open_sae(path, k[layer], lm, layer) for layer, path in sorted(saes.items())}
    table = sae_quality(lm, opened, seqs)
    log.info("SAE quality on %d sequences:\n%s", len(seqs), table.to_string(index=False))
    write_csv(table, out)


def run_analysis(analysis: Analysis, settings, job: LayerJob, runtime: Runtime, inputs: Mapping[str, Path],
                 outputs: Mapping[str, Path]) -> None:
    """One per-(protein, layer) analysis job: every selected mutant, resumable, then its outputs.

    `inputs` has the rule's named inputs: ``checkpoint``, ``sae``, ``scores`` and any
    the analysis reads itself (its ``context``); `outputs` the rule's named outputs.
    """
    lm = open_model(inputs["checkpoint"], job.precision, runtime)
    sae = open_sae(inputs["sae"], job.k, lm, job.layer)
    mutants = selected_mutants(job.wt_seq, inputs["scores"])
    splice = Splice(lm, sae, job.wt_seq, job.layer, runtime.batch_size, protein=job.protein)
    context = analysis.context(inputs, mutants, settings) if analysis.context else None
    work = WorkFolder(next(iter(outputs.values())), _fingerprint(analysis, settings, job, mutants, inputs))
    results = analyse(analysis, splice, mutants, settings, context=context, work=work)
    analysis.write(results, outputs, settings, LayerMeta(protein=job.protein, layer=job.layer, k=sae.k,
                                                         d_sae=sae.info.d_sae, wt_seq=job.wt_seq))
    work.finish()


def _fingerprint(analysis: Analysis, settings, job: LayerJob, mutants: list[Mutant],
                 inputs: Mapping[str, Path]) -> str:
    """What keys a job's resume pieces: everything that decides its numbers (science settings, the
    mutants, every input file), never runtime knobs such as the batch size or the device."""
    return fingerprint(rule=analysis.rule, settings=as_params(settings), job=as_params(job),
                       mutants=[m.name for m in mutants],
                       inputs={name: file_identity(path) for name, path in sorted(inputs.items())})


# -- feature labels (METHOD.md "Feature characterization") -------------------------------------
ACTIVITY_CHUNK = 1000  # reference sequences per resume piece of the activity pass


def characterize_layer(settings: FeatureSettings, wt_seqs: dict[str, str], layer: int, k: int, precision: str,
                       runtime: Runtime, checkpoint: str | Path, sae: str | Path, reference: str | Path | None,
                       out: str | Path) -> None:
    """Rule characterize_features: every feature's activity over the reference positions at one layer.

    The reference (WT sequences, then the FASTA) streams in chunks of ``ACTIVITY_CHUNK`` sequences;
    each chunk's counts are a resume piece, and the result is their sum.
    """
    lm = open_model(checkpoint, precision, runtime)
    opened = open_sae(sae, k, lm, layer)
    skipped = Skipped()
    stream = reference_sequences(wt_seqs, reference, settings.max_sequences, MAX_TOKENS - 2, skipped)
    inputs = {"checkpoint": checkpoint, "sae": sae} | ({"reference": reference} if reference else {})
    work = WorkFolder(out, fingerprint(rule="characterize_features", settings=as_params(settings), wt=wt_seqs,
                                       layer=layer, k=k, precision=precision,
                                       inputs={n: file_identity(p) for n, p in sorted(inputs.items())}))
    total, index, done = None, 0, 0
    while True:
        chunk = list(itertools.islice(stream, ACTIVITY_CHUNK))
        if not chunk:
            break
        name = f"{chunk[0][0]}..{chunk[-1][0]}"
        piece = work.load(index, name)
        if piece is None:
            piece = feature_activity(lm, opened, layer, chunk, wt_seqs)
            work.save(index, name, piece)
        else:
            done += 1
        total = piece if total is None else sum_activity([total, piece])  # counts only: memory stays flat
        log.info("layer %d: %d sequences, %d positions so far", layer, total.n_sequences, total.n_positions)
        index += 1
    log.info("resume: %d of %d chunks already done in %s", done, index, work.dir)
    if skipped.total() or skipped.reached_max:
        log.warning("reference %s: skipped %d longer than the model's context and %d with residues outside the "
                    "20 (first: %s)%s", reference, skipped.too_long, skipped.other_residues,
                    ", ".join(skipped.names) or "-",
                    f"; stopped after {settings.max_sequences} sequences" if skipped.reached_max else "")
    log.info("layer %d: %d sequences, %d positions; %d of %d features never active", layer, total.n_sequences,
             total.n_positions, int((total.n_active == 0).sum()), total.d_sae)
    total.write(out)
    work.finish()


def sum_activity(parts: list[Activity]) -> Activity:
    """The counts of several chunks of reference sequences added up."""
    first = parts[0]
    return Activity(
        layer=first.layer, k=first.k, d_sae=first.d_sae, n_sequences=sum(p.n_sequences for p in parts),
        n_positions=sum(p.n_positions for p in parts),
        **{name: sum(getattr(p, name) for p in parts)
           for name in ("residue_counts", "n_active", "active_by_residue", "activation_by_residue")},
        max_activation=np.maximum.reduce([p.max_activation for p in parts]),
        wt_latents={name: z for p in parts for name, z in p.wt_latents.items()},
    )


def measure_output_effects(settings: FeatureSettings, wt_seqs: dict[str, str], layer: int, k: int, precision: str,
                           runtime: Runtime, checkpoint: str | Path, sae: str | Path, shown: str | Path,
                           out: str | Path) -> None:
    """Rule measure_output_effects: each shown feature's output effect at one layer, mean over positions.

    One resume piece per protein; rows are (feature, position), batched per position by the engine.
    """
    lm = open_model(checkpoint, precision, runtime)
    opened = open_sae(sae, k, lm, layer)
    table = read_table(shown, "shown_features")
    features = sorted(table.loc[table["layer"] == layer, "feature"].astype(int).tolist())
    work = WorkFolder(out, fingerprint(rule="measure_output_effects", settings=as_params(settings), wt=wt_seqs,
                                       layer=layer, k=k, precision=precision, features=features,
                                       inputs={"checkpoint": file_identity(checkpoint), "sae": file_identity(sae)}))
    proteins = list(wt_seqs)

    def one(index: int):
        splice = Splice(lm, opened, wt_seqs[proteins[index]], layer, runtime.batch_size, protein=proteins[index])
        return output_effects(splice, features, settings.max_positions)

    parts = run_items(proteins, one, work, desc=f"output effects L{layer}") if features else []
    total = sum(p[0] for p in parts) if parts else np.zeros((0, 20))
    count = sum(p[1] for p in parts) if parts else np.zeros(0, dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = total / count[:, None]
    rows = pd.DataFrame(mean, columns=list(AMINO_ACIDS))
    rows.insert(0, "n_positions", count)
    rows.insert(0, "feature", features)
    rows.insert(0, "layer", layer)
    rows["k"], rows["d_sae"] = k, opened.info.d_sae
    log.info("layer %d: output effects of %d features from %d engine rows", layer, len(features), int(count.sum()))
    write_csv(rows[rows["n_positions"] > 0].reindex(columns=TABLES["output_effects"]), out)
    work.finish()


