# Shared helpers: config validation, paths, named inputs and params, defined once.
import re
from pathlib import Path

from snakemake.utils import validate

from esmsae.config import parse as cfg
from esmsae.pipeline.keys import key
from esmsae.config.settings import as_params
from esmsae.inputs.mutations import MODEL_WINDOW

validate(config, schema=str(cfg.SCHEMA), set_default=True)
# The config, typed, parsed once. Rules get the science settings they depend on as params
# (editing one reruns exactly the jobs it changes); runtime knobs (device, batch_size,
# esm_trust_pickle, threads) are read by the scripts and never rerun a job.
STUDY = cfg.parse(config)

OUTDIR = STUDY.outdir
PROTEINS = list(STUDY.proteins)
DMS_PROTEINS = [p for p in PROTEINS if STUDY.proteins[p].dms]
# Proteins the model reads whole. A longer one is analysed per mutant on windows (METHOD.md "Long
# sequences") and left out of the whole-sequence stages: SAE training and fidelity, feature activity,
# labels and output effects, and set ablation (each says so in its log).
WHOLE_PROTEINS = [
    p for p in PROTEINS if len(STUDY.proteins[p].wt_seq) + 2 <= MODEL_WINDOW
]
# Concept labels: proteins with a UniProt GFF3 (configured, or fetched for proteins.NAME.uniprot), and those
# whose assay gives the dms_sensitive concept.
ANNOTATED_PROTEINS = [p for p in WHOLE_PROTEINS if STUDY.proteins[p].annotations]
CONCEPT_DMS_PROTEINS = (
    [p for p in DMS_PROTEINS if p in WHOLE_PROTEINS]
    if STUDY.features.dms_sensitive
    else []
)
UNIPROT_DIR = cfg.UNIPROT_DIR
LAYERS = STUDY.layers
IG_LAYERS = sorted(STUDY.ig_layers)
PATCH_PAIRS = [(p, layer) for p in PROTEINS for layer in STUDY.patching_layers]
IG_PAIRS = [(p, layer) for p in PROTEINS for layer in STUDY.ig_layers]
AGREEMENT_PAIRS = [(p, layer) for p in PROTEINS for layer in STUDY.agreement_layers]
POSITION_PAIRS = [(p, layer) for p in PROTEINS for layer in STUDY.positions_layers]
ABLATION_PAIRS = [(p, layer) for p in WHOLE_PROTEINS for layer in STUDY.ablation_layers]
# Graph jobs: one per protein and upstream layer (every graph layer but the last).
GRAPH_PAIRS = [(p, up) for p in PROTEINS for up, _ in STUDY.graph_pairs]
SAE_FILE = STUDY.sae_file_pattern
# The proteins the per-protein figures draw (figures.proteins; default: the 3 with the most selected mutants).
# Where that is fewer than the study's, every per-protein figure gets them as its `proteins` option.
FIGURE_PROTEINS = list(cfg.figure_proteins(config["figures"], STUDY.proteins))


wildcard_constraints:
    protein="|".join(re.escape(p) for p in PROTEINS),
    layer=r"\d+",


# -- paths ------------------------------------------------------------------------------------------
def sae_file(layer):
    return SAE_FILE.format(layer=layer)


def scores_file(protein):
    return f"{OUTDIR}/scores/{protein}.csv"


def quality_file(layer, suffix=".csv"):
    return f"{OUTDIR}/sae_quality/L{layer}{suffix}"


def quality_scores_file(layer):
    return quality_file(layer, "_scores.csv")


def patching_file(protein, layer):
    return f"{OUTDIR}/patching/{protein}_L{layer}.csv"


def ig_file(protein, layer, suffix=".npz"):
    return f"{OUTDIR}/ig/{protein}_L{layer}{suffix}"


def circuits_file(protein, layer):
    return f"{OUTDIR}/circuits/{protein}_L{layer}.csv"


def table_file(name):
    return f"{OUTDIR}/tables/{name}.csv"


def consistency_file(layer):
    return table_file(f"feature_consistency_L{layer}")


def figure_file(name, ext="png"):
    return f"{OUTDIR}/figures/{name}.{ext}"


def ablation_file(protein, layer):
    return f"{OUTDIR}/ablation/{protein}_L{layer}.npz"


def atp_file(protein, layer):
    return f"{OUTDIR}/atp/{protein}_L{layer}.npz"


def positions_file(protein, layer, suffix=".csv"):
    return f"{OUTDIR}/positions/{protein}_L{layer}{suffix}"


