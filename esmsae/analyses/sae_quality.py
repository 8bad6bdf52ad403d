"""Rule measure_sae_quality: how faithful one layer's SAE is — to the model and to the assay — on both forwards.

METHOD.md "SAE fidelity". On the reference positions (residues 1..L of the WT sequences and
the selected mutants), under **both** forwards (``interprot`` and ``fair-esm``), so that an
SAE read on a forward it was not trained on shows:

* reconstruction at the configured ``k`` and beside it at ``k/2`` and ``2k``: FVE
  ``1 − Σ‖x − dec(z)‖² / Σ‖x − x̄‖²``, mean L0, dead fraction;
* the reconstruction spliced in at every residue position (``h_p → dec(z_p; μ_p, σ_p)``, the
  error removed; BOS and EOS unchanged): on the unmasked sequences, the mean over positions of
  ``KL(p_clean ‖ p_recon)`` over the 20 amino acids; on the same sequences with 15 % of residues
  masked (a fixed seed), the masked-LM cross-entropy clean, reconstructed and with ``h`` zeroed at
  every residue position, and the loss recovered ``(CE_zero − CE_recon) / (CE_zero − CE_clean)``;
* task fidelity: every scored single substitution's WT-marginal score from the clean and from
  the reconstruction-spliced WT forward (``sae_quality/L{layer}_scores.csv``; the table rule
  correlates them with each other and with DMS).

An SAE run at the wrong ``k`` shows as a large gain at another k (:func:`wrong_k`), and is
logged as a warning naming its file.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from esmsae.analyses.scoring import read_scores, selected_mutants, wt_marginal
from esmsae.config.settings import ACTIVATIONS, Forward, Runtime
from esmsae.inputs.mutations import AMINO_ACIDS, parse_mutant, within_context
from esmsae.model.esm import EsmLM, open_model
from esmsae.model.sae import TopKSAE, open_sae
from esmsae.pipeline.columns import TABLES
from esmsae.pipeline.io import sha256_of, write_csv

log = logging.getLogger(__name__)

MASK_SHARE, MASK_SEED = 0.15, 0
# Sequences per pass (all of one length).
CHUNK = 16
# An SAE whose unexplained variance at another k is below this share of its unexplained variance at
# the configured k was most likely trained with that other k (see wrong_k).
WRONG_K_ERROR_RATIO = 0.5


def evaluated_ks(k: int, d_sae: int) -> dict[str, int]:
    """The k values the reconstruction is measured at: the configured one, half of it and twice it."""
    return {"half_k": max(1, k // 2), "k": k, "double_k": min(2 * k, d_sae - 1)}


def wrong_k(fve: Mapping[str, float]) -> str | None:
    """Which other k (``half_k`` or ``double_k``) explains the activations far better than the configured one.

    A TopK SAE run at its trained k is at or near its best: at 2k its decoder gets latents it was
    never trained to combine and gains little (on the demo model, 2k cuts the unexplained
    variance by at most ~10 %), and at k/2 it loses much. Run at half the k it was trained with,
    the same file leaves about 4x the error of its trained k. So an alternative whose unexplained
    variance ``1 − FVE`` is below ``WRONG_K_ERROR_RATIO`` (one half) of the configured k's flags
    the file. (An SAE configured at twice its trained k is not caught this way: its FVE barely moves.)
    """
    error = 1 - fve["k"]
    for name in ("double_k", "half_k"):
        if name in fve and np.isfinite(fve[name]) and 1 - fve[name] < WRONG_K_ERROR_RATIO * error:
            return name
    return None


def kl_20(clean: Tensor, recon: Tensor, aa_ids: Tensor) -> Tensor:
    """``KL(p_clean ‖ p_recon)`` per position, p the softmax of the 20 amino acids' logits; (..., V) -> (...)."""
    p = torch.log_softmax(clean[..., aa_ids].double(), -1)
    q = torch.log_softmax(recon[..., aa_ids].double(), -1)
    return (p.exp() * (p - q)).sum(-1)


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """``−log softmax(logits)[target]`` per position over the whole vocabulary; (..., V), (...) -> (...)."""
    logp = torch.log_softmax(logits.double(), -1)
    return -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def loss_recovered(ce_clean: float, ce_recon: float, ce_zero: float) -> float:
    """SAELens' ``ce_loss_score``: ``(CE_zero − CE_recon) / (CE_zero − CE_clean)``; NaN when the two ends agree.

    1 when the reconstruction loses nothing, 0 when it is as bad as zeroing the stream.
    """
    span = ce_zero - ce_clean
    return float((ce_zero - ce_recon) / span) if span != 0 else float("nan")


