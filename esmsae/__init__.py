"""Which SAE features causally carry ESM-2's mutation-effect predictions.

Modules:
    esm         fair-esm checkpoints: strict loading and the model's prefix/suffix runs
    sae         TopK sparse autoencoders (Adams et al. layout): strict loading, training
    engine      the intervention engine: splice an SAE into the residual stream and patch it
    mutations   mutant strings, ProteinGym assays, mutation selection
    scoring     WT-marginal scores and their agreement with DMS data
    quality     SAE reconstruction quality on the study's sequences
    demo        tiny checkpoints in the real on-disk formats
    config      the pipeline's configuration: schema and lookups
    io          atomic output files
"""

__version__ = "0.1.0"
