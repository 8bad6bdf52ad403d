"""ESM-2 in fair-esm's on-disk format: strict loading, and the model cut at a layer.

A fair-esm ESM-2 checkpoint is a pickled dict
``{"cfg": {"model": argparse.Namespace(...)}, "model": state_dict, ...}`` whose
state-dict keys carry fairseq prefixes (``encoder.sentence_encoder.`` and
``encoder.``). fair-esm's own local loader unpickles it without restriction,
which current PyTorch refuses; we load it with ``weights_only=True`` and an
allow-list of exactly the classes the format needs.

:class:`EsmLM` runs the network in two halves around a layer ℓ (METHOD.md
"Notation" and "Which forward the SAEs read"), on one of two forwards of the same
weights, chosen once for the study (``sae.activations``):

* ``interprot`` (the default): the forward the released Adams et al. SAEs were trained on
  (InterProt's ``get_layer_activations``): token embeddings unscaled, ``h_ℓ`` the output of
  block ℓ for every ℓ, including N (before the final layer norm);
* ``fair-esm``: fair-esm's ``ESM2.forward``: with ``token_dropout`` the embeddings are
  rescaled by ``(1 − 0.15·0.8) / (1 − observed mask ratio)`` (0.88 with no mask), and
  ``h_N`` is taken after the final layer norm (fair-esm's ``representations[N]``).

``hidden(tokens, ℓ)`` is ``h_ℓ`` and ``head(h, ℓ, positions)`` is ``F_ℓ`` — the rest of
the same forward (blocks ℓ+1..N, the final layer norm unless ``h_N`` already had it, the
LM head), evaluated only at the positions asked for; ``logits(tokens)`` is that forward's
own logits. Both reuse fair-esm's own modules, so ``head(hidden(t, ℓ), ℓ)`` is exactly
``logits(t)`` on either forward; the tests hold that at every layer.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import esm
import torch
from esm.model.esm2 import ESM2
from torch import Tensor

from esmsae.config.settings import ACTIVATIONS, Forward, Runtime
from esmsae.inputs.mutations import AMINO_ACIDS, MODEL_WINDOW
from esmsae.model.rows import MIN_ROWS, pad_rows
from esmsae.pipeline.errors import InputError

log = logging.getLogger(__name__)


# The only non-tensor class a fair-esm ESM-2 checkpoint pickles.
SAFE_GLOBALS = [argparse.Namespace]


# fairseq prefixes on the state-dict keys (the same rewrite fair-esm applies).
_PREFIX = re.compile(r"^(encoder\.sentence_encoder\.|encoder\.)")


# Shipped separately as `<name>-contact-regression.pt`; contacts are not used here.
_OPTIONAL_KEYS = {"contact_head.regression.weight", "contact_head.regression.bias"}


_ARCH_FIELDS = ("encoder_layers", "encoder_embed_dim", "encoder_attention_heads")


# ESM-2 was trained on crops of at most 1024 tokens (BOS and EOS included); no forward runs past them.
MAX_TOKENS = MODEL_WINDOW


def check_width(tokens: Tensor) -> Tensor:
    """`tokens`, refused when wider than the trained context: rotary embeddings would run on silently."""
    if tokens.shape[-1] > MAX_TOKENS:
        raise ValueError(f"{tokens.shape[-1]} tokens exceed the model's context of {MAX_TOKENS}: a longer sequence "
                         "is analysed on windows (METHOD.md \"Long sequences\")")
    return tokens


@dataclass(frozen=True)
class EsmArch:
    """The hyper-parameters that fix an ESM-2 network's shape."""

    num_layers: int
    embed_dim: int
    attention_heads: int
    token_dropout: bool = True


