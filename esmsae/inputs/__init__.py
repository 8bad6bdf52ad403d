"""What the study reads from disk: mutant strings and ProteinGym assays, the reference FASTA."""
