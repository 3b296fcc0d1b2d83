"""Training augmentation for overhead (aerial, satellite) imagery, built from Detectron2's
transforms: vertical and horizontal flips, exact 90-degree rotations, and brightness, contrast
and saturation jitter. ``INPUT.OVERHEAD_AUG`` (:func:`d2kit.config.add_overhead_aug_config`)
turns it on for any project's training; the shared Trainer appends it after Detectron2's resize
and flip."""

from __future__ import annotations

import numpy as np
from detectron2.data import transforms as T

__all__ = [
    "Rotate90Transform",
    "RandomRotation90",
    "RandomSaturationFormat",
    "build_overhead_augmentation",
]


class Rotate90Transform(T.Transform):
    """Rotate an ``height`` x ``width`` image by ``k`` x 90 degrees counter-clockwise (as
    ``np.rot90``): pixels are permuted, not resampled, and boxes map exactly.

    In continuous pixel coordinates (pixel ``(c, r)`` covers ``[c, c+1) x [r, r+1)``) a point
    ``(x, y)`` goes to ``(y, W - x)`` for k=1, ``(W - x, H - y)`` for k=2 and ``(H - y, x)``
    for k=3; the output is ``W x H`` (height x width) for odd k.
    """

    def __init__(self, k: int, height: int, width: int):
        super().__init__()
        self.k = int(k) % 4
        self.height = int(height)
        self.width = int(width)

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        if img.shape[:2] != (self.height, self.width):
            raise ValueError(
                f"Rotate90Transform built for {self.height}x{self.width} (height x width) "
                f"got an image of {img.shape[0]}x{img.shape[1]}"
            )
        return np.ascontiguousarray(np.rot90(img, self.k, axes=(0, 1)))

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.asarray(coords)
        x, y = coords[:, 0], coords[:, 1]
        h, w = self.height, self.width
        if self.k == 0:
            new = (x, y)
        elif self.k == 1:
            new = (y, w - x)
        elif self.k == 2:
            new = (w - x, h - y)
        else:
            new = (h - y, x)
        return np.stack(new, axis=1).astype(coords.dtype, copy=False)

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self.apply_image(segmentation)

    def inverse(self) -> T.Transform:
        h, w = (self.width, self.height) if self.k % 2 else (self.height, self.width)
        return Rotate90Transform(-self.k, h, w)


class RandomRotation90(T.Augmentation):
    """Rotate by 0, 90, 180 or 270 degrees, each with probability 1/4
    (:class:`Rotate90Transform`)."""

    def __init__(self):
        super().__init__()

    def get_transform(self, image):
        k = int(np.random.randint(4))
        if k == 0:
            return T.NoOpTransform()
        return Rotate90Transform(k, image.shape[0], image.shape[1])


class RandomSaturationFormat(T.Augmentation):
    """Scale saturation by a factor drawn uniformly from ``[low, high]``: blend with the grey
    image (ITU-R 601 luma, weights ordered for ``image_format`` "BGR" or "RGB")."""

    def __init__(self, low: float, high: float, image_format: str = "BGR"):
        super().__init__()
        if image_format not in ("BGR", "RGB"):
            raise ValueError(f"saturation needs a BGR or RGB image, got {image_format!r}")
        self.low, self.high, self.image_format = float(low), float(high), image_format

    def get_transform(self, image):
        factor = np.random.uniform(self.low, self.high)
        weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
        if self.image_format == "BGR":
            weights = weights[::-1]
        grey = image[..., :3].astype(np.float32) @ weights
        return T.BlendTransform(src_image=grey[..., None], src_weight=1 - factor, dst_weight=factor)


def _range(cfg_value, key: str) -> tuple[float, float] | None:
    values = tuple(float(v) for v in cfg_value)
    if not values:
        return None
    if len(values) != 2 or not 0 < values[0] <= values[1]:
        raise ValueError(f"INPUT.OVERHEAD_AUG.{key} must be () or (low, high), 0 < low <= high")
    return None if values == (1.0, 1.0) else values


def build_overhead_augmentation(cfg) -> list[T.Augmentation]:
    """The augmentations ``INPUT.OVERHEAD_AUG`` asks for (``[]`` when it is off or absent),
    to append after Detectron2's resize and flip. Flips plus 90-degree rotations give each of
    the 8 symmetries of the square with probability 1/8."""
    aug = cfg.INPUT.get("OVERHEAD_AUG")
    if aug is None or not aug.ENABLED:
        return []
    augs: list[T.Augmentation] = []
    default_flip = cfg.INPUT.RANDOM_FLIP  # "horizontal" (Detectron2's default), "vertical", "none"
    if aug.HORIZONTAL_FLIP and default_flip != "horizontal":
        augs.append(T.RandomFlip(prob=0.5, horizontal=True, vertical=False))
    if aug.VERTICAL_FLIP and default_flip != "vertical":
        augs.append(T.RandomFlip(prob=0.5, horizontal=False, vertical=True))
    if aug.ROTATE_90:
        augs.append(RandomRotation90())
    brightness = _range(aug.BRIGHTNESS, "BRIGHTNESS")
    if brightness:
        augs.append(T.RandomBrightness(*brightness))
    contrast = _range(aug.CONTRAST, "CONTRAST")
    if contrast:
        augs.append(T.RandomContrast(*contrast))
    saturation = _range(aug.SATURATION, "SATURATION")
    if saturation:
        augs.append(RandomSaturationFormat(*saturation, image_format=cfg.INPUT.FORMAT))
    return augs