def position_summary_file(protein, layer):
    return positions_file(protein, layer, "_summary.csv")


def graph_pair_file(protein, layer, kind):
    return f"{OUTDIR}/graph/pairs/{protein}_L{layer}_{kind}.csv"


def graph_shares_file(protein, layer):
    return graph_pair_file(protein, layer, "shares")


def graph_edges_file(protein, layer):
    return graph_pair_file(protein, layer, "edges")


def downstream_sae(wildcards):
    """The SAE of the next graph layer after the job's."""
    return {"sae2": sae_file(STUDY.pair_settings(wildcards.layer).layer2)}


def pair_params(wildcards):
    """Params: the graph job's science (its downstream layer and that SAE's k included)."""
    return as_params(STUDY.pair_settings(wildcards.layer))


def graph_pair_inputs(wildcards):
    """One protein's graph tables of every layer pair, keyed by kind and upstream layer."""
    return {
        key(kind, up): graph_pair_file(wildcards.protein, up, kind)
        for up, _ in STUDY.graph_pairs
        for kind in ("nodes", "edges")
    }


def activity_file(layer):
    return f"{OUTDIR}/features/L{layer}_activity.npz"


def annotations_file(protein):
    return STUDY.proteins[protein].annotations


def concept_proteins():
    """Params: each protein's WT length and UniProt offset (concept coordinates)."""
    return {
        p: {
            "length": len(STUDY.proteins[p].wt_seq),
            "offset": STUDY.proteins[p].uniprot_offset,
        }
        for p in PROTEINS
    }


def examples_file(layer):
    return f"{OUTDIR}/features/L{layer}_examples.csv"


def effects_file(layer):
    return f"{OUTDIR}/features/L{layer}_effects.csv"


def card_file(layer, feature, ext="png"):
    return f"{OUTDIR}/features/cards/L{layer}_F{feature}.{ext}"


SHOWN_FILE = f"{OUTDIR}/features/shown.csv"


def reference_fasta(wildcards):
    """The reference FASTA of feature labels, if one is configured."""
    return {"reference": STUDY.features.reference} if STUDY.features.reference else {}


def ig_at_layer(wildcards):
    """Every protein's IG results at the card's layer (none when IG does not run there)."""
    layer = int(wildcards.layer)
    return (
        by_protein("ig", lambda p: ig_file(p, layer))
        if layer in STUDY.ig_layers
        else {}
    )


def feature_cards(wildcards):
    """Every feature card's PNG and PDF: known once select_features has run (a checkpoint)."""
    import pandas as pd

    shown = pd.read_csv(checkpoints.select_features.get().output.shown)
    chosen = shown[shown["card"].astype(str).str.lower() == "true"]
    return [
        card_file(layer, feature, ext)
        for layer, feature in zip(chosen["layer"], chosen["feature"])
        for ext in ("png", "pdf")
    ]


# -- named inputs keyed by protein and layer (scripts read them back with esmsae.pipeline.keys.keyed) --------
def by_protein(kind, path_of, proteins=PROTEINS):
    return {key(kind, p): path_of(p) for p in proteins}


def by_layer(kind, path_of, layers):
    return {key(kind, layer): path_of(layer) for layer in layers}


def by_pair(kind, path_of, pairs):
    return {key(kind, p, layer): path_of(p, layer) for p, layer in pairs}


def dms_assay(wildcards):
    """The protein's ProteinGym assay file, if it has one."""
    path = STUDY.proteins[wildcards.protein].dms
    return {"assay": path} if path else {}


# -- params: the science settings a rule depends on, as plain dicts --------------------------------
def layer_job(wildcards):
    """What a per-(protein, layer) job works on: WT sequence, layer, the SAE's k, precision."""
    return as_params(STUDY.layer_job(wildcards.protein, wildcards.layer))


def ablation_inputs(wildcards):
    """Each ablation layer's SAE and the protein's IG there (its `top` set)."""
    inputs = by_layer("sae", sae_file, STUDY.ablation_layers)
    return inputs | by_layer(
        "ig", lambda layer: ig_file(wildcards.protein, layer), STUDY.ablation_layers
    )


def ablation_jobs(wildcards):
    """Params: what each ablation layer's piece works on (as layer_job), by layer."""
    return {
        layer: as_params(STUDY.layer_job(wildcards.protein, layer))
        for layer in STUDY.ablation_layers
    }


