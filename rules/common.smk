# Shared helpers: config validation, target lists and input/params functions, defined once.
import re

from snakemake.utils import validate

from esmsae import config as cfg

validate(config, schema=str(cfg.SCHEMA), set_default=True)
cfg.check_config(config)

OUTDIR = config["outdir"]
PROTEINS = list(config["proteins"])
DMS_PROTEINS = [p for p in PROTEINS if config["proteins"][p].get("dms")]
LAYERS = cfg.analysis_layers(config)
SAE_FILE = cfg.sae_file_pattern(config)
ENV = "../envs/esmsae.yaml"
# Settings that change how a job runs but not what it computes.
RUNTIME_KEYS = ("device", "precision", "esm_trust_pickle", "batch_size")


wildcard_constraints:
    protein="|".join(re.escape(p) for p in PROTEINS),
    layer=r"\d+",


def settings(*keys, proteins=None):
    """The slice of the config a rule depends on, passed as params so that editing it reruns the rule."""
    out = {key: config[key] for key in (*RUNTIME_KEYS, *keys) if key in config}
    if proteins is not None:
        out["proteins"] = {p: config["proteins"][p] for p in proteins}
    return out


def protein_settings(wildcards):
    return settings("mutations", proteins=[wildcards.protein])


def patch_settings(wildcards):
    return settings("space", "patching", "sae", proteins=[wildcards.protein])


def scores_file(protein):
    return f"{OUTDIR}/scores/{protein}.csv"


def ig_settings(wildcards):
    return settings("space", "ig", "sae", proteins=[wildcards.protein])


def circuit_settings(wildcards):
    return settings("space", "ig", "circuits", "sae", proteins=[wildcards.protein])


PATCH_PAIRS = [[p, layer] for p in PROTEINS for layer in config["patching"]["layers"]]
IG_PAIRS = [[p, layer] for p in PROTEINS for layer in config["ig"]["layers"]]
IG_LAYERS = sorted(config["ig"]["layers"])


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
    path = config["proteins"][wildcards.protein].get("dms")
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