def masked(lm: EsmLM, tokens: Tensor, seed: int = MASK_SEED) -> tuple[Tensor, Tensor]:
    """`tokens` (B, T) with ``round(MASK_SHARE·L)`` (at least 1) residues of each row replaced by <mask>,
    at positions drawn with a fixed seed per row; and the mask (B, T)."""
    rng = np.random.default_rng(seed)
    out, where = tokens.clone(), torch.zeros_like(tokens, dtype=torch.bool)
    length = tokens.shape[1] - 2
    n = max(1, int(round(MASK_SHARE * length)))
    for row in range(tokens.shape[0]):
        positions = torch.as_tensor(rng.choice(length, size=n, replace=False) + 1, device=tokens.device)
        where[row, positions] = True
    out[where] = lm.alphabet.mask_idx
    return out, where


def spliced(lm: EsmLM, sae: TopKSAE, layer: int, h: Tensor, how: str) -> Tensor:
    """``h_ℓ`` (B, T, d) with every residue position (not BOS/EOS) reconstructed by the SAE (``recon``:
    ``dec(z_p; μ_p, σ_p)``, the error removed) or zeroed (``zero``)."""
    out = h.clone()
    x = h[:, 1:-1]
    if how == "recon":
        _, z, mu, sigma = sae.encode(x)
        out[:, 1:-1] = sae.decode(z, mu, sigma)
    elif how == "zero":
        out[:, 1:-1] = 0.0
    else:
        raise ValueError(f"how must be 'recon' or 'zero', got {how!r}")
    return out


class Sums:
    """Running sums over positions, so that memory does not grow with the number of sequences."""

    def __init__(self, d: int, ks: Mapping[str, int], d_sae: int):
        self.n = 0
        self.sum_x = torch.zeros(d, dtype=torch.float64)
        self.sum_sq = torch.tensor(0.0, dtype=torch.float64)
        self.residual = dict.fromkeys(ks, 0.0)
        self.active = dict.fromkeys(ks, 0.0)
        self.alive = {name: torch.zeros(d_sae, dtype=torch.bool) for name in ks}
        self.kl = self.n_kl = 0.0
        self.ce = {"clean": 0.0, "recon": 0.0, "zero": 0.0}
        self.n_masked = 0

    def fve(self, name: str) -> float:
        total = float(self.sum_sq) - float(self.sum_x.pow(2).sum()) / self.n
        return 1 - self.residual[name] / total if total > 0 else float("nan")


def layer_fidelity(lm: EsmLM, sae: TopKSAE, layer: int, seqs: list[str]) -> dict:
    """Reconstruction and splice statistics of `sae` at `layer` on `seqs`, on `lm`'s forward (one row)."""
    ks = evaluated_ks(sae.k, sae.info.d_sae)
    at_k = {name: sae.at_k(k) for name, k in ks.items()}
    sums = Sums(lm.embed_dim, ks, sae.info.d_sae)
    aa_ids = torch.tensor([lm.token_index(a) for a in AMINO_ACIDS], device=lm.device)
    by_length: dict[int, list[str]] = {}
    for s in seqs:
        by_length.setdefault(len(s), []).append(s)
    with torch.no_grad():
        for length in sorted(by_length):
            group = by_length[length]
            for start in range(0, len(group), CHUNK):
                tokens = lm.tokenize(group[start:start + CHUNK])
                h = lm.hidden(tokens, layer)
                x = h[:, 1:-1].reshape(-1, h.shape[-1]).double()
                sums.n += x.shape[0]
                sums.sum_x += x.sum(0).cpu()
                sums.sum_sq += x.pow(2).sum().cpu()
                for name, one in at_k.items():
                    _, z, mu, sigma = one.encode(h[:, 1:-1])
                    sums.residual[name] += float((h[:, 1:-1] - one.decode(z, mu, sigma)).double().pow(2).sum())
                    active = z > 0
                    sums.active[name] += float(active.sum())
                    sums.alive[name] |= active.reshape(-1, active.shape[-1]).any(0).cpu()
                clean = lm.head(h, layer)
                recon = lm.head(spliced(lm, sae, layer, h, "recon"), layer)
                kl = kl_20(clean[:, 1:-1], recon[:, 1:-1], aa_ids)
                sums.kl += float(kl.sum())
                sums.n_kl += kl.numel()
                masked_tokens, where = masked(lm, tokens, seed=MASK_SEED + start + 7919 * length)
                hm = lm.hidden(masked_tokens, layer)
                for how, hh in (("clean", hm), ("recon", spliced(lm, sae, layer, hm, "recon")),
                                ("zero", spliced(lm, sae, layer, hm, "zero"))):
                    ce = cross_entropy(lm.head(hh, layer)[where], tokens[where])
                    sums.ce[how] += float(ce.sum())
                sums.n_masked += int(where.sum())
    row = {"layer": layer, "activations": lm.activations, "k": sae.k, "d_sae": sae.info.d_sae,
           "half_k": ks["half_k"], "double_k": ks["double_k"]}
    for name in ks:
        suffix = "" if name == "k" else f"_{name}"
        row[f"fve{suffix}"] = sums.fve(name)
        row[f"mean_l0{suffix}"] = sums.active[name] / sums.n
        row[f"dead_fraction{suffix}"] = float((~sums.alive[name]).double().mean())
    ce = {how: value / sums.n_masked for how, value in sums.ce.items()}
    row |= {"kl": sums.kl / sums.n_kl, "ce_clean": ce["clean"], "ce_recon": ce["recon"], "ce_zero": ce["zero"],
            "loss_recovered": loss_recovered(ce["clean"], ce["recon"], ce["zero"]),
            "n_positions": sums.n, "n_masked": sums.n_masked}
    return row


