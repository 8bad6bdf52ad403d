"""Two SAEs spliced into one run, for the cross-layer feature graph (METHOD.md "Cross-layer feature graph").

Interventions at layer ℓ1 (as :class:`~esmsae.model.splice.Splice` makes them), blocks ℓ1+1..ℓ2,
then the ℓ2 SAE reads — or holds at their WT values — the latents at the sites.
"""

from __future__ import annotations

import torch
from torch import Tensor

from esmsae.model.code import SiteCode, read_code
from esmsae.model.sae import TopKSAE
from esmsae.model.splice import Effects, ScoreSpec, Splice, score
from esmsae.model.view import MutantView


class LayerPair:
    """Two SAEs spliced into one run: interventions at layer ℓ1, latents read (and held) at ℓ2 > ℓ1.

    METHOD.md "Cross-layer feature graph". A row patches the ℓ1 sites by a residual change (as
    :class:`Splice` does), runs blocks ℓ1+1..ℓ2, encodes the sites with the ℓ2 SAE (the vectors'
    own statistics ``μ^a, σ^a``), optionally holds chosen ℓ2 features at their WT latents
    (``h'' = h^a − (z_b^a − z_b^wt) · w_dec_b · σ^a``), and runs the rest of the network. It returns
    the score and ``w = z^a − z^wt`` at ℓ2. With nothing changed the run is the model's own, bit for
    bit on CPU, and holding nothing changes nothing: the ℓ2 vectors go on exactly as they came.
    Batches go through the ℓ1 splice's batching policy.
    """

    def __init__(self, upper: Splice, sae2: TopKSAE, layer2: int):
        if layer2 <= upper.layer:
            raise ValueError(f"layer {layer2} is not after layer {upper.layer}")
        lm = upper.lm
        self.upper, self.lm, self.layer2 = upper, lm, lm.check_layer(layer2)
        if sae2.info.d_in != lm.embed_dim:
            raise ValueError(f"SAE width {sae2.info.d_in} != model width {lm.embed_dim}")
        self.sae2 = sae2.to(device=lm.device, dtype=lm.dtype)
        with torch.no_grad():
            self.h2 = lm.between(upper.h, upper.layer, layer2)  # the WT run at ℓ2

    def code2(self, positions) -> SiteCode:
        """The WT latents at ℓ2 at `positions` (token indices), with their own statistics."""
        positions = torch.as_tensor(positions, dtype=torch.long, device=self.lm.device)
        return read_code(self.sae2, positions, self.h2[0, positions])

    def run(self, positions: Tensor, delta: Tensor, hold: Tensor, spec: ScoreSpec, wt2: SiteCode) -> Tensor:
        """For B rows, change `delta` (B, S, d) at ℓ1 and hold mask `hold` (B, d_sae2): (B, 1 + S·d_sae2),
        the score then ``w = z^a − z^wt`` at the ℓ2 sites, flattened."""
        batch = delta.shape[0]
        h = self.upper.h.expand(batch, -1, -1).clone()
        h[:, positions] = h[:, positions] + delta
        h2 = self.lm.between(h, self.upper.layer, self.layer2)
        x = h2[:, positions]
        _, z, _, sigma = self.sae2.encode(x)
        w = z - wt2.z
        held = w * hold[:, None, :]
        if bool(held.ne(0).any()):
            h2 = h2.clone()
            h2[:, positions] = x - self.sae2.decode_delta(held, sigma)
        logits = self.lm.head(h2, self.layer2, spec.positions)
        logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
        scores = score(logp, spec)
        return torch.cat([scores.unsqueeze(1), w.flatten(1).to(scores.dtype)], 1)

    def links(self, view: MutantView, values: Tensor, hold: Tensor) -> tuple[Effects, Tensor]:
        """B interventions at ℓ1 (`values` (B, S, d_sae1) in the view's space) with ℓ2 holds `hold`
        (B, d_sae2 bool): the effects on the score, and ``w`` (B, S, d_sae2) at ℓ2."""
        upper, wt = self.upper, view.wt
        deltas = upper.delta(wt, view.latents(values))
        rows = torch.cat([deltas.flatten(1), hold.to(deltas.dtype)], 1)
        width = deltas.shape[1] * deltas.shape[2]
        wt2 = self.code2(wt.positions)

        def readout(batch: Tensor) -> Tensor:
            return self.run(wt.positions, batch[:, :width].reshape(-1, *deltas.shape[1:]), batch[:, width:],
                            view.spec, wt2)

        out, base = upper.passes.batched(rows.unsqueeze(1), lambda b: readout(b[:, 0]))
        effects = Effects(scores=out[:, 0], baseline=base[:, 0], effects=out[:, 0] - base[:, 0])
        return effects, out[:, 1:].reshape(len(rows), deltas.shape[1], -1)
