"""TopK sparse autoencoders in the Adams et al. (InterProt) layout.

File: a safetensors file with exactly ``w_enc [d, d_sae]``, ``w_dec [d_sae, d]``,
``b_enc [d_sae]``, ``b_pre [d]`` and optionally the training buffer
``stats_last_nonzero [d_sae]`` (ignored). ``k`` is not in the file: it comes from
the config and is recorded with every output.

For a residual vector x (METHOD.md "SAE"):
``μ = mean(x)``, ``σ = std(x)`` (unbiased), ``x̂ = (x − μ)/(σ + 1e-5)``,
``pre = (x̂ − b_pre) w_enc + b_enc``, ``z = TopK_k(pre)`` (k largest, ReLU'd),
``dec(z; μ, σ) = (z w_dec + b_pre) σ + μ``, error ``e = x − dec(z; μ, σ)``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from esmsae.model.esm import EsmLM
from esmsae.model.rows import matmul
from esmsae.pipeline.errors import InputError
from esmsae.pipeline.io import atomic_path, sha256_of

log = logging.getLogger(__name__)


EPS = 1e-5


REQUIRED_KEYS = ("w_enc", "w_dec", "b_enc", "b_pre")


OPTIONAL_KEYS = ("stats_last_nonzero",)


@dataclass(frozen=True)
class SAEInfo:
    """The small frozen description that travels with an SAE's weights."""

    d_in: int
    d_sae: int
    k: int
    layer: int | None = None
    source: str = ""


