"""One entry point per Snakemake rule; the scripts in ``workflow_scripts/`` only call these.

Each function takes plain paths and settings (no Snakemake object), writes its
outputs atomically, and logs what it read and kept, so it can be run and tested
outside Snakemake too.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from esmsae import aggregate, attribution_figures, attribution_tables, figures
from esmsae import config as cfg
from esmsae.circuits import circuit_curve, curves_table, sizes_table
from esmsae.demo import write_tiny_esm2
from esmsae.engine import Splice
from esmsae.errors import InputError
from esmsae.esm import EsmLM, load_esm, resolve_device, set_precision
from esmsae.host import hold_freed_memory
from esmsae.ig import attribute_protein, load_attributions, save_attributions, top_features
from esmsae.io import write_csv
from esmsae.mutations import AMINO_ACIDS, Mutant, Site, parse_mutant
from esmsae.patching import patch_protein
from esmsae.quality import residue_activations, sae_quality
from esmsae.resume import WorkFolder, file_identity, fingerprint, run_items
from esmsae.sae import load_sae, save_sae, train_sae
from esmsae.scoring import dms_correlation, read_scores, scores_table

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


def open_model(config: dict, checkpoint: str | Path) -> EsmLM:
    """The ESM-2 checkpoint on the configured device."""
    device = resolve_device(config.get("device", "auto"))
    model = load_esm(checkpoint, trust_pickle=config.get("esm_trust_pickle", False))
    lm = EsmLM(set_precision(model, config.get("precision", "fp32")), device)
    log.info("loaded %s: %d layers, width %d, %.1fM parameters, on %s", checkpoint,
             lm.num_layers, lm.embed_dim, lm.num_parameters() / 1e6, device)
    return lm


def open_sae(config: dict, lm: EsmLM, layer: int):
    """The configured SAE for `layer`, checked against the model."""
    lm.check_layer(layer, where=f"config: layer {layer}")
    sae = load_sae(cfg.sae_file(config, layer), cfg.sae_k(config, layer), layer=layer, d_in=lm.embed_dim)
    log.info("loaded SAE for layer %d: d_sae=%d k=%d from %s", layer, sae.info.d_sae, sae.k, sae.info.source)
    return sae


# -- rules ----------------------------------------------------------------------
def build_demo_model(spec: dict, checkpoint: str | Path) -> None:
    """Rule build_demo_model: a tiny random ESM-2 in fair-esm's format."""
    model = write_tiny_esm2(checkpoint, num_layers=spec["layers"], embed_dim=spec["embed_dim"],
                            attention_heads=spec["heads"], seed=spec["seed"])
    log.info("wrote a tiny ESM-2 (%d layers, width %d, %d heads) to %s", model.num_layers,
             model.embed_dim, model.attention_heads, checkpoint)


def training_sequences(proteins: dict[str, dict], n_mutants: int, seed: int) -> list[str]:
    """WT sequences plus `n_mutants` random single mutants of each, reproducible for a seed."""
    rng = np.random.default_rng(seed)
    seqs = []
    for entry in proteins.values():
        wt = entry["wt_seq"].strip().upper()
        seqs.append(wt)
        for _ in range(n_mutants):
            pos = int(rng.integers(1, len(wt) + 1))
            mut = str(rng.choice([a for a in AMINO_ACIDS if a != wt[pos - 1]]))
            seqs.append(Mutant(f"{wt[pos - 1]}{pos}{mut}", (Site(wt[pos - 1], pos, mut),)).apply(wt))
    return seqs


def train_layer_sae(config: dict, checkpoint: str | Path, layer: int, out: str | Path) -> None:
    """Rule train_sae: fit a TopK SAE to layer `layer`'s residual stream on the study's sequences."""
    spec = cfg.train_settings(config)
    lm = open_model(config, checkpoint)
    lm.check_layer(layer, where=f"sae.train: layer {layer}")
    seqs = training_sequences(config["proteins"], spec["n_mutants"], spec["seed"])
    x = residue_activations(lm, seqs, [layer])[layer]
    log.info("layer %d: %d activation vectors from %d sequences", layer, x.shape[0], len(seqs))
    k = cfg.sae_k(config, layer)
    sae = train_sae(x.to(lm.device), d_sae=spec["d_sae"], k=k, steps=spec["steps"], lr=spec["lr"],
                    batch_size=spec["batch_size"], seed=spec["seed"], layer=layer)
    save_sae(sae, out)