def protein_params(wildcards):
    """One protein's WT sequence, assay and mutation selection."""
    return as_params(STUDY.proteins[wildcards.protein])


def layer_k(wildcards):
    return STUDY.sae_k[int(wildcards.layer)]


# -- figures: each is its own rule (rules/figures.smk), target and report entry ---------------------
FIGURES = {
    "sae_fidelity": {
        "category": "SAE fidelity",
        "input": {
            "quality": table_file("sae_quality"),
            "task": table_file("sae_task_fidelity"),
        },
    },
    "layer_effects": {
        "category": "Activation patching",
        "input": {"validation": table_file("control_validation")},
    },
    "controls": {
        "category": "Activation patching",
        "input": {"validation": table_file("control_validation")},
    },
    "delta_vs_effect": {
        "category": "Activation patching",
        "input": by_pair("patching", patching_file, PATCH_PAIRS),
    },
    "ig_concentration": {
        "category": "Attribution",
        "input": by_pair("ig", ig_file, IG_PAIRS),
    },
    "universal_features": {
        "category": "Attribution",
        "input": by_pair("ig", ig_file, IG_PAIRS)
        | {"labels": table_file("feature_labels")},
    },
    "circuit_faithfulness": {
        "category": "Circuits",
        "input": by_pair("curves", circuits_file, IG_PAIRS),
        "options": {
            "recover": STUDY.circuit_sizes.recover,
            "min_effect": STUDY.circuit_sizes.min_effect,
        },
    },
    "minimal_circuit_sizes": {
        "category": "Circuits",
        "input": {"sizes": table_file("circuit_sizes")},
        "options": {"max_k": STUDY.circuits.max_k},
    },
    "identity_share": {
        "category": "Feature labels",
        "input": {"mutants": table_file("identity_share_mutants")},
    },
    "position_spread": {
        "category": "Spread over positions",
        "input": by_pair("positions", positions_file, POSITION_PAIRS)
        | by_pair("summary", position_summary_file, POSITION_PAIRS),
    },
}
if GRAPH_PAIRS:
    FIGURES["mediated_fraction"] = {
        "category": "Feature graphs",
        "subcategory": "all proteins",
        "input": by_pair("shares", graph_shares_file, GRAPH_PAIRS),
    }
for graph_protein in FIGURE_PROTEINS if GRAPH_PAIRS else []:
    FIGURES[f"feature_graph_{graph_protein}"] = {
        "category": "Feature graphs",
        "subcategory": graph_protein,
        "draw": "feature_graph",
        "input": {"aggregate": f"{OUTDIR}/graph/{graph_protein}_aggregate.csv"},
        "options": {"layers": list(STUDY.graph.layers), "protein": graph_protein},
        "caption": "feature_graph",
    }
if ABLATION_PAIRS:
    FIGURES["set_ablation"] = {
        "category": "Feature-set ablation",
        "input": {
            "table": table_file("set_ablation"),
            "task": table_file("sae_task_fidelity"),
        },
    }
if AGREEMENT_PAIRS:
    FIGURES["attribution_agreement"] = {
        "category": "Attribution",
        "input": {"mutants": table_file("attribution_agreement_mutants")},
    }
# Figures that pool every protein (one summary over all of them); the others draw a panel, line or colour
# per protein, and only FIGURE_PROTEINS' where the study has more (a figure of one protein, with a
# `protein` option, is drawn for FIGURE_PROTEINS only in the first place).
POOLED_FIGURES = {
    "sae_fidelity",
    "ig_concentration",
    "minimal_circuit_sizes",
    "circuit_faithfulness",
}
if len(FIGURE_PROTEINS) < len(PROTEINS):
    for name, spec in FIGURES.items():
        if name not in POOLED_FIGURES and "protein" not in spec.get("options", {}):
            spec["options"] = spec.get("options", {}) | {"proteins": FIGURE_PROTEINS}


def study_tables():
    """The name of every table of the study (tables/<name>.csv), in the order a reader meets them."""
    names = ["sae_quality", "sae_task_fidelity"]
    names += ["dms_correlation"] if DMS_PROTEINS else []
    names += ["control_validation", "layer_progression", "top_mutations"]
    names += ["ig_concentration", "ig_concentration_mutants", "universal_features"]
    names += [f"feature_consistency_L{layer}" for layer in IG_LAYERS]
    names += ["circuit_sizes", "feature_labels", "feature_concepts"]
    names += ["identity_share", "identity_share_mutants", "site_share"]
    names += (
        ["attribution_agreement", "attribution_agreement_mutants"]
        if AGREEMENT_PAIRS
        else []
    )
    names += ["mediated_shares"] if GRAPH_PAIRS else []
    names += ["set_ablation"] if ABLATION_PAIRS else []
    return names + ["findings"]