def task_scores(lm: EsmLM, sae: TopKSAE, layer: int, protein: str, wt_seq: str, scores: pd.DataFrame) -> pd.DataFrame:
    """Every scored single substitution's WT-marginal score from the clean and the reconstruction-spliced
    WT forward (both on `lm`'s forward), beside its DMS score."""
    singles = scores[~scores["mutant"].astype(str).str.contains(":")]
    mutants = [parse_mutant(name, wt_seq, where=f"scores of {protein}") for name in singles["mutant"]]
    with torch.no_grad():
        tokens = lm.tokenize([wt_seq])
        h = lm.hidden(tokens, layer)
        clean = torch.log_softmax(lm.head(h, layer)[0].float(), -1)
        recon = torch.log_softmax(lm.head(spliced(lm, sae, layer, h, "recon"), layer)[0].float(), -1)
    return pd.DataFrame({"protein": protein, "mutant": singles["mutant"].to_numpy(), "activations": lm.activations,
                         "clean": wt_marginal(lm, clean, mutants), "recon": wt_marginal(lm, recon, mutants),
                         "dms_score": singles["dms_score"].to_numpy(dtype=np.float64), "layer": layer, "k": sae.k,
                         "d_sae": sae.info.d_sae}, columns=TABLES["sae_scores"])


def measure_sae_quality(wt_seqs: dict[str, str], layer: int, k: int, forward: Forward, runtime: Runtime,
                        checkpoint: str | Path, sae_path: str | Path, scores: Mapping[str, str | Path],
                        out: Mapping[str, Path]) -> None:
    """Rule measure_sae_quality: one layer's SAE on both forwards (the study's first); reconstruction,
    splice and task-fidelity statistics, the file's size and sha256, and a warning at the wrong k."""
    lm = open_model(checkpoint, forward, runtime)
    sae = open_sae(sae_path, k, lm, layer)
    size, digest = Path(sae_path).stat().st_size, sha256_of(sae_path)
    wt_seqs = within_context(wt_seqs, f"SAE fidelity at layer {layer}")
    seqs = []
    for protein, wt in wt_seqs.items():
        seqs += [wt] + [m.apply(wt) for m in selected_mutants(wt, scores[protein])]
    rows, parts = [], []
    for activations in [forward.activations] + [a for a in ACTIVATIONS if a != forward.activations]:
        on = lm.on(activations)
        row = layer_fidelity(on, sae, layer, seqs)
        flagged = wrong_k({"k": row["fve"], "half_k": row["fve_half_k"], "double_k": row["fve_double_k"]})
        if flagged and activations == forward.activations:
            log.warning("%s: at layer %d the SAE explains the activations far better at %s = %d (FVE %.3f) than at "
                        "the configured k = %d (FVE %.3f): was it trained with another k? (config key sae.k)",
                        sae_path, layer, flagged, row[flagged], row[f"fve_{flagged}"], k, row["fve"])
        rows.append(row | {"study_forward": activations == forward.activations, "wrong_k": flagged or "",
                           "sae_file": str(sae_path), "sae_bytes": size, "sae_sha256": digest})
        log.info("layer %d, %s forward: FVE %.4f (k/2 %.4f, 2k %.4f), KL %.4g, loss recovered %.4f over %d positions",
                 layer, activations, row["fve"], row["fve_half_k"], row["fve_double_k"], row["kl"],
                 row["loss_recovered"], row["n_positions"])
        for protein, wt in wt_seqs.items():
            parts.append(task_scores(on, sae, layer, protein, wt, read_scores(scores[protein])))
    write_csv(pd.DataFrame(rows, columns=TABLES["sae_fidelity"]), out["quality"])
    write_csv(pd.concat(parts, ignore_index=True), out["scores"])
