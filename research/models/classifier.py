"""The common wrapper every registry builder returns: a network, its head and its preprocessing."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

# ImageNet statistics: pretrained torchvision/timm backbones expect inputs normalised with these.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HEAD_INIT_STD = 0.001  # std of a new head's weights on a backbone (see FERClassifier._init_new_head)


class FERClassifier(nn.Module):
    """``forward(x: (B, C, H, W)) -> logits (B, num_classes)``.

    Knows which parameters form the new classification head (``head_prefix`` inside
    ``net``), so feature-extraction mode can freeze everything else; frozen batch-norm
    layers stay in eval mode so their ImageNet statistics are not overwritten.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        head_prefix: str,
        mean: Sequence[float],
        std: Sequence[float],
        pretrained_source: str = "none",
        init_head: bool = True,
    ) -> None:
        super().__init__()
        self.net = net
        self.head_prefix = head_prefix
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.pretrained_source = pretrained_source
        self.frozen = False
        if init_head:
            self._init_new_head()

    def _init_new_head(self) -> None:
        """A new head starts near a uniform prediction (loss about ln C), whatever the backbone's feature
        scale: timm's tf_efficientnet_lite0 head, initialised the usual way, started at logit std 3 and a
        loss of 4.0 on 7 classes, and its first epochs were spent undoing that. Small random weights
        (std ``HEAD_INIT_STD``), not zeros, so the backbone gets gradients from the first step."""
        linears = [m for n, m in self.net.named_modules() if self._is_head(n) and isinstance(m, nn.Linear)]
        if linears:
            nn.init.normal_(linears[-1].weight, std=HEAD_INIT_STD)
            if linears[-1].bias is not None:
                nn.init.zeros_(linears[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _is_head(self, name: str) -> bool:
        return name == self.head_prefix or name.startswith(self.head_prefix + ".")

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.net.named_parameters() if self._is_head(n)]

    def backbone_layers(self) -> list[list[nn.Parameter]]:
        """The backbone's parameters (not the head's) in layer groups, from the input to the output, for
        layer-wise learning-rate decay. A timm network groups itself (``group_matcher``: the stem, then
        each block); any other groups by module: ``layer1.0``, ``features.3``, ``conv1``... in the order
        the network registers them, which is the order of the forward pass for the registered models."""
        named = [(n, p) for n, p in self.net.named_parameters() if not self._is_head(n)]
        layers: dict[object, list[nn.Parameter]] = {}
        if hasattr(self.net, "group_matcher"):
            from timm.models import group_parameters

            groups = group_parameters(self.net, self.net.group_matcher(coarse=False))
            layer_of = {n: i for i, names in enumerate(groups.values()) for n in names}
            for name, param in sorted(named, key=lambda item: layer_of[item[0]]):
                layers.setdefault(layer_of[name], []).append(param)
        else:
            norms = (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)
            for name, param in named:
                key = _module_key(name)
                if key not in layers and layers and isinstance(self.net.get_submodule(key), norms):
                    key = next(reversed(layers))  # ResNet's bn1 belongs to the stem convolution before it
                layers.setdefault(key, []).append(param)
        return list(layers.values())

    def freeze_backbone(self) -> None:
        """Feature extraction: only the head keeps ``requires_grad``."""
        for name, param in self.net.named_parameters():
            param.requires_grad = self._is_head(name)
        self.frozen = True
        self.train(self.training)

    def unfreeze(self) -> None:
        """Fine-tune everything (staged unfreezing calls this mid-run)."""
        for param in self.net.parameters():
            param.requires_grad = True
        self.frozen = False
        self.train(self.training)

    def train(self, mode: bool = True) -> FERClassifier:
        super().train(mode)
        if mode and self.frozen:
            for name, module in self.net.named_modules():
                if name and not self._is_head(name):
                    module.eval()
        return self


def _module_key(name: str) -> str:
    """``layer1.0.conv1.weight`` -> ``layer1.0``; ``features.3.block...`` -> ``features.3``; ``conv1.weight`` -> ``conv1``."""
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 and parts[1].isdigit() else parts[0]


def mirror_average(net: Callable[[Tensor], Tensor], x: Tensor, logits: Tensor) -> Tensor:
    """Horizontal-flip test-time augmentation: the log of the mean of the softmax of ``logits`` (``net(x)``)
    and of ``net`` on the mirrored batch, so ``softmax`` of the result is the averaged probability."""
    mirrored = net(torch.flip(x, dims=[3])).float()
    probs = (torch.softmax(logits.float(), 1) + torch.softmax(mirrored, 1)) / 2
    return probs.clamp_min(1e-12).log()


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
