"""Strict loading of fair-esm ESM-2 checkpoints and Adams et al. SAE files, and the SAE's math.

Every refusal must raise :class:`InputError` whose message names the file and the key at
fault, so a pipeline log says what is wrong and where. Bad files are made by editing a good
file's raw contents and writing them back in the same format.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from esmsae.model.demo import write_tiny_esm2
from esmsae.model.esm import load_esm
from esmsae.model.sae import load_sae, random_sae, save_sae
from esmsae.pipeline.errors import InputError

from .conftest import D_SAE, TINY, WT, K

D = TINY["embed_dim"]
CONTACT_KEYS = {"contact_head.regression.weight", "contact_head.regression.bias"}
LOADED: list[str] = []  # filled by Marker.__setstate__ when a Marker is actually unpickled


class Marker:
    """A class a fair-esm checkpoint never pickles; records when it is unpickled."""

    def __init__(self, tag: str):
        self.tag = tag

    def __setstate__(self, state):
        self.__dict__.update(state)
        LOADED.append(state["tag"])


# -- helpers for writing (bad) files ------------------------------------------------------
def raw_esm(path: Path) -> dict:
    """The checkpoint's raw dict, read the strict way (only argparse.Namespace allowed)."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def refused(call, *fragments: str) -> str:
    """Run `call`, expect InputError, and check its message names every fragment."""
    with pytest.raises(InputError) as info:
        call()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def sae_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    sae = random_sae(D, D_SAE, K, seed=seed)
    return {name: getattr(sae, name).detach().contiguous().clone() for name in ("w_enc", "w_dec", "b_enc", "b_pre")}


def write_sae(path: Path, **changes) -> Path:
    """A safetensors SAE file: the good tensors with `changes` applied (None removes a key)."""
    tensors = sae_tensors()
    for key, value in changes.items():
        if value is None:
            del tensors[key]
        else:
            tensors[key] = value
    save_file(tensors, str(path))
    return path


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture
def esm_file(tmp_path, tiny_dir) -> Path:
    """A private copy of the tiny checkpoint that a test may overwrite."""
    path = tmp_path / "esm2_tiny.pt"
    path.write_bytes((tiny_dir / "esm2_tiny.pt").read_bytes())
    return path


# -- ESM-2 fair-esm checkpoints ------------------------------------------------------------
def test_esm_round_trip_identical_weights_and_logits(tmp_path):
    path = tmp_path / "esm2_rt.pt"
    model = write_tiny_esm2(path, seed=3, **TINY)
    assert not list(tmp_path.glob("*contact-regression*"))  # nothing beside it, as in offline use
    loaded = load_esm(path)
    expected, got = model.state_dict(), loaded.state_dict()
    assert set(expected) == set(got)
    for key in set(expected) - CONTACT_KEYS:  # the contact head is not in the file (nor used)
        assert torch.equal(expected[key], got[key]), key
    tokens = torch.tensor([[0, *(model.alphabet.get_idx(c) for c in WT["PR40A_HUMAN"]), 2]])
    with torch.no_grad():
        assert torch.equal(model(tokens)["logits"], loaded(tokens)["logits"])
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def test_esm_file_has_fair_esm_layout(tiny_dir):
    data = raw_esm(tiny_dir / "esm2_tiny.pt")
    assert set(data) == {"cfg", "model"}
    ns = data["cfg"]["model"]
    assert isinstance(ns, argparse.Namespace)
    assert (ns.encoder_layers, ns.encoder_embed_dim, ns.encoder_attention_heads) == (4, 32, 4)
    keys = list(data["model"])
    assert all(k.startswith(("encoder.sentence_encoder.", "encoder.lm_head.")) for k in keys)
    assert not [k for k in keys if "contact_head.regression" in k]
    assert "encoder.sentence_encoder.layers.3.fc1.weight" in keys and "encoder.lm_head.weight" in keys


def _drop(data):
    del data["model"]["encoder.sentence_encoder.layers.1.fc1.weight"]


def _extra(data):
    data["model"]["encoder.sentence_encoder.layers.9.fc1.weight"] = torch.zeros(4 * D, D)


def _reshape(data):
    data["model"]["encoder.sentence_encoder.layers.0.fc1.weight"] = torch.zeros(4 * D, D - 1)


def _nan(data):
    value = data["model"]["encoder.sentence_encoder.layers.2.self_attn.q_proj.weight"].clone()
    value[3, 5] = float("nan")
    data["model"]["encoder.sentence_encoder.layers.2.self_attn.q_proj.weight"] = value


def _no_cfg(data):
    del data["cfg"]


def _no_layers(data):
    delattr(data["cfg"]["model"], "encoder_layers")


