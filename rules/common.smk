# Shared helpers: config validation, target lists and input/params functions, defined once.
import re

from snakemake.utils import validate

from esmsae import config as cfg
from esmsae.settings import as_params

validate(config, schema=str(cfg.SCHEMA), set_default=True)
# The config, typed, parsed once. Rules get the science settings they depend on as params
# (editing one reruns exactly the jobs it changes); runtime knobs (device, batch_size,
# esm_trust_pickle, threads) are read by the scripts and never rerun a job.
STUDY = cfg.parse(config)

OUTDIR = STUDY.outdir
PROTEINS = list(STUDY.proteins)
DMS_PROTEINS = [p for p in PROTEINS if STUDY.proteins[p].dms]
LAYERS = STUDY.layers
SAE_FILE = STUDY.sae_file_pattern
ENV = "../envs/esmsae.yaml"


wildcard_constraints:
    protein="|".join(re.escape(p) for p in PROTEINS),
    layer=r"\d+",


def layer_job(wildcards):
    """Params: what a per-(protein, layer) job works on (WT sequence, layer, the SAE's k, precision)."""
    return as_params(STUDY.layer_job(wildcards.protein, wildcards.layer))


def protein_params(wildcards):
    """Params: one protein's WT sequence, assay and mutation selection."""
    return as_params(STUDY.proteins[wildcards.protein])


def layer_k(wildcards):
    return STUDY.sae_k[int(wildcards.layer)]


def scores_file(protein):
    return f"{OUTDIR}/scores/{protein}.csv"


PATCH_PAIRS = [[p, layer] for p in PROTEINS for layer in STUDY.patching_layers]
IG_PAIRS = [[p, layer] for p in PROTEINS for layer in STUDY.ig_layers]
IG_LAYERS = sorted(STUDY.ig_layers)


def patching_file(protein, layer):
    return f"{OUTDIR}/patching/{protein}_L{layer}.csv"


def patching_files():
    return [patching_file(p, layer) for p, layer in PATCH_PAIRS]


def ig_file(protein, layer, suffix=".npz"):
    return f"{OUTDIR}/ig/{protein}_L{layer}{suffix}"


def circuits_file(protein, layer, suffix=".csv"):
    return f"{OUTDIR}/circuits/{protein}_L{layer}{suffix}"


def figure(name, ext="png"):
    return f"{OUTDIR}/figures/{name}.{ext}"


PATCHING_FIGURES = ["layer_effects", "controls", "delta_vs_effect"]
ATTRIBUTION_FIGURES = ["ig_concentration", "circuit_faithfulness", "universal_features", "minimal_circuit_sizes"]


def dms_assay(wildcards):
    """The protein's ProteinGym assay file, if it has one."""
    path = STUDY.proteins[wildcards.protein].dms
    return {"assay": path} if path else {}


def all_targets():
    targets = [scores_file(p) for p in PROTEINS]
    targets.append(f"{OUTDIR}/tables/sae_quality.csv")
    targets += patching_files()
    targets += [f"{OUTDIR}/tables/{name}.csv" for name in ("control_validation", "layer_progression", "top_mutations")]
    targets += [ig_file(p, layer) for p, layer in IG_PAIRS] + [ig_file(p, layer, "_top.csv") for p, layer in IG_PAIRS]
    targets += [circuits_file(p, layer) for p, layer in IG_PAIRS]
    targets.append(f"{OUTDIR}/tables/circuit_sizes.csv")
    targets += [f"{OUTDIR}/tables/{name}.csv" for name in ("ig_concentration", "universal_features")]
    targets += [f"{OUTDIR}/tables/feature_consistency_L{layer}.csv" for layer in IG_LAYERS]
    targets += [figure(name, ext) for name in ATTRIBUTION_FIGURES for ext in ("png", "pdf")]
    targets += [figure(name, ext) for name in PATCHING_FIGURES for ext in ("png", "pdf")]
    if DMS_PROTEINS:
        targets.append(f"{OUTDIR}/tables/dms_correlation.csv")
    return targets
