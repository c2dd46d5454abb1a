"""PIL images to normalised input batches, the way each backbone was trained, minus the crop.

Every backbone sees a SQUARE resize of the whole image. The usual ImageNet recipe
(resize the short side, then centre-crop) would cut away the image border, and an
industrial defect at the border of a part must still be seen. The aspect ratio is
therefore not kept; nominal and production images of one machine setting share a
camera, so they are distorted the same way.

Work per image is one PIL resize (antialiased, since PIL filters scale with the
reduction factor) and one array view; the batch becomes a tensor in one conversion
and is normalised on the target device with a single fused multiply-add.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

RGB = tuple[float, float, float]

IMAGENET_MEAN: RGB = (0.485, 0.456, 0.406)
IMAGENET_STD: RGB = (0.229, 0.224, 0.225)
# EfficientNet-Lite (TF Lite recipe) maps pixels to [-1, 1]: (x/255 - 0.5) / 0.5.
HALF: RGB = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Preprocess:
    """How one backbone wants its input.

    Attributes:
        size: side of the square input in pixels.
        mean: per-channel mean of pixels scaled to [0, 1].
        std: per-channel standard deviation of pixels scaled to [0, 1].
        resample: PIL filter of the resize (as the model was trained: bilinear for
            the CNNs, bicubic for CLIP).
        channels_last: run the network in NHWC memory format, input and weights
            (measured faster on CPU for the CNNs here).
    """

    size: int
    mean: RGB
    std: RGB
    resample: Image.Resampling = Image.Resampling.BILINEAR
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"input size must be positive, got {self.size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 channels and std > 0, got {self.mean}, {self.std}")

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Resize and stack images into one uint8 batch on the CPU.

        Args:
            images: decoded images; any mode other than RGB is converted to RGB.

        Returns:
            uint8 tensor of shape (n, 3, size, size). Its memory is NHWC (a
            permuted view of the stacked arrays), so no pixel is copied twice.

        Raises:
            TypeError: an element is not a PIL image.
        """
        arrays = [np.asarray(self._resized(image)) for image in images]
        if not arrays:
            return torch.empty((0, 3, self.size, self.size), dtype=torch.uint8)
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)

    def normalise(self, pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
        """uint8 (n, 3, H, W) -> float32 (n, 3, H, W) on `device`, normalised.

        The uint8 batch is moved first, so a GPU receives a quarter of the bytes.
        """
        x = pixels.to(device, non_blocking=True)
        x = x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        scale = torch.tensor([1.0 / (255.0 * s) for s in self.std], device=device).view(1, 3, 1, 1)
        shift = torch.tensor([-m / s for m, s in zip(self.mean, self.std)], device=device).view(1, 3, 1, 1)
        return torch.addcmul(shift, x.float(), scale)

    def tensor(self, images: Sequence[Image.Image], device: torch.device | str = "cpu") -> torch.Tensor:
        """`pixels` then `normalise`: the exact float32 (n, 3, size, size) input the network sees."""
        return self.normalise(self.pixels(images), torch.device(device))

    def _resized(self, image: Image.Image) -> Image.Image:
        if not isinstance(image, Image.Image):
            raise TypeError(f"expected a decoded PIL image, got {type(image).__name__}")
        if image.mode != "RGB":
            image = image.convert("RGB")
        if image.size == (self.size, self.size):
            return image
        return image.resize((self.size, self.size), resample=self.resample)