def score_protein(config: dict, checkpoint: str | Path, protein: str, out: str | Path) -> None:
    """Rule score_mutations: WT-marginal scores and the selection for one protein."""
    entry = config["proteins"][protein]
    lm = open_model(config, checkpoint)
    table = scores_table(lm, protein, entry["wt_seq"].strip().upper(), entry.get("dms"),
                         cfg.selection_settings(config, protein))
    if config.get("precision", "fp32") != "fp32":  # report the drift from fp32 on the same mutants
        reference = open_model({**config, "precision": "fp32"}, checkpoint)
        fp32 = scores_table(reference, protein, entry["wt_seq"].strip().upper(), entry.get("dms"),
                            cfg.selection_settings(config, protein))
        drift = (table["wt_marginal"] - fp32["wt_marginal"]).abs()
        log.warning("precision %s: wt_marginal differs from fp32 by max %.4g, median %.4g over %d mutants",
                    config["precision"], drift.max(), drift.median(), len(drift))
    log.info("%s: %d mutants scored, %d selected", protein, len(table), int(table["selected"].sum()))
    write_csv(table, out)


def correlate(scores: dict[str, str | Path], out: str | Path) -> None:
    """Rule dms_correlation: Spearman ρ of WT-marginal scores with DMS scores, per protein."""
    table = dms_correlation({protein: read_scores(path) for protein, path in scores.items()})
    write_csv(table, out)


def selected_mutants(config: dict, scores: dict[str, str | Path]) -> dict[str, list[Mutant]]:
    """The selected mutants of each protein, read back from its scores table."""
    out = {}
    for protein, path in scores.items():
        wt = config["proteins"][protein]["wt_seq"].strip().upper()
        table = read_scores(path)
        names = table.loc[table["selected"].astype(bool), "mutant"]
        out[protein] = [parse_mutant(name, wt, where=f"{path}") for name in names]
    return out


def measure_sae_quality(config: dict, checkpoint: str | Path, scores: dict[str, str | Path],
                        out: str | Path) -> None:
    """Rule sae_quality: FVE, L0 and dead latents per layer on WT and selected mutant sequences."""
    lm = open_model(config, checkpoint)
    seqs = []
    for protein, mutants in selected_mutants(config, scores).items():
        wt = config["proteins"][protein]["wt_seq"].strip().upper()
        seqs += [wt] + [m.apply(wt) for m in mutants]
    saes = {layer: open_sae(config, lm, layer) for layer in cfg.analysis_layers(config)}
    table = sae_quality(lm, saes, seqs)
    log.info("SAE quality on %d sequences:\n%s", len(seqs), table.to_string(index=False))
    write_csv(table, out)


def set_up_host(threads: int) -> None:
    """The rule's thread count for torch, and freed memory held for reuse (see esmsae.host)."""
    torch.set_num_threads(max(1, int(threads)))
    hold_freed_memory()



def patch_layer(config: dict, checkpoint: str | Path, protein: str, layer: int, scores: str | Path,
                out: str | Path) -> None:
    """Rule patch_features: every feature patch and control for one protein at one layer."""
    splice, mutants = _splice_for(config, checkpoint, protein, layer, scores)
    settings = cfg.patch_settings(config)
    work = _work_folder("patch_features", out, config, mutants, checkpoint, splice, scores)
    table = patch_protein(splice, mutants, settings, protein=protein, work=work)
    log.info("%s L%d: %d mutants, %d rows (space %s, features %s)", protein, layer, len(mutants), len(table),
             settings.space, settings.features)
    write_csv(table, out)
    work.finish()


def _work_folder(rule: str, output: str | Path, config: dict, mutants: list[Mutant], checkpoint: str | Path,
                 splice: Splice, scores: str | Path) -> WorkFolder:
    """The resumable work folder of one job, keyed by everything that decides its numbers."""
    key = fingerprint(rule=rule, output=str(output), config=config, mutants=[m.name for m in mutants],
                      checkpoint=file_identity(checkpoint), sae=file_identity(splice.sae.info.source),
                      scores=file_identity(scores), layer=splice.layer)
    return WorkFolder(output, key)


def _splice_for(config: dict, checkpoint: str | Path, protein: str, layer: int, scores: str | Path):
    lm = open_model(config, checkpoint)
    sae = open_sae(config, lm, layer)
    mutants = selected_mutants(config, {protein: scores})[protein]
    return Splice(lm, sae, config["proteins"][protein]["wt_seq"].strip().upper(), layer), mutants


def patching_tables(pairs: list[tuple[str, int]], tables: list[str], scores: dict[str, str], top_n: int,
                    out: dict[str, str]) -> None:
    """Rule patching_tables: control validation, layer progression and top mutations."""
    patching = {(p, int(layer)): aggregate.read_patching(path) for (p, layer), path in zip(pairs, tables, strict=True)}
    score_tables = {protein: read_scores(path) for protein, path in scores.items()}
    selected = {protein: int(t["selected"].sum()) for protein, t in score_tables.items()}
    write_csv(aggregate.control_validation(patching), out["validation"])
    write_csv(aggregate.layer_progression(patching, selected), out["progression"])
    write_csv(aggregate.top_mutations(patching, score_tables, top_n), out["top"])


