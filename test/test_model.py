"""DescriptorNet contract: shapes, strides, cell convention, scale, fingerprint, weights I/O."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from nre_localization.errors import InputError
from nre_localization.model.inference import FastDescriptorNet, fold_batchnorm
from nre_localization.model.network import (
    DescriptorNet,
    ModelConfig,
    default_weights_path,
    load_default_model,
    load_model,
    save_weights,
)

torch.set_num_threads(2)
SMALL = ModelConfig(coarse_dim=32, coarse_hidden=64, fine_widths=(8, 16, 32, 64), fine_dim=32)


def _net(cfg: ModelConfig = SMALL, seed: int = 0) -> DescriptorNet:
    torch.manual_seed(seed)
    net = DescriptorNet(cfg).eval()
    # non-trivial BatchNorm statistics, so that folding them is actually exercised
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net


@pytest.mark.parametrize("hw", [(480, 640), (97, 131), (64, 64)])
def test_output_shapes_and_attributes(hw: tuple[int, int]) -> None:
    net = _net()
    h, w = hw
    with torch.no_grad():
        out = net(torch.rand(2, 3, h, w))
    assert net.coarse_stride == 16 and net.fine_stride == 2
    assert out["coarse"].shape == (2, net.coarse_dim, math.ceil(h / 16), math.ceil(w / 16))
    assert out["fine"].shape == (2, net.fine_dim, math.ceil(h / 2), math.ceil(w / 2))
    assert out["coarse"].dtype == torch.float32 and out["fine"].dtype == torch.float32


def test_descriptor_norm_is_the_learned_scale() -> None:
    net = _net()
    with torch.no_grad():
        net.coarse_log_scale.fill_(math.log(7.0))
        out = net(torch.rand(1, 3, 64, 96))
    assert torch.allclose(out["coarse"].norm(dim=1), torch.full((4, 6), 7.0), atol=1e-4)
    assert torch.allclose(out["fine"].norm(dim=1), torch.full((32, 48), net.fine_scale), atol=1e-3)


def _symmetrise(net: DescriptorNet) -> None:
    """Make every kernel mirror-symmetric in x and y (the net becomes flip-equivariant)."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1:
                w = m.weight
                w.copy_((w + w.flip(-1) + w.flip(-2) + w.flip(-1, -2)) / 4)


def test_coarse_cell_centres_follow_the_convention() -> None:
    """On a constant image, a symmetric-kernel net's gradient of one output cell w.r.t. the input is
    mirror-symmetric about that cell's centre: its centroid must be ((j + .5) s - .5, (i + .5) s - .5).
    (The coarse trunk has no max-pooling, whose gradient on a constant image is not symmetric.)"""
    net = _net()
    _symmetrise(net)
    size, s = 512, 16
    i, j = 16, 15
    x = torch.full((1, 3, size, size), 0.5, requires_grad=True)
    net(x)["coarse"][0, :, i, j].sum().backward()
    g = x.grad[0].abs().sum(0)
    assert g.sum() > 0
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    assert float((g * xs).sum() / g.sum()) == pytest.approx((j + 0.5) * s - 0.5, abs=0.05)
    assert float((g * ys).sum() / g.sum()) == pytest.approx((i + 0.5) * s - 0.5, abs=0.05)


@pytest.mark.parametrize("level,margin", [("coarse", 8), ("fine", 0)])
def test_flip_equivariance_pins_cell_centres(level: str, margin: int) -> None:
    """With mirror-symmetric kernels, flipping the image flips the maps (cells far enough from the
    border, where padding differs). Cell j <-> Wc - 1 - j is only consistent with centres at
    (j + .5) s - .5 (a wrong phase would shift the flipped map by a fraction of a cell)."""
    net = _net()
    _symmetrise(net)
    torch.manual_seed(3)
    x = torch.rand(1, 3, 384, 448)
    with torch.no_grad():
        a = net(x)[level][0]
        b = net(x.flip(-1).flip(-2))[level][0].flip(-1).flip(-2)
    m = margin
    inner = (slice(None), slice(m, a.shape[1] - m), slice(m, a.shape[2] - m))
    assert torch.allclose(a[inner], b[inner], atol=1e-4)
    if level == "fine":  # (the small random coarse head gives near-constant coarse maps)
        assert not torch.allclose(a[inner][:, :, 1:], b[inner][:, :, :-1], atol=1e-2)


