"""The benchmark's layer suite: a declared table of convolution shapes (data, not code).

Each row is one convolution layer, fp32 NCHW, ``groups = dilation = 1``:
``name, model, C, H, W, K, R, S, stride, pad`` (input channels, input height and width, output
channels, kernel height and width, stride, zero padding). The batch size is a benchmark
parameter, not part of the layer.

Sources
-------
- AlexNet (Krizhevsky et al. 2012, torchvision channel counts) at 224x224 input: conv1-conv5.
  conv4 (384 -> 256, 3x3, 13x13) is the layer of the seeds' viz project and of
  ``docs/anchors.md``.
- VGG-16 (Simonyan & Zisserman 2015): the distinct 3x3 conv shapes of the seeds' GPU paper
  (``seeds/003``, section 8 / table 9, written there as ``CxHxWxK``), 64x224x224x64 down to
  512x14x14x512 (suite ``vgg16``); its first layer 3x224x224x64 too in ``vgg16-full`` (the
  GPU benchmark's table, 3x224x224x64 ... 512x14x14x512).
- ResNet-50 (He et al. 2016, torchvision v1.5 layout): the 1x1 reduce/expand convolutions of each
  stage and the stride-2 1x1 projection shortcuts ("downsample").
- ResNet-20 for CIFAR-10 (He et al. 2016, section 4.2): the 3x3 convolutions of its three stages
  and the two stride-2 transitions.
- Text CNN (Kim 2014, "Convolutional neural networks for sentence classification", EMNLP; its
  CNN-non-static is the seeds' GPU paper's 1-D benchmark, ``seeds/003``): 100 filters of widths
  2 and 3 over 300-d word embeddings (the channels), sentences of 56 words (the longest of
  Kim's MR set) and 20, no padding.

A layer with ``H == R == 1`` is a 1-D convolution (``nn.Conv1d`` over a length-``W`` sequence):
its ``pad`` applies along ``W`` only, and the benchmark times ``F.conv1d`` against
``sparsecnn.conv1d``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..functional import conv_output_size


@dataclass(frozen=True)
class LayerSpec:
    """One convolution layer of the benchmark (1-D when ``H == R == 1``).

    Attributes
    ----------
    name : str
        Unique name, ``<model>-<layer>`` (e.g. ``"alexnet-conv4"``).
    model : str
        The network it comes from (``"alexnet"``, ``"vgg16"``, ``"resnet50"``, ``"resnet20"``,
        or anything for a user-made spec).
    C, H, W : int
        Input channels, height, width.
    K, R, S : int
        Output channels, kernel height, kernel width.
    stride, pad : int
        Same in both spatial dimensions.
    """

    name: str
    model: str
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    stride: int = 1
    pad: int = 0

    def __post_init__(self):
        for field in ("C", "H", "W", "K", "R", "S", "stride"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"layer {self.name!r}: {field} must be a positive int, got {value!r}")
        if not isinstance(self.pad, int) or self.pad < 0:
            raise ValueError(f"layer {self.name!r}: pad must be a non-negative int, got {self.pad!r}")
        if self.OH < 1 or self.OW < 1:
            raise ValueError(f"layer {self.name!r}: output size {self.OH}x{self.OW} is empty")

    @property
    def is_1d(self) -> bool:
        """A 1-D convolution (``H == R == 1``): ``pad`` and ``stride`` apply along ``W`` only."""
        return self.H == 1 and self.R == 1

    @property
    def OH(self) -> int:
        """Output height (1 for a 1-D layer)."""
        if self.is_1d:
            return 1
        return conv_output_size(self.H, self.R, self.stride, self.pad, 1)

    @property
    def OW(self) -> int:
        """Output width."""
        return conv_output_size(self.W, self.S, self.stride, self.pad, 1)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        """(K, C, R, S)."""
        return (self.K, self.C, self.R, self.S)

    def input_shape(self, batch: int) -> tuple[int, int, int, int]:
        """(N, C, H, W) for batch size ``batch``."""
        return (batch, self.C, self.H, self.W)

    def dense_flops(self, batch: int) -> int:
        """Multiply-adds x 2 of the dense layer: ``2 K C R S OH OW N`` (FLOP)."""
        return 2 * self.K * self.C * self.R * self.S * self.OH * self.OW * batch

    def shape_str(self) -> str:
        """Short human-readable geometry, e.g. ``384x13x13 -> 256, 3x3 s1 p1 (out 13x13)``."""
        if self.is_1d:
            return (f"{self.C}x{self.W} -> {self.K}, 1-D {self.S} s{self.stride} p{self.pad} "
                    f"(out {self.OW})")
        return (f"{self.C}x{self.H}x{self.W} -> {self.K}, {self.R}x{self.S} s{self.stride} "
                f"p{self.pad} (out {self.OH}x{self.OW})")

    def as_dict(self) -> dict:
        """Plain dict of the spec plus OH, OW (for JSON)."""
        return {**asdict(self), "OH": self.OH, "OW": self.OW}


# name, model, C, H, W, K, R, S, stride, pad
_TABLE: tuple[tuple, ...] = (
    # AlexNet, 224x224 input
    ("alexnet-conv1", "alexnet", 3, 224, 224, 64, 11, 11, 4, 2),
    ("alexnet-conv2", "alexnet", 64, 27, 27, 192, 5, 5, 1, 2),
    ("alexnet-conv3", "alexnet", 192, 13, 13, 384, 3, 3, 1, 1),
    ("alexnet-conv4", "alexnet", 384, 13, 13, 256, 3, 3, 1, 1),
    ("alexnet-conv5", "alexnet", 256, 13, 13, 256, 3, 3, 1, 1),
    # VGG-16, the GPU paper's (seeds/003) section 8 shapes CxHxWxK
    ("vgg16-3x224x224x64", "vgg16", 3, 224, 224, 64, 3, 3, 1, 1),
    ("vgg16-64x224x224x64", "vgg16", 64, 224, 224, 64, 3, 3, 1, 1),
    ("vgg16-64x112x112x128", "vgg16", 64, 112, 112, 128, 3, 3, 1, 1),
    ("vgg16-128x112x112x128", "vgg16", 128, 112, 112, 128, 3, 3, 1, 1),
    ("vgg16-128x56x56x256", "vgg16", 128, 56, 56, 256, 3, 3, 1, 1),
    ("vgg16-256x56x56x256", "vgg16", 256, 56, 56, 256, 3, 3, 1, 1),
    ("vgg16-256x28x28x512", "vgg16", 256, 28, 28, 512, 3, 3, 1, 1),
    ("vgg16-512x28x28x512", "vgg16", 512, 28, 28, 512, 3, 3, 1, 1),
    ("vgg16-512x14x14x512", "vgg16", 512, 14, 14, 512, 3, 3, 1, 1),
    # ResNet-50 1x1 convolutions (bottleneck reduce / expand), then the stride-2 projections
    ("resnet50-1x1-64-256@56", "resnet50", 64, 56, 56, 256, 1, 1, 1, 0),
    ("resnet50-1x1-256-64@56", "resnet50", 256, 56, 56, 64, 1, 1, 1, 0),
    ("resnet50-1x1-128-512@28", "resnet50", 128, 28, 28, 512, 1, 1, 1, 0),
    ("resnet50-1x1-512-128@28", "resnet50", 512, 28, 28, 128, 1, 1, 1, 0),
    ("resnet50-1x1-256-1024@14", "resnet50", 256, 14, 14, 1024, 1, 1, 1, 0),
    ("resnet50-1x1-1024-256@14", "resnet50", 1024, 14, 14, 256, 1, 1, 1, 0),
    ("resnet50-1x1-512-2048@7", "resnet50", 512, 7, 7, 2048, 1, 1, 1, 0),
    ("resnet50-1x1-2048-512@7", "resnet50", 2048, 7, 7, 512, 1, 1, 1, 0),
    ("resnet50-1x1s2-256-512@56", "resnet50", 256, 56, 56, 512, 1, 1, 2, 0),
    ("resnet50-1x1s2-512-1024@28", "resnet50", 512, 28, 28, 1024, 1, 1, 2, 0),
    ("resnet50-1x1s2-1024-2048@14", "resnet50", 1024, 14, 14, 2048, 1, 1, 2, 0),
    # ResNet-20 (CIFAR-10, 32x32 input): 3x3 convs of the three stages and the stride-2 transitions
    ("resnet20-16@32", "resnet20", 16, 32, 32, 16, 3, 3, 1, 1),
    ("resnet20-32@16", "resnet20", 32, 16, 16, 32, 3, 3, 1, 1),
    ("resnet20-64@8", "resnet20", 64, 8, 8, 64, 3, 3, 1, 1),
    ("resnet20-16-32s2@32", "resnet20", 16, 32, 32, 32, 3, 3, 2, 1),
    ("resnet20-32-64s2@16", "resnet20", 32, 16, 16, 64, 3, 3, 2, 1),
    # Text CNN (Kim 2014), 1-D: 300-d embeddings, 100 filters of widths 2 and 3
    ("textcnn-k2@56", "textcnn", 300, 1, 56, 100, 1, 2, 1, 0),
    ("textcnn-k3@56", "textcnn", 300, 1, 56, 100, 1, 3, 1, 0),
    ("textcnn-k3@20", "textcnn", 300, 1, 20, 100, 1, 3, 1, 0),
)

#: Every benchmark layer by name, in table order.
LAYERS: dict[str, LayerSpec] = {row[0]: LayerSpec(*row) for row in _TABLE}

#: Suite name -> layer names. ``alexnet-conv4`` is the default (quick) suite.
SUITES: dict[str, tuple[str, ...]] = {
    "alexnet-conv4": ("alexnet-conv4",),
    "alexnet": tuple(n for n, s in LAYERS.items() if s.model == "alexnet"),
    "vgg16": tuple(n for n, s in LAYERS.items() if s.model == "vgg16" and s.C > 3),
    "vgg16-full": tuple(n for n, s in LAYERS.items() if s.model == "vgg16"),
    "resnet50-1x1": tuple(n for n, s in LAYERS.items() if s.model == "resnet50"),
    "resnet20": tuple(n for n, s in LAYERS.items() if s.model == "resnet20"),
    "textcnn": tuple(n for n, s in LAYERS.items() if s.model == "textcnn"),
    "all": tuple(LAYERS),
}
#: The GPU benchmark's layers (issue 10): VGG-16 with its first layer, ResNet-50 1x1, AlexNet.
SUITES["gpu"] = SUITES["vgg16-full"] + SUITES["resnet50-1x1"] + SUITES["alexnet"]

DEFAULT_SUITE = "alexnet-conv4"


def select_layers(suite: str | None = DEFAULT_SUITE, layers=None) -> list[LayerSpec]:
    """The layer specs of ``suite``, or of the named ``layers`` when given (they win).

    Parameters
    ----------
    suite : str or None
        A key of :data:`SUITES`.
    layers : iterable of str or None
        Names from :data:`LAYERS`; duplicates are dropped, order kept.

    Raises
    ------
    ValueError
        On an unknown suite or layer name; the message lists the known ones.
    """
    if layers:
        unknown = [n for n in layers if n not in LAYERS]
        if unknown:
            raise ValueError(f"unknown layer(s) {unknown}; known layers: {', '.join(LAYERS)}")
        return [LAYERS[n] for n in dict.fromkeys(layers)]
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; known suites: {', '.join(SUITES)}")
    return [LAYERS[n] for n in SUITES[suite]]
