"""Which SAE features causally carry ESM-2's mutation-effect predictions.

The package follows the pipeline's stages; a module imports only from its own stage or an
earlier one (``tests/test_layout.py`` holds that):

    pipeline   plumbing every stage uses: errors, atomic files, logs, resume, keyed inputs, columns
    inputs     what the study reads: mutant strings and assays, reference FASTA
    config     the config's schema and its typed settings
    model      ESM-2 and the SAEs: loading, the spliced model (the engine), the demo checkpoints
    analyses   what runs the model: scoring, SAE quality, and one module per analysis
    tables     the tables made from the analyses' outputs (light: no torch)
    figures    the figures and feature cards (light: no torch)

Within ``analyses``, ``tables`` and ``figures`` a module is named after its analysis family
(``patching``, ``ig``, ``circuits``, ``agreement``, ``positions``, ``graph``, ...), as is its
``rules/*.smk`` file; each rule's entry point lives in the module of the stage it runs.
"""

__version__ = "0.1.0"