def read_checkpoint(path: str | Path, *, trust_pickle: bool = False) -> dict:
    """Unpickle a fair-esm checkpoint, allowing only what the format needs.

    With ``trust_pickle=True`` any pickled object is accepted (arbitrary code
    can run): only for files from a source the user trusts.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: ESM-2 checkpoint not found (config key esm_checkpoint)")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            data = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if found:
            raise InputError(
                f"{path}: the checkpoint pickles {found.group(1)}, which a fair-esm ESM-2 file does not "
                "need; refusing to unpickle it (set esm_trust_pickle: true only if you trust the file)"
            ) from None
        raise InputError(f"{path}: not a readable PyTorch checkpoint ({err})") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError, IndexError) as err:
        raise InputError(
            f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {err!r}"
        ) from None
    return data


def parse_checkpoint(data: object, path: str | Path) -> tuple[EsmArch, dict[str, Tensor], dict[str, str]]:
    """Check the fair-esm layout; return the architecture, the de-prefixed state dict and
    each de-prefixed key's name in the file (for messages)."""
    if not isinstance(data, dict) or "model" not in data or "cfg" not in data:
        raise InputError(f"{path}: not a fair-esm checkpoint (expected a dict with keys 'cfg' and 'model')")
    cfg = data["cfg"]
    ns = cfg.get("model") if isinstance(cfg, dict) else None
    if ns is None:
        raise InputError(f"{path}: not a fair-esm checkpoint (no cfg['model'])")
    missing = [f for f in _ARCH_FIELDS if not hasattr(ns, f)]
    if missing:
        raise InputError(f"{path}: cfg['model'] lacks {', '.join(missing)}; not an ESM-2 checkpoint")
    arch = EsmArch(
        num_layers=int(ns.encoder_layers),
        embed_dim=int(ns.encoder_embed_dim),
        attention_heads=int(ns.encoder_attention_heads),
        token_dropout=bool(getattr(ns, "token_dropout", True)),
    )
    state = data["model"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise InputError(f"{path}: checkpoint['model'] is not a dict of tensors")
    names = {_PREFIX.sub("", k): k for k in state}
    return arch, {key: state[name] for key, name in names.items()}, names


def _file_key(key: str) -> str:
    """Where fair-esm writes a module key in an ESM-2 checkpoint file."""
    return ("encoder." if key.startswith("lm_head.") else "encoder.sentence_encoder.") + key


def load_esm(path: str | Path, *, trust_pickle: bool = False) -> ESM2:
    """Load a fair-esm ESM-2 checkpoint strictly: every tensor present, none extra, shapes exact."""
    arch, state, names = parse_checkpoint(read_checkpoint(path, trust_pickle=trust_pickle), path)
    model = ESM2(
        num_layers=arch.num_layers,
        embed_dim=arch.embed_dim,
        attention_heads=arch.attention_heads,
        alphabet="ESM-1b",
        token_dropout=arch.token_dropout,
    )
    expected = model.state_dict()
    in_file = {key: _file_key(key) for key in expected} | names
    missing = sorted(set(expected) - set(state) - _OPTIONAL_KEYS)
    if missing:
        raise InputError(f"{path}: missing tensor(s) {_listing([in_file[k] for k in missing])}")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise InputError(f"{path}: unexpected tensor(s) {_listing([in_file[k] for k in extra])}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise InputError(
                f"{path}: tensor {in_file[key]} has shape {tuple(value.shape)}, expected "
                f"{tuple(expected[key].shape)} for {arch}"
            )
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise InputError(f"{path}: tensor {in_file[key]} contains NaN or Inf")
    result = model.load_state_dict(state, strict=False)
    assert set(result.missing_keys) <= _OPTIONAL_KEYS and not result.unexpected_keys
    return model.eval().requires_grad_(False)


def save_checkpoint(model: ESM2, path: str | Path) -> None:
    """Write `model` as fair-esm writes ESM-2: prefixed keys, cfg['model'] a Namespace.

    The contact-regression weights are left out, as in the released files.
    """
    from esmsae.pipeline.io import atomic_path

    cfg = argparse.Namespace(
        arch=f"esm2_t{model.num_layers}",
        encoder_layers=model.num_layers,
        encoder_embed_dim=model.embed_dim,
        encoder_ffn_embed_dim=4 * model.embed_dim,
        encoder_attention_heads=model.attention_heads,
        token_dropout=model.token_dropout,
    )
    state = {}
    for key, value in model.state_dict().items():
        if key in _OPTIONAL_KEYS:
            continue
        prefix = "encoder." if key.startswith("lm_head.") else "encoder.sentence_encoder."
        state[prefix + key] = value.detach().clone()
    with atomic_path(path) as tmp:
        torch.save({"cfg": {"model": cfg}, "model": state}, tmp)


def _listing(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


PRECISIONS = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16}


def set_precision(model: ESM2, precision: str) -> ESM2:
    """Cast the model for a precision; tf32 only changes how CUDA multiplies fp32 matrices."""
    if precision not in PRECISIONS:
        raise InputError(f"config key precision: {precision!r} is not one of {sorted(PRECISIONS)}")
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    return model.to(PRECISIONS[precision])


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when present; asking for `cuda` without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("config key device is 'cuda' but no CUDA device is available")
    return torch.device(name)


class EsmLM:
    """An ESM-2 model cut at a layer, on one forward: ``hidden`` runs up to it, ``head`` runs the rest.

    `activations` names the forward (``ACTIVATIONS``; no default, so that no caller runs
    the wrong one silently). Sequences in one call must have the same length (no padding),
    which holds for a WT sequence and its substitution mutants.
    """

    def __init__(self, model: ESM2, device: torch.device | str = "cpu", *, activations: str):
        if activations not in ACTIVATIONS:
            raise InputError(f"config key sae.activations: {activations!r} is not one of {ACTIVATIONS}")
        self.activations = activations
        self.model = model.eval().requires_grad_(False).to(device)
        self.device = torch.device(device)
        self.alphabet: esm.data.Alphabet = model.alphabet
        self.num_layers: int = model.num_layers
        self.embed_dim: int = model.embed_dim
        self.dtype: torch.dtype = model.embed_tokens.weight.dtype

    # -- tokens ---------------------------------------------------------------
    def token_index(self, residue: str) -> int:
        return self.alphabet.get_idx(residue)

    def tokenize(self, seqs: list[str]) -> Tensor:
        """``[BOS] s [EOS]`` token ids, shape (B, L+2); residue i (1-based) is token i."""
        if not seqs or len({len(s) for s in seqs}) != 1:
            raise ValueError("tokenize needs a non-empty list of equal-length sequences")
        for s in seqs:
            bad = set(s) - set(AMINO_ACIDS)
            if bad:
                raise InputError(f"sequence contains non-canonical residue(s) {sorted(bad)}: {s}")
        a = self.alphabet
        rows = [[a.cls_idx, *(a.get_idx(c) for c in s), a.eos_idx] for s in seqs]
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def tokenize_padded(self, seqs: list[str]) -> Tensor:
        """``[BOS] s [EOS]`` token ids of sequences of any lengths, padded at the end, (B, max L+2)."""
        if not seqs:
            raise ValueError("tokenize_padded needs a non-empty list of sequences")
        a = self.alphabet
        width = max(len(s) for s in seqs) + 2
        rows = []
        for s in seqs:
            bad = set(s) - set(AMINO_ACIDS)
            if bad:
                raise InputError(f"sequence contains non-canonical residue(s) {sorted(bad)}: {s}")
            row = [a.cls_idx, *(a.get_idx(c) for c in s), a.eos_idx]
            rows.append(row + [a.padding_idx] * (width - len(row)))
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def window_tokens(self, seqs: list[str], window: tuple[int, int] | None) -> Tensor:
        """``[BOS] s [EOS]`` of equal-length sequences, cut to the token slice ``window = (start, end)`` (the
        whole when None): a slice inside a long sequence has no BOS or EOS (METHOD.md "Long sequences")."""
        tokens = self.tokenize(seqs)
        if window is None:
            return tokens
        start, end = window
        if not 0 <= start < end <= tokens.shape[1] or end - start > MAX_TOKENS:
            raise ValueError(f"window {window} does not fit {tokens.shape[1]} tokens and the model's {MAX_TOKENS}")
        return tokens[:, start:end]

    def check_sequence(self, seq: str, where: str) -> str:
        """A WT sequence the model can read: canonical residues, within ESM-2's context."""
        if len(seq) + 2 > MAX_TOKENS:
            raise InputError(f"{where}: sequence of {len(seq)} residues is longer than ESM-2's context "
                             f"({MAX_TOKENS - 2} residues plus BOS/EOS); it is read on windows "
                             "(METHOD.md \"Long sequences\")")
        bad = sorted(set(seq) - set(AMINO_ACIDS))
        if bad:
            raise InputError(f"{where}: non-canonical residue(s) {bad}")
        return seq

    def check_layer(self, layer: int, where: str = "layer") -> int:
        if not 1 <= int(layer) <= self.num_layers:
            raise InputError(f"{where}: layer {layer} is outside 1..{self.num_layers} for this model")
        return int(layer)

    # -- the two halves ---------------------------------------------------------
    def on(self, activations: str) -> EsmLM:
        """The same weights on another forward (no copy of the model)."""
        other = copy.copy(self)
        if activations not in ACTIVATIONS:
            raise InputError(f"config key sae.activations: {activations!r} is not one of {ACTIVATIONS}")
        other.activations = activations
        return other

    @property
    def final_norm_in_hidden(self) -> bool:
        """Whether ``h_N`` is taken after the final layer norm (fair-esm) or before it (interprot)."""
        return self.activations == "fair-esm"

    def embed(self, tokens: Tensor) -> Tensor:
        """The input to block 1, (B, T, E), as this forward computes it (padding zeroed).

        ``fair-esm``: exactly fair-esm's forward, with its token-dropout rescaling; ``interprot``:
        the embeddings unscaled (<mask> tokens keep their own embedding), as InterProt computes them.
        """
        m = self.model
        padding = tokens.eq(m.padding_idx)
        x = m.embed_scale * m.embed_tokens(tokens)
        if m.token_dropout and self.activations == "fair-esm":
            # No <mask> tokens here, but follow fair-esm's rescaling literally.
            x = x.masked_fill((tokens == m.mask_idx).unsqueeze(-1), 0.0)
            mask_ratio_train = 0.15 * 0.8
            src_lengths = (~padding).sum(-1)
            mask_ratio_observed = (tokens == m.mask_idx).sum(-1).to(x.dtype) / src_lengths
            x = x * (1 - mask_ratio_train) / (1 - mask_ratio_observed)[:, None, None]
        if bool(padding.any()):
            x = x * (1 - padding.unsqueeze(-1).type_as(x))
        return x

    def hidden(self, tokens: Tensor, layer: int) -> Tensor:
        """``h_ℓ`` of this forward, (B, T, E): the output of block ℓ (fair-esm: after the final norm at ℓ = N)."""
        return self.hiddens(tokens, [layer])[layer]

    def hiddens(self, tokens: Tensor, layers: list[int]) -> dict[int, Tensor]:
        """``h_ℓ`` for several layers from one pass (running only as far as the deepest).

        A batch may be padded (:meth:`tokenize_padded`): as in fair-esm's forward, padded
        positions are zeroed and masked out of attention; their outputs are meaningless.
        """
        wanted = {self.check_layer(layer) for layer in layers}
        check_width(tokens)
        out: dict[int, Tensor] = {}
        padding = tokens.eq(self.model.padding_idx)
        mask = padding if bool(padding.any()) else None
        x = self.embed(tokens).transpose(0, 1)  # blocks work on (T, B, E)
        for index, block in enumerate(self.model.layers[: max(wanted)], start=1):
            x, _ = block(x, self_attn_padding_mask=mask, need_head_weights=False)
            if index in wanted:
                out[index] = x.transpose(0, 1)
        if self.num_layers in wanted and self.final_norm_in_hidden:
            out[self.num_layers] = self.model.emb_layer_norm_after(x).transpose(0, 1)
        return out

    def between(self, h: Tensor, start: int, end: int) -> Tensor:
        """``h_end`` from ``h_start`` (B, T, E): blocks start+1..end (and, fair-esm, the final norm when end = N)."""
        x = h.transpose(0, 1)
        for block in self.model.layers[start:end]:
            x, _ = block(x, self_attn_padding_mask=None, need_head_weights=False)
        if end == self.num_layers and start < end and self.final_norm_in_hidden:
            x = self.model.emb_layer_norm_after(x)
        return x.transpose(0, 1)

    def head(self, h: Tensor, layer: int, positions: Tensor | None = None) -> Tensor:
        """``F_ℓ(h)``: logits (B, P, V) at token `positions` (all positions when None).

        At a few positions the head's matmuls would see only B·P rows, so the batch
        is padded with zero rows (see :mod:`esmsae.model.rows`) and cut back afterwards:
        a row's logits do not depend on how many rows share its pass. The blocks
        already see B·T rows, enough for any batch.
        """
        x = h.transpose(0, 1)  # (B, T, E) -> (T, B, E)
        if layer < self.num_layers:
            for block in self.model.layers[layer:]:
                x, _ = block(x, self_attn_padding_mask=None, need_head_weights=False)
        batch = x.shape[1]
        if positions is not None:
            x = x[positions]  # everything after the last block is position-wise
            x = pad_rows(x, 1, -(-MIN_ROWS // x.shape[0]))
        if layer < self.num_layers or not self.final_norm_in_hidden:
            x = self.model.emb_layer_norm_after(x)
        return self.model.lm_head(x)[:, :batch].transpose(0, 1)

    def logits(self, tokens: Tensor) -> Tensor:
        """This forward's own logits, (B, T, V): fair-esm's ``logits``, or InterProt's forward run whole."""
        if self.activations == "fair-esm":
            return self.model(check_width(tokens))["logits"]
        return self.head(self.hidden(tokens, self.num_layers), self.num_layers)

    def num_parameters(self) -> int:
        return sum(math.prod(p.shape) for p in self.model.parameters())


def open_model(checkpoint: str | Path, forward: Forward, runtime: Runtime) -> EsmLM:
    """The ESM-2 checkpoint at the forward's precision and on its activations, on the runtime's device."""
    device = resolve_device(runtime.device)
    model = load_esm(checkpoint, trust_pickle=runtime.trust_pickle)
    lm = EsmLM(set_precision(model, forward.precision), device, activations=forward.activations)
    log.info("loaded %s: %d layers, width %d, %.1fM parameters, on %s, %s forward", checkpoint,
             lm.num_layers, lm.embed_dim, lm.num_parameters() / 1e6, device, lm.activations)
    return lm
