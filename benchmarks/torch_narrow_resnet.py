"""torchvision's ResNet with every width divided: the PyTorch side's encoder.

Used where PyTorch code is compared with ours at a width the CPU affords:
`benchmarks/official_parity_torch.py` (the official MaskCon code's
``resnet18``) and `tests/fixtures/make_torchvision_fixture.py` (the
pretrained-import fixtures). Only the stem and ``_make_layer`` are narrowed;
everything else is torchvision's own code, so the layers are built, and their
weights drawn from torch's RNG, in torchvision's order.

Needs torch and torchvision, which the library never imports.
"""

from __future__ import annotations


def narrow_resnet(
    block, layers, width_divisor: int, num_classes: int | None = None
):
  """``torchvision.models.resnet.ResNet(block, layers)`` at width
  ``64 // width_divisor``.

  The stem (``conv1``, ``bn1``; also a ``conv1`` installed later, as the
  official small-image model installs its 3x3 one) is built at the narrow
  width. ``num_classes``: also narrow ``fc`` to that many outputs; None
  leaves torchvision's ``fc`` as built (for code that replaces it), so the
  weights drawn before and after it do not move.
  """
  from torch import nn
  from torchvision.models import resnet

  width = 64 // width_divisor

  class NarrowResNet(resnet.ResNet):

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
      if planes == 64:  # layer1 follows the stem, which is `width` wide.
        self.inplanes = width
      return super()._make_layer(
          block, planes // width_divisor, blocks, stride, dilate
      )

    def __setattr__(self, name, value):
      if (
          name == "conv1"
          and isinstance(value, nn.Conv2d)
          and (value.out_channels != width)
      ):
        value = nn.Conv2d(
            value.in_channels,
            width,
            kernel_size=value.kernel_size,
            stride=value.stride,
            padding=value.padding,
            bias=value.bias is not None,
        )
      if (
          name == "bn1"
          and isinstance(value, nn.BatchNorm2d)
          and (value.num_features != width)
      ):
        value = nn.BatchNorm2d(width)
      if (
          num_classes is not None
          and name == "fc"
          and isinstance(value, nn.Linear)
      ):
        value = nn.Linear(8 * width * block.expansion, num_classes)
      super().__setattr__(name, value)

  if num_classes is None:
    return NarrowResNet(block, layers)
  return NarrowResNet(block, layers, num_classes=num_classes)
