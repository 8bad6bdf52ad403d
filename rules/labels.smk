# Feature labels: what each feature does (METHOD.md "Feature characterization").


rule characterize_features:
    input:
        unpack(reference_fasta),
        checkpoint=STUDY.checkpoint,
        sae=SAE_FILE,
    output:
        activity=activity_file("{layer}"),
        examples=examples_file("{layer}"),
    log:
        f"{OUTDIR}/logs/characterize_features/L{{layer}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/characterize_features/L{{layer}}.tsv"
    threads: 2
    params:
        settings=as_params(STUDY.features.activity),
        wt_seqs=STUDY.wt_seqs,
        k=layer_k,
        forward=as_params(STUDY.forward),
    script:
        "../workflow_scripts/characterize_features.py"


checkpoint select_features:
    input:
        **by_pair("ig", ig_file, IG_PAIRS),
        **by_pair("patching", patching_file, PATCH_PAIRS),
        **by_pair("curves", circuits_file, IG_PAIRS),
    output:
        shown=SHOWN_FILE,
    log:
        f"{OUTDIR}/logs/select_features.log",
    benchmark:
        f"{OUTDIR}/benchmarks/select_features.tsv"
    localrule: True
    params:
        sizes=as_params(STUDY.circuit_sizes),
        max_cards=STUDY.features.max_cards,
        min_proteins=STUDY.min_proteins,
    script:
        "../workflow_scripts/select_features.py"


rule measure_output_effects:
    input:
        checkpoint=STUDY.checkpoint,
        sae=SAE_FILE,
        shown=SHOWN_FILE,
    output:
        effects=effects_file("{layer}"),
    log:
        f"{OUTDIR}/logs/measure_output_effects/L{{layer}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/measure_output_effects/L{{layer}}.tsv"
    threads: 2
    params:
        max_positions=STUDY.features.max_positions,
        wt_seqs=STUDY.wt_seqs,
        k=layer_k,
        forward=as_params(STUDY.forward),
    script:
        "../workflow_scripts/measure_output_effects.py"


rule download_annotations:
    output:
        gff=f"{UNIPROT_DIR}/{{accession}}.gff",
    log:
        f"{OUTDIR}/logs/download_annotations/{{accession}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/download_annotations/{{accession}}.tsv"
    localrule: True
    script:
        "../workflow_scripts/download_annotations.py"


rule tabulate_concepts:
    input:
        **by_layer("activity", activity_file, LAYERS),
        **by_protein("annotations", annotations_file, ANNOTATED_PROTEINS),
        **by_protein("scores", scores_file, CONCEPT_DMS_PROTEINS),
    output:
        table=table_file("feature_concepts"),
    log:
        f"{OUTDIR}/logs/tabulate_concepts.log",
    benchmark:
        f"{OUTDIR}/benchmarks/tabulate_concepts.tsv"
    localrule: True
    params:
        proteins=concept_proteins(),
    script:
        "../workflow_scripts/tabulate_concepts.py"


rule label_features:
    input:
        **by_layer("activity", activity_file, LAYERS),
        **by_layer("effects", effects_file, LAYERS),
        concepts=table_file("feature_concepts"),
    output:
        table=table_file("feature_labels"),
    log:
        f"{OUTDIR}/logs/label_features.log",
    benchmark:
        f"{OUTDIR}/benchmarks/label_features.tsv"
    localrule: True
    params:
        identity_f1=STUDY.features.identity_f1,
        concept_f1=STUDY.features.concept_f1,
    script:
        "../workflow_scripts/label_features.py"


rule tabulate_identity_share:
    input:
        **by_pair("ig", ig_file, IG_PAIRS),
        labels=table_file("feature_labels"),
    output:
        table=table_file("identity_share"),
        mutants=table_file("identity_share_mutants"),
    log:
        f"{OUTDIR}/logs/tabulate_identity_share.log",
    benchmark:
        f"{OUTDIR}/benchmarks/tabulate_identity_share.tsv"
    localrule: True
    script:
        "../workflow_scripts/tabulate_identity_share.py"


rule draw_feature_card:
    input:
        unpack(ig_at_layer),
        labels=table_file("feature_labels"),
        activity=activity_file("{layer}"),
        effects=effects_file("{layer}"),
        examples=examples_file("{layer}"),
    output:
        png=report(
            card_file("{layer}", "{feature}"),
            caption="report/feature_card.rst",
            category="Feature cards",
            subcategory="layer {layer}",
            labels={"layer": "{layer}", "feature": "{feature}"},
        ),
        pdf=card_file("{layer}", "{feature}", "pdf"),
    log:
        f"{OUTDIR}/logs/draw_feature_card/L{{layer}}_F{{feature}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/draw_feature_card/L{{layer}}_F{{feature}}.tsv"
    wildcard_constraints:
        feature=r"\d+",
    localrule: True
    params:
        width=STUDY.features.example_window,
    script:
        "../workflow_scripts/draw_feature_card.py"
