"""A CNN for 7-class facial expressions, trained from scratch on small grayscale faces.

Design choices (the assignment asks for them to be explained):

* **Blocks**: four stages of two 3x3 convolutions (Conv-BN-SiLU), max-pool between stages.
  3x3 stacks see a 5x5 context per stage at lower cost; expressions live in local shapes
  (mouth corners, brow slope, eye opening) that a hierarchy of small kernels captures well.
  Widths 32-64-128-256 give ~1.2 M parameters: enough for FER2013-sized data, small enough
  not to memorise a few thousand course images.
* **Batch norm** after every convolution: stable training at the higher learning rates a
  from-scratch model needs, and some regularisation.
* **SiLU** activation: smooth and non-saturating like ReLU but without dead units; it is
  what EfficientNet and MobileNetV3 use and trains slightly better than ReLU at this size.
* **Global average pooling + dropout + one linear layer** instead of large fully connected
  layers: far fewer parameters, less overfitting, any input size works.
* **Loss / optimiser / learning rate** (set in ``configs/scratch_cnn.yaml``): cross-entropy
  with label smoothing 0.1 (FER labels are noisy; smoothing avoids over-confident logits),
  optionally class-weighted for the imbalanced classes; AdamW (lr 3e-3, weight decay 0.05)
  with one warmup epoch and cosine decay: AdamW is robust to the scale differences of a
  freshly initialised network, and 3e-3 is the largest rate that trains stably with BN here
  (sweep ``sweeps/scratch_cnn.yaml`` searches 3e-4..1e-2). An exponential moving average of the
  weights (``train.ema_decay=0.998``) is what gets validated and saved: it smooths the noisy
  high-learning-rate phase, so validation accuracy climbs about twice as fast in the first epochs
  (``benchmarks/README.md``, "Time to accuracy").
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from research.models.classifier import FERClassifier
from research.models.registry import register_model


def conv_bn_act(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.SiLU(inplace=True),
    )


class ScratchCNN(nn.Module):
    """``(B, in_chans, H, W) -> (B, num_classes)`` logits; H, W >= 16."""

    def __init__(
        self, num_classes: int = 7, *, in_chans: int = 1, widths: Sequence[int] = (32, 64, 128, 256), dropout: float = 0.3
    ) -> None:
        super().__init__()
        stages: list[nn.Module] = []
        c_in = in_chans
        for i, width in enumerate(widths):
            stages += [conv_bn_act(c_in, width), conv_bn_act(width, width)]
            if i < len(widths) - 1:
                stages.append(nn.MaxPool2d(2))
            c_in = width
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in, num_classes))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.features(x)))


def _scratch(num_classes: int, widths: Sequence[int], *, pretrained: bool = False, in_chans: int = 1, dropout: float = 0.3, **_: object) -> FERClassifier:
    if pretrained:
        raise ValueError("scratch models have no pretrained weights; set model.pretrained=false")
    mean, std = (0.5,) * in_chans, (0.5,) * in_chans
    net = ScratchCNN(num_classes, in_chans=in_chans, widths=widths, dropout=dropout)
    # The scratch CNN's own init already starts near a uniform prediction (logit std about 0.03).
    return FERClassifier(net, head_prefix="head", mean=mean, std=std, pretrained_source="none", init_head=False)


@register_model("scratch_cnn", cam_layer="net.features")
def scratch_cnn(num_classes: int = 7, **kwargs: object) -> FERClassifier:
    """~1.2 M parameters, widths 32-64-128-256."""
    return _scratch(num_classes, (32, 64, 128, 256), **kwargs)


@register_model("scratch_cnn_small", cam_layer="net.features")
def scratch_cnn_small(num_classes: int = 7, **kwargs: object) -> FERClassifier:
    """~0.3 M parameters, widths 16-32-64-128: for CPU-only quick studies."""
    return _scratch(num_classes, (16, 32, 64, 128), **kwargs)