class TopKSAE(nn.Module):
    """A frozen TopK SAE. All methods work on (..., d) tensors, each vector as it would be in a large batch."""

    def __init__(self, w_enc: Tensor, w_dec: Tensor, b_enc: Tensor, b_pre: Tensor, k: int,
                 *, layer: int | None = None, source: str = ""):
        super().__init__()
        d_in, d_sae = w_enc.shape
        if not 1 <= k < d_sae:
            raise InputError(f"{source or 'SAE'}: k={k} must be in 1..{d_sae - 1} (d_sae={d_sae}); config key sae.k")
        self.w_enc = nn.Parameter(w_enc, requires_grad=False)
        self.w_dec = nn.Parameter(w_dec, requires_grad=False)
        self.b_enc = nn.Parameter(b_enc, requires_grad=False)
        self.b_pre = nn.Parameter(b_pre, requires_grad=False)
        self.info = SAEInfo(d_in=d_in, d_sae=d_sae, k=int(k), layer=layer, source=source)

    @property
    def k(self) -> int:
        return self.info.k

    @staticmethod
    def stats(x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-vector mean and unbiased std, each (..., 1)."""
        return x.mean(-1, keepdim=True), x.std(-1, keepdim=True)

    def pre(self, x: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
        """Pre-activations of `x` normalized with the given statistics."""
        x_hat = (x - mu) / (sigma + EPS)
        return matmul(x_hat - self.b_pre, self.w_enc) + self.b_enc

    def topk(self, pre: Tensor) -> Tensor:
        """Keep the k largest pre-activations, ReLU them, zero the rest."""
        top = torch.topk(pre, self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(pre, z, μ, σ)`` of `x` with its own statistics."""
        mu, sigma = self.stats(x)
        pre = self.pre(x, mu, sigma)
        return pre, self.topk(pre), mu, sigma

    def decode(self, z: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
        return (matmul(z, self.w_dec) + self.b_pre) * sigma + mu

    def at_k(self, k: int) -> TopKSAE:
        """The same weights run with another TopK k (no copy of the weights)."""
        if not 1 <= k < self.info.d_sae:
            raise ValueError(f"k={k} must be in 1..{self.info.d_sae - 1}")
        other = copy.copy(self)
        other.info = dataclasses.replace(self.info, k=int(k))
        return other

    def decode_delta(self, dz: Tensor, sigma: Tensor) -> Tensor:
        """``dec(z + dz) − dec(z)``: the decoder is affine, so this is exact and is 0 when dz is 0."""
        return matmul(dz, self.w_dec) * sigma


def load_sae(path: str | Path, k: int, *, layer: int | None = None, d_in: int | None = None) -> TopKSAE:
    """Load an SAE strictly: the four tensors present, nothing unknown, shapes consistent, values finite."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: SAE file not found" + (f" for layer {layer}" if layer is not None else "") +
                         " (config keys sae.dir and sae.pattern)")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            keys = set(f.keys())
            missing = [key for key in REQUIRED_KEYS if key not in keys]
            if missing:
                raise InputError(f"{path}: missing SAE tensor(s) {', '.join(missing)}")
            extra = sorted(keys - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
            if extra:
                raise InputError(f"{path}: unexpected SAE tensor(s) {', '.join(extra)}")
            tensors = {key: f.get_tensor(key) for key in REQUIRED_KEYS}
    except SafetensorError as err:
        raise InputError(f"{path}: not a readable safetensors file (truncated or corrupt?): {err}") from None
    w_enc, w_dec, b_enc, b_pre = (tensors[key] for key in REQUIRED_KEYS)
    if w_enc.ndim != 2:
        raise InputError(f"{path}: w_enc has shape {tuple(w_enc.shape)}, expected [d, d_sae]")
    d, d_sae = w_enc.shape
    expected = {"w_enc": (d, d_sae), "w_dec": (d_sae, d), "b_enc": (d_sae,), "b_pre": (d,)}
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise InputError(f"{path}: {key} has shape {tuple(tensors[key].shape)}, expected {shape} "
                             f"(from w_enc {tuple(w_enc.shape)})")
    for key, value in tensors.items():
        if not value.is_floating_point():
            raise InputError(f"{path}: {key} has dtype {value.dtype}, expected a float tensor")
        if not bool(torch.isfinite(value).all()):
            raise InputError(f"{path}: {key} contains NaN or Inf")
    if d_in is not None and d != d_in:
        raise InputError(f"{path}: SAE input width d_in={d} does not match the model's width {d_in}")
    return TopKSAE(*(t.float() for t in (w_enc, w_dec, b_enc, b_pre)), k=int(k), layer=layer, source=str(path))


def save_sae(sae: TopKSAE, path: str | Path) -> None:
    """Write the Adams et al. layout (with the ignored ``stats_last_nonzero`` buffer, as released files have)."""
    tensors = {
        "w_enc": sae.w_enc.detach().contiguous().cpu(),
        "w_dec": sae.w_dec.detach().contiguous().cpu(),
        "b_enc": sae.b_enc.detach().contiguous().cpu(),
        "b_pre": sae.b_pre.detach().contiguous().cpu(),
        "stats_last_nonzero": torch.zeros(sae.info.d_sae, dtype=torch.long),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


def random_sae(d_in: int, d_sae: int, k: int, *, seed: int = 0, layer: int | None = None) -> TopKSAE:
    """An untrained SAE with unit-norm decoder rows and a tied encoder (tests, warm starts)."""
    g = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(d_sae, d_in, generator=g)
    w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
    b_enc = 0.1 * torch.randn(d_sae, generator=g)
    b_pre = 0.1 * torch.randn(d_in, generator=g)
    return TopKSAE(w_dec.T.clone(), w_dec, b_enc, b_pre, k=k, layer=layer)


def open_sae(path: str | Path, k: int, lm: EsmLM, layer: int) -> TopKSAE:
    """The SAE file for `layer`, checked against the model."""
    lm.check_layer(layer, where=f"config: layer {layer}")
    sae = load_sae(path, k, layer=layer, d_in=lm.embed_dim)
    log.info("loaded SAE for layer %d: d_sae=%d k=%d from %s (%d bytes, sha256 %s)", layer, sae.info.d_sae, sae.k,
             sae.info.source, Path(path).stat().st_size, sha256_of(path))
    return sae
