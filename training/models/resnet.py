"""torchvision's ResNet-18 adapted to small images (28-32 px): a backbone from pixels to one vector.

The stem is a 3x3 stride-1 convolution with no max-pool (the 7x7/2 conv and pool would shrink a
28x28 image to 7x7 before the first block), the classifier is removed, and `width` scales every
stage (64 is ResNet-18 proper, embedding 512; 16 gives a 128-d embedding cheap enough for CPU).
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, ResNet


class ResNetBackbone(ResNet):
    """ResNet-18 for small images: (B, in_channels, H, W) -> (B, 8 * width) after global average pooling."""

    def __init__(self, in_channels: int = 1, width: int = 64):
        nn.Module.__init__(self)  # not ResNet.__init__, which would first build the full ImageNet network
        self._norm_layer, self.groups, self.base_width, self.dilation = nn.BatchNorm2d, 1, 64, 1  # read by _make_layer
        self.inplanes = width
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()
        self.layer1 = self._make_layer(BasicBlock, width, 2)
        self.layer2 = self._make_layer(BasicBlock, 2 * width, 2, stride=2)
        self.layer3 = self._make_layer(BasicBlock, 4 * width, 2, stride=2)
        self.layer4 = self._make_layer(BasicBlock, 8 * width, 2, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Identity()
        self.dim = 8 * width
        for m in self.modules():  # the same initialisation torchvision gives its own layers
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self._forward_impl(x)  # (B, C, H, W) -> (B, 8 * width)
