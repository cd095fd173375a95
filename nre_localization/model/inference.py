"""Fast inference wrapper around :class:`DescriptorNet`: BN folding, fp16/bf16, channels-last, CUDA graph.

``FastDescriptorNet(net, dtype=torch.float16, cuda_graph=True)(images)`` returns the same dict as
``net(images)`` (float32 outputs, same shapes), within half-precision tolerance. BatchNorm layers are
folded into the preceding convolutions (exact in eval mode). With ``cuda_graph`` the first call for a
given input shape captures a CUDA graph that later calls of that shape replay (inputs are copied into
a static buffer; the returned tensors are fresh clones, safe to keep).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from nre_localization.model.network import DescriptorNet


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold eval-mode ``bn`` into ``conv`` in place (conv gains a bias)."""
    mean, var = bn.running_mean, bn.running_var
    assert mean is not None and var is not None, "BatchNorm without running statistics"
    scale = bn.weight / torch.sqrt(var + bn.eps)
    conv.weight.mul_(scale.view(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(mean)
    new_bias = (bias - mean) * scale + bn.bias
    conv.bias = nn.Parameter(new_bias)


def fold_batchnorm(net: DescriptorNet) -> DescriptorNet:
    """A copy of ``net`` (eval mode) with every BatchNorm folded into its convolution."""
    net = copy.deepcopy(net).eval()
    for mod in net.modules():
        if isinstance(mod, nn.Sequential):
            kids = list(mod.named_children())
            for (_, a), (kb, b) in zip(kids[:-1], kids[1:], strict=True):
                if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                    _fold(a, b)
                    setattr(mod, kb, nn.Identity())
        for ca, cb in (("conv1", "bn1"), ("conv2", "bn2")):
            conv, bn = getattr(mod, ca, None), getattr(mod, cb, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                _fold(conv, bn)
                setattr(mod, cb, nn.Identity())
    return net


class FastDescriptorNet:
    """Inference-only callable with the :class:`DescriptorNet` interface (see module docstring)."""

    def __init__(
        self,
        net: DescriptorNet,
        dtype: torch.dtype = torch.float16,
        channels_last: bool = True,
        cuda_graph: bool = False,
    ) -> None:
        self.net = fold_batchnorm(net)
        self.device = next(self.net.parameters()).device
        self.dtype = dtype
        self.channels_last = channels_last
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        if dtype != torch.float32:
            self.net = self.net.to(dtype)
            # the two temperatures and the normalisation constants stay in fp32
            self.net.coarse_log_scale.data = self.net.coarse_log_scale.data.float()
            self.net.fine_log_scale.data = self.net.fine_log_scale.data.float()
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        for k in ("coarse_stride", "fine_stride", "coarse_dim", "fine_dim", "config"):
            setattr(self, k, getattr(net, k))
        self._fingerprint = net.fingerprint()
        self._graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, torch.Tensor, dict]] = {}

    def fingerprint(self) -> str:
        """Fingerprint of the wrapped (unfolded) network: maps stay compatible."""
        return self._fingerprint

    def _run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``images [B, 3, H, W]`` float in [0, 1] -> float32 ``{"coarse", "fine"}`` maps."""
        images = images.to(self.device)
        if not self.cuda_graph:
            return self._run(images)
        key = tuple(images.shape)
        if key not in self._graphs:
            static_in = images.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    self._run(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._run(static_in)
            self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[key]
        static_in.copy_(images)
        graph.replay()
        return {k: v.clone() for k, v in static_out.items()}