TABLE_NAMES = study_tables()


def findings_inputs(wildcards):
    """The set-ablation table, when the study ablates sets."""
    return {"ablation": table_file("set_ablation")} if ABLATION_PAIRS else {}


def top_features_file(protein, layer):
    return ig_file(protein, layer, "_top.csv")


def explorer_inputs(wildcards):
    """Each protein's graph folder and the feature cards (known once select_features has run)."""
    graphs = (
        {key("graphs", p): f"{OUTDIR}/graph/{p}" for p in PROTEINS}
        if GRAPH_PAIRS
        else {}
    )
    cards = [path for path in feature_cards(wildcards) if path.endswith(".png")]
    return graphs | {key("card", Path(c).stem): c for c in cards}


def explorer_layers():
    """Params: the layers each of the explorer's pages lays out."""
    return {
        "graph": sorted(STUDY.graph.layers) if GRAPH_PAIRS else [],
        "ig": IG_LAYERS,
        "positions": sorted(STUDY.positions_layers),
        "patching": sorted(STUDY.patching_layers),
    }


def report_findings():
    """The findings shown on the report's first page (rules/report/workflow.rst): read when the table
    exists, as `snakemake --report` runs after the workflow; escaped for reStructuredText, each linked to
    its figure when the report has that figure."""
    path = Path(table_file("findings"))
    if not path.is_file():
        return []
    import pandas as pd

    rows = pd.read_csv(path).fillna("")
    shown = {f"{name}.png" for name in FIGURES}

    def rst(text):
        return "".join(f"\\{c}" if c in "\\|*`_[]<>" else c for c in str(text))

    return [
        {
            "claim": rst(r.claim),
            "scope": rst(r.scope),
            "verdict": rst(r.verdict),
            "sentence": rst(r.sentence),
            "figure": r.figure if r.figure in shown else "",
        }
        for r in rows.itertuples()
    ]


# The report's description sees only the config: the findings travel there (never a rule's input or
# params, so they change no job).
config["_report"] = {
    "findings": report_findings(),
    "outdir": OUTDIR,
    "activations": STUDY.forward.activations,
}


def all_targets():
    targets = [scores_file(p) for p in PROTEINS]
    targets += [table_file("sae_quality"), table_file("sae_task_fidelity")]
    targets += [patching_file(p, layer) for p, layer in PATCH_PAIRS]
    targets += [
        table_file(name)
        for name in ("control_validation", "layer_progression", "top_mutations")
    ]
    targets += [ig_file(p, layer) for p, layer in IG_PAIRS] + [
        ig_file(p, layer, "_top.csv") for p, layer in IG_PAIRS
    ]
    targets += [
        table_file(name)
        for name in (
            "feature_labels",
            "feature_concepts",
            "identity_share",
            "identity_share_mutants",
        )
    ]
    targets += [circuits_file(p, layer) for p, layer in IG_PAIRS]
    targets.append(table_file("circuit_sizes"))
    targets += [
        table_file(name)
        for name in (
            "ig_concentration",
            "ig_concentration_mutants",
            "universal_features",
        )
    ]
    targets += [consistency_file(layer) for layer in IG_LAYERS]
    targets += [position_summary_file(p, layer) for p, layer in POSITION_PAIRS]
    if GRAPH_PAIRS:
        targets.append(table_file("mediated_shares"))
        targets += [f"{OUTDIR}/graph/{p}" for p in PROTEINS]
        targets += [f"{OUTDIR}/graph/{p}_aggregate.graphml" for p in PROTEINS]
    targets.append(table_file("site_share"))
    if ABLATION_PAIRS:
        targets.append(table_file("set_ablation"))
    if AGREEMENT_PAIRS:
        targets += [
            table_file(name)
            for name in ("attribution_agreement", "attribution_agreement_mutants")
        ]
    targets += [figure_file(name, ext) for name in FIGURES for ext in ("png", "pdf")]
    if DMS_PROTEINS:
        targets.append(table_file("dms_correlation"))
    targets += [
        table_file("findings"),
        f"{OUTDIR}/report/tables.html",
        f"{OUTDIR}/explorer/index.html",
    ]
    return targets