def test_shifting_the_image_by_whole_cells_shifts_the_maps() -> None:
    net = _net()
    torch.manual_seed(1)
    big = torch.rand(1, 3, 544, 704)
    a = big[:, :, :512, :640]
    b = big[:, :, 32:544, 64:704]  # content moves 32 px up, 64 px left (whole cells at all strides)
    with torch.no_grad():
        oa, ob = net(a), net(b)
    # interior only: the receptive fields (coarse ~150 px, fine ~230 px) must not reach a border
    ca, cb = oa["coarse"][0, :, 10:22, 10:30], ob["coarse"][0, :, 8:20, 6:26]
    assert torch.allclose(ca, cb, atol=1e-5)
    fa, fb = oa["fine"][0, :, 131:141, 148:205], ob["fine"][0, :, 115:125, 116:173]
    assert torch.allclose(fa, fb, atol=1e-5)
    assert not torch.allclose(fa, oa["fine"][0, :, 115:125, 116:173], atol=1e-2)


def test_fingerprint_tracks_weights_and_config() -> None:
    a, b = _net(seed=0), _net(seed=0)
    assert a.fingerprint() == b.fingerprint()
    with torch.no_grad():
        b.fine.head.weight[0, 0, 0, 0] += 1e-3
    assert a.fingerprint() != b.fingerprint()
    c = _net(ModelConfig(**{**SMALL.__dict__, "init_fine_scale": 10.0}))
    assert len(a.fingerprint()) == 16 and c.fingerprint() != a.fingerprint()


def test_save_load_roundtrip(tmp_path: Path) -> None:
    net = _net()
    path = tmp_path / "m.safetensors"
    save_weights(net, path)
    back = load_model(path)
    assert back.fingerprint() == net.fingerprint()
    assert back.config == net.config
    x = torch.rand(1, 3, 64, 80)
    with torch.no_grad():
        assert torch.equal(back(x)["fine"], net(x)["fine"])
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(InputError):
        load_model(path)
    with pytest.raises(InputError):
        load_model(tmp_path / "missing.safetensors")


def test_folded_batchnorm_matches() -> None:
    net = _net()
    fast = FastDescriptorNet(net, torch.float32, channels_last=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fold_batchnorm(net).modules())
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        ref = net(x)
    got = fast(x)
    for k in ("coarse", "fine"):
        assert torch.allclose(ref[k], got[k], atol=1e-3, rtol=1e-3)
    assert fast.fingerprint() == net.fingerprint()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_half_precision_and_cuda_graph_agree() -> None:
    net = _net(ModelConfig()).cuda()
    x = torch.rand(1, 3, 480, 640, device="cuda")
    with torch.no_grad():
        ref = net(x)
    for dtype in (torch.float16, torch.bfloat16):
        got = FastDescriptorNet(net, dtype, cuda_graph=True)(x)
        for k in ("coarse", "fine"):
            cos = torch.nn.functional.cosine_similarity(ref[k], got[k], dim=1)
            assert float(cos.mean()) > 0.995


def test_load_default_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = default_weights_path()
    if not path.is_file():
        pytest.skip(f"no shipped weights at {path}")
    net = load_default_model("cpu")
    assert not net.training
    with torch.no_grad():
        out = net(torch.rand(1, 3, 64, 64))
    assert torch.isfinite(out["coarse"]).all() and torch.isfinite(out["fine"]).all()
    monkeypatch.setenv("NRE_WEIGHTS", str(tmp_path / "absent.safetensors"))
    with pytest.raises(InputError, match="missing"):
        load_default_model("cpu")