@pytest.mark.parametrize(("edit", "fragments"), [
    (_drop, ["missing tensor", "layers.1.fc1.weight"]),
    (_extra, ["unexpected tensor", "layers.9.fc1.weight"]),
    (_reshape, ["layers.0.fc1.weight", "(128, 31)", "expected (128, 32)"]),
    (_nan, ["layers.2.self_attn.q_proj.weight", "NaN"]),
    (_no_cfg, ["'cfg'"]),
    (_no_layers, ["cfg['model']", "encoder_layers"]),
], ids=["missing", "extra", "shape", "nan", "no-cfg", "no-encoder_layers"])
def test_esm_bad_checkpoint_refused(esm_file, edit, fragments):
    data = raw_esm(esm_file)
    edit(data)
    torch.save(data, esm_file)
    refused(lambda: load_esm(esm_file), str(esm_file), *fragments)


def test_esm_missing_file_names_config_key(tmp_path):
    path = tmp_path / "nowhere" / "esm2.pt"
    refused(lambda: load_esm(path), str(path), "esm_checkpoint")


def test_esm_truncated_file_refused(esm_file):
    refused(lambda: load_esm(truncate(esm_file)), str(esm_file), "truncated or corrupt")


def test_esm_pickle_without_cfg_model_refused(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(3)], path)
    refused(lambda: load_esm(path), str(path), "not a fair-esm checkpoint", "'cfg'", "'model'")


@pytest.mark.parametrize("text", ["not a checkpoint\n", "hello world\n"])
def test_esm_text_file_refused_as_not_a_checkpoint(tmp_path, text):
    path = tmp_path / "notes.pt"
    path.write_text(text)
    message = refused(lambda: load_esm(path), str(path), "not a readable PyTorch checkpoint")
    assert "esm_trust_pickle" not in message  # a text file is no pickle; trusting it cannot help


def test_esm_extra_global_refused_unless_trusted(esm_file):
    data = raw_esm(esm_file)
    data["cfg"]["note"] = Marker("in-cfg")
    torch.save(data, esm_file)
    LOADED.clear()
    # weights_only=True is what refuses here: the class is never even constructed.
    refused(lambda: load_esm(esm_file), str(esm_file), "Marker", "esm_trust_pickle")
    assert LOADED == []
    model = load_esm(esm_file, trust_pickle=True)
    assert LOADED == ["in-cfg"]
    assert model.num_layers == TINY["num_layers"] and model.embed_dim == D


# -- SAE safetensors -------------------------------------------------------------------------
def test_sae_round_trip(tmp_path):
    sae = random_sae(D, D_SAE, K, seed=7, layer=2)
    path = tmp_path / "sae.safetensors"
    save_sae(sae, path)
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == {"w_enc", "w_dec", "b_enc", "b_pre", "stats_last_nonzero"}
    loaded = load_sae(path, K, layer=2, d_in=D)
    for name in ("w_enc", "w_dec", "b_enc", "b_pre"):
        assert torch.equal(getattr(loaded, name), getattr(sae, name)), name
    assert (loaded.info.d_in, loaded.info.d_sae, loaded.info.k, loaded.info.layer) == (D, D_SAE, K, 2)
    assert loaded.info.source == str(path)
    assert load_sae(path, 5).k == 5 and load_sae(path, 5).info.layer is None  # k is the caller's


def test_sae_stats_buffer_ignored(tmp_path):
    path = write_sae(tmp_path / "s.safetensors", stats_last_nonzero=torch.arange(D_SAE) * 1000)
    plain = write_sae(tmp_path / "plain.safetensors")
    with_stats, without = load_sae(path, K), load_sae(plain, K)
    assert not hasattr(with_stats, "stats_last_nonzero")
    assert dict(with_stats.state_dict()).keys() == dict(without.state_dict()).keys()
    x = torch.randn(3, D, generator=torch.Generator().manual_seed(1))
    assert torch.equal(with_stats.encode(x)[1], without.encode(x)[1])


def _nan_w_enc():
    w = sae_tensors()["w_enc"]
    w[0, 0] = float("nan")
    return w


@pytest.mark.parametrize(("changes", "fragments"), [
    ({"b_pre": None}, ["missing SAE tensor", "b_pre"]),
    ({"w_skip": torch.zeros(D)}, ["unexpected SAE tensor", "w_skip"]),
    ({"w_dec": torch.zeros(D_SAE, D - 1)}, ["w_dec", f"({D_SAE}, {D - 1})", f"expected ({D_SAE}, {D})"]),
    ({"b_enc": torch.zeros(D_SAE + 1)}, ["b_enc", f"({D_SAE + 1},)", f"expected ({D_SAE},)"]),
    ({"w_enc": _nan_w_enc()}, ["w_enc", "NaN"]),
    ({"w_dec": torch.ones(D_SAE, D, dtype=torch.int32)}, ["w_dec", "torch.int32", "float"]),
], ids=["missing", "extra", "w_dec-shape", "b_enc-shape", "nan", "int-dtype"])
def test_sae_bad_file_refused(tmp_path, changes, fragments):
    path = write_sae(tmp_path / "bad.safetensors", **changes)
    refused(lambda: load_sae(path, K), str(path), *fragments)