def plot_patching(figure: str, inputs: dict, png: str | Path, pdf: str | Path) -> None:
    """Rules plot_layer_effects, plot_controls, plot_delta_vs_effect."""
    if figure in ("layer_effects", "controls"):
        validation = pd.read_csv(inputs["validation"])
        getattr(figures, figure)(validation, png, pdf)
    elif figure == "delta_vs_effect":
        tables = {(p, int(layer)): aggregate.read_patching(path)
                  for (p, layer), path in zip(inputs["pairs"], inputs["tables"], strict=True)}
        figures.delta_vs_effect(tables, png, pdf)
    else:
        raise ValueError(f"unknown patching figure {figure!r}")


def ig_layer(config: dict, checkpoint: str | Path, protein: str, layer: int, scores: str | Path,
             out_npz: str | Path, out_top: str | Path) -> None:
    """Rule integrated_gradients: IG with an error node for every selected mutant at one layer."""
    splice, mutants = _splice_for(config, checkpoint, protein, layer, scores)
    settings = cfg.ig_settings(config)
    work = _work_folder("integrated_gradients", out_npz, config, mutants, checkpoint, splice, scores)
    results = attribute_protein(splice, mutants, settings, work)
    errors = np.array([r.completeness_error for r in results])
    log.info("%s L%d: %d mutants, steps=%d rule=%s space=%s error_node=%s, median completeness error %.3g",
             protein, layer, len(results), settings.steps, settings.rule, settings.space, settings.error_node,
             float(np.median(errors)) if len(errors) else float("nan"))
    save_attributions(results, out_npz, settings=settings, k=splice.sae.k, d_sae=splice.sae.info.d_sae, layer=layer)
    write_csv(top_features(results), out_top)
    work.finish()


def circuits_layer(config: dict, checkpoint: str | Path, protein: str, layer: int, scores: str | Path,
                   npz: str | Path, out_curves: str | Path, out_sizes: str | Path) -> None:
    """Rule find_circuits: recovered fraction vs k for every mutant, ranked by its IG attribution."""
    splice, mutants = _splice_for(config, checkpoint, protein, layer, scores)
    settings = cfg.circuit_settings(config)
    ig = load_attributions(npz)
    if [m.name for m in mutants] != ig["mutant"].tolist():
        raise InputError(f"{npz}: its mutants do not match the selection in {scores}; rerun integrated_gradients")
    with torch.no_grad():
        h = splice.hidden([m.apply(splice.wt_seq) for m in mutants]) if mutants else None
    work = _work_folder("find_circuits", out_curves, config, mutants, checkpoint, splice, scores)

    def one(index: int):
        mutant = mutants[index]
        attribution = torch.as_tensor(ig["attribution"][index], dtype=torch.float32, device=splice.lm.device)
        curve = circuit_curve(splice, mutant, h[index, [s.pos for s in mutant.sites]], attribution, settings)
        log.info("%s L%d %s: total effect %.4g, minimal circuit %s", protein, layer, mutant.name,
                 curve.total_effect, curve.minimal_k)
        return curve

    curves = run_items([m.name for m in mutants], one, work, desc=f"circuits {protein} L{layer}")
    write_csv(curves_table(curves), out_curves)
    write_csv(sizes_table(protein, layer, curves), out_sizes)
    work.finish()


def ig_tables(pairs: list[tuple[str, int]], npz: list[str], out: dict) -> None:
    """Rule ig_tables: concentration, per-layer feature consistency and universal features."""
    results = {(p, int(layer)): load_attributions(path) for (p, layer), path in zip(pairs, npz, strict=True)}
    write_csv(attribution_tables.ig_concentration(results), out["concentration"])
    write_csv(attribution_tables.universal_features(results), out["universal"])
    for layer, path in out["consistency"].items():
        at_layer = {p: r for (p, lay), r in results.items() if lay == int(layer)}
        write_csv(attribution_tables.feature_consistency(at_layer), path)


def circuit_sizes(sizes: list[str], out: str | Path) -> None:
    """Rule circuit_sizes: minimal circuit size of every mutant, all proteins and layers."""
    write_csv(attribution_tables.circuit_sizes(pd.read_csv(path) for path in sizes), out)


def plot_attribution(figure: str, inputs: dict, png: str | Path, pdf: str | Path, *, recover: float = 0.9,
                     max_k: int = 64) -> None:
    """Rules plot_ig_concentration, plot_circuit_faithfulness, plot_universal_features, plot_minimal_circuit_sizes."""
    pairs = [(p, int(layer)) for p, layer in inputs["pairs"]]
    if figure in ("ig_concentration", "universal_features"):
        results = {pair: load_attributions(path) for pair, path in zip(pairs, inputs["npz"], strict=True)}
        getattr(attribution_figures, figure)(results, png, pdf)
    elif figure == "circuit_faithfulness":
        curves = {pair: pd.read_csv(path) for pair, path in zip(pairs, inputs["curves"], strict=True)}
        attribution_figures.circuit_faithfulness(curves, png, pdf, recover=recover)
    elif figure == "minimal_circuit_sizes":
        attribution_figures.minimal_circuit_sizes(pd.read_csv(inputs["sizes"]), png, pdf, max_k=max_k)
    else:
        raise ValueError(f"unknown attribution figure {figure!r}")
