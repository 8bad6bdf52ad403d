"""One entry point per Snakemake rule; the scripts in ``workflow_scripts/`` only call these.

Each function takes plain paths and typed settings (no Snakemake object, no config
dict), writes its outputs atomically, and logs what it read and kept, so it can be run and tested
outside Snakemake too.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from esmsae import aggregate, attribution_figures, attribution_tables, figures
from esmsae.analysis import Analysis, LayerMeta, analyse
from esmsae.arrays import Attributions
from esmsae.columns import read_table
from esmsae.demo import write_tiny_esm2
from esmsae.engine import Splice
from esmsae.errors import InputError
from esmsae.esm import EsmLM, load_esm, resolve_device, set_precision
from esmsae.host import hold_freed_memory
from esmsae.io import write_csv
from esmsae.keys import keyed
from esmsae.mutations import AMINO_ACIDS, Mutant, Site, parse_mutant
from esmsae.quality import residue_activations, sae_quality
from esmsae.resume import WorkFolder, file_identity, fingerprint
from esmsae.sae import TopKSAE, load_sae, save_sae, train_sae
from esmsae.scoring import dms_correlation, read_scores, scores_table
from esmsae.settings import (
    DemoSettings,
    LayerJob,
    Protein,
    Runtime,
    TrainSettings,
    as_params,
)

log = logging.getLogger("esmsae")


@contextmanager
def log_to(path: str | Path) -> Iterator[logging.Logger]:
    """Send the package's log to a rule's log file; record a failure there before re-raising."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield log
    except InputError as err:
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except Exception:
        log.exception("failed")
        raise
    finally:
        root.removeHandler(handler)
        handler.close()


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


def correlate(scores: Mapping[str, Path], out: str | Path) -> None:
    """Rule correlate_dms: Spearman ρ of WT-marginal scores with DMS scores, per protein."""
    table = dms_correlation({protein: read_scores(path) for protein, path in scores.items()})
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
    context = analysis.context(inputs, mutants) if analysis.context else None
    work = WorkFolder(next(iter(outputs.values())), _fingerprint(analysis, settings, job, mutants, inputs))
    results = analyse(analysis, splice, mutants, settings, context=context, work=work)
    analysis.write(results, outputs, settings, LayerMeta(protein=job.protein, layer=job.layer, k=sae.k,
                                                         d_sae=sae.info.d_sae))
    work.finish()


def _fingerprint(analysis: Analysis, settings, job: LayerJob, mutants: list[Mutant],
                 inputs: Mapping[str, Path]) -> str:
    """What keys a job's resume pieces: everything that decides its numbers (science settings, the
    mutants, every input file), never runtime knobs such as the batch size or the device."""
    return fingerprint(rule=analysis.rule, settings=as_params(settings), job=as_params(job),
                       mutants=[m.name for m in mutants],
                       inputs={name: file_identity(path) for name, path in sorted(inputs.items())})


def patching_tables(patching: Mapping[tuple[str, int], Path], scores: Mapping[str, Path], top_n: int,
                    out: Mapping[str, Path]) -> None:
    """Rule tabulate_patching: control validation, layer progression and top mutations."""
    tables = {pair: aggregate.read_patching(path) for pair, path in patching.items()}
    score_tables = {protein: read_scores(path) for protein, path in scores.items()}
    selected = {protein: int(t["selected"].sum()) for protein, t in score_tables.items()}
    write_csv(aggregate.control_validation(tables), out["validation"])
    write_csv(aggregate.layer_progression(tables, selected), out["progression"])
    write_csv(aggregate.top_mutations(tables, score_tables, top_n), out["top"])


def ig_tables(ig: Mapping[tuple[str, int], Path], out: Mapping[str, Path],
              consistency: Mapping[int, Path]) -> None:
    """Rule tabulate_attributions: concentration, feature consistency per layer and universal features."""
    results = {pair: Attributions.read(path) for pair, path in ig.items()}
    write_csv(attribution_tables.ig_concentration(results), out["concentration"])
    write_csv(attribution_tables.concentration_by_mutant(results), out["concentration_mutants"])
    write_csv(attribution_tables.universal_features(results), out["universal"])
    for layer, path in consistency.items():
        at_layer = {p: r for (p, lay), r in results.items() if lay == layer}
        write_csv(attribution_tables.feature_consistency(at_layer), path)


def circuit_sizes(sizes: Mapping[tuple[str, int], Path], out: str | Path) -> None:
    """Rule tabulate_circuit_sizes: minimal circuit size of every mutant, all proteins and layers."""
    write_csv(attribution_tables.circuit_sizes(read_table(path, "circuit_sizes") for path in sizes.values()), out)


# -- figures: one mechanism; each figure says how its inputs are read and how it is drawn --------
def _validation(inputs: Mapping[str, Path]):
    return read_table(inputs["validation"], "control_validation")


def _patching(inputs: Mapping[str, Path]):
    return {pair: aggregate.read_patching(path) for pair, path in keyed(inputs, "patching", PAIR).items()}


def _attributions(inputs: Mapping[str, Path]):
    return {pair: Attributions.read(path) for pair, path in keyed(inputs, "ig", PAIR).items()}


def _curves(inputs: Mapping[str, Path]):
    return {pair: read_table(path, "circuit_curves") for pair, path in keyed(inputs, "curves", PAIR).items()}


def _sizes(inputs: Mapping[str, Path]):
    return read_table(inputs["sizes"], "circuit_sizes")


@dataclass(frozen=True)
class Figure:
    """A figure: `read` its named inputs through their types, then ``draw(data, png, pdf, **options)``."""

    read: Callable[[Mapping[str, Path]], Any]
    draw: Callable[..., Any]


PAIR = ("protein", "layer")
FIGURES = {
    "layer_effects": Figure(_validation, figures.layer_effects),
    "controls": Figure(_validation, figures.controls),
    "delta_vs_effect": Figure(_patching, figures.delta_vs_effect),
    "ig_concentration": Figure(_attributions, attribution_figures.ig_concentration),
    "universal_features": Figure(_attributions, attribution_figures.universal_features),
    "circuit_faithfulness": Figure(_curves, attribution_figures.circuit_faithfulness),
    "minimal_circuit_sizes": Figure(_sizes, attribution_figures.minimal_circuit_sizes),
}


def draw_figure(name: str, inputs: Mapping[str, Path], options: Mapping[str, Any], png: str | Path,
                pdf: str | Path) -> None:
    """Rules plot_<name>: one figure from its named inputs, as PNG and PDF."""
    figure = FIGURES[name]
    figure.draw(figure.read(inputs), png, pdf, **options)