def test_sae_width_must_match_model(tmp_path):
    path = write_sae(tmp_path / "s.safetensors")
    refused(lambda: load_sae(path, K, d_in=2 * D), str(path), f"d_in={D}", str(2 * D))


@pytest.mark.parametrize("k", [0, D_SAE, D_SAE + 5])
def test_sae_k_out_of_range_names_config_key(tmp_path, k):
    path = write_sae(tmp_path / "s.safetensors")
    refused(lambda: load_sae(path, k), str(path), f"k={k}", "sae.k")
    assert load_sae(path, D_SAE - 1).k == D_SAE - 1 and load_sae(path, 1).k == 1


def test_sae_missing_and_truncated_files(tmp_path):
    missing = tmp_path / "absent.safetensors"
    refused(lambda: load_sae(missing, K, layer=3), str(missing), "layer 3", "sae.dir", "sae.pattern")
    cut = truncate(write_sae(tmp_path / "cut.safetensors"))
    refused(lambda: load_sae(cut, K), str(cut), "truncated or corrupt")


# -- the SAE's math (METHOD.md "SAE"), written out from scratch ------------------------------
@pytest.fixture(scope="module")
def sae_and_x():
    sae = random_sae(D, D_SAE, K, seed=11)
    x = 3.0 * torch.randn(5, D, generator=torch.Generator().manual_seed(2)) + 0.7
    return sae, x


def test_encode_decode_match_method(sae_and_x):
    sae, x = sae_and_x
    n, d = x.shape
    mu = x.sum(-1, keepdim=True) / d
    sigma = (((x - mu) ** 2).sum(-1, keepdim=True) / (d - 1)).sqrt()
    x_hat = (x - mu) / (sigma + 1e-5)
    pre = (x_hat - sae.b_pre) @ sae.w_enc + sae.b_enc
    z = torch.zeros_like(pre)
    for i in range(n):
        order = sorted(range(D_SAE), key=lambda j, row=pre[i]: -float(row[j]))[:K]
        for j in order:
            z[i, j] = max(float(pre[i, j]), 0.0)
    recon = (z @ sae.w_dec + sae.b_pre) * sigma + mu

    got_pre, got_z, got_mu, got_sigma = sae.encode(x)
    tol = {"atol": 1e-6, "rtol": 1e-6}
    torch.testing.assert_close(got_mu, mu, **tol)
    torch.testing.assert_close(got_sigma, sigma, **tol)
    torch.testing.assert_close(got_pre, pre, **tol)
    assert torch.equal(got_z != 0, z != 0)
    torch.testing.assert_close(got_z, z, **tol)
    torch.testing.assert_close(sae.decode(got_z, got_mu, got_sigma), recon, **tol)


def test_decode_plus_error_returns_input(sae_and_x):
    sae, x = sae_and_x
    _, z, mu, sigma = sae.encode(x)
    recon = sae.decode(z, mu, sigma)
    error = x - recon
    assert error.abs().max() > 1e-2  # an untrained SAE: the error term carries real signal
    torch.testing.assert_close(recon + error, x, atol=1e-5, rtol=0)


def test_decode_delta_is_exact_difference(sae_and_x):
    sae, x = sae_and_x
    _, z, mu, sigma = sae.encode(x)
    dz = torch.zeros_like(z)
    dz[:, [3, 40, 77]] = torch.tensor([1.5, -0.25, 2.0])
    expected = sae.decode(z + dz, mu, sigma) - sae.decode(z, mu, sigma)
    torch.testing.assert_close(sae.decode_delta(dz, sigma), expected, atol=1e-5, rtol=0)
    assert torch.equal(sae.decode_delta(torch.zeros_like(z), sigma), torch.zeros_like(x))


def test_topk_keeps_k_largest_and_relus(sae_and_x):
    sae, _ = sae_and_x
    g = torch.Generator().manual_seed(4)
    pre = -torch.rand(3, D_SAE, generator=g) - 0.1  # all negative ...
    chosen = torch.stack([torch.randperm(D_SAE, generator=g)[:K] for _ in range(3)])
    pre.scatter_(1, chosen, torch.rand(3, K, generator=g) + 0.5)  # ... except K positive entries
    z = sae.topk(pre)
    assert ((z != 0).sum(-1) == K).all()
    for row in range(3):
        assert set(z[row].nonzero().flatten().tolist()) == set(chosen[row].tolist())
    assert torch.equal(z.gather(1, chosen), pre.gather(1, chosen))
    pre.scatter_(1, chosen[:, 3:], -0.05)  # only 3 positive entries left: ReLU zeros the other K-3 kept
    few = sae.topk(pre)
    assert ((few != 0).sum(-1) == 3).all() and (few >= 0).all()
    assert torch.equal(few.gather(1, chosen[:, :3]), pre.gather(1, chosen[:, :3]))
