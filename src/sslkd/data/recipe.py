"""One multi-crop recipe (DINO's: two global crops, local crops, flip, colour jitter, grayscale,
blur, solarize), resolved for a dataset's channels, normalisation and sizes. All three
augmentation back ends take it: :class:`~sslkd.data.augment.MultiCropTransform` (torchvision, per
image), :class:`~sslkd.data.pil_augment.PILMultiCrop` (PIL's C code in the loader workers) and
:class:`~sslkd.data.batch_augment.BatchMultiCrop` (whole batches on the device)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CropRecipe:
    channels: int
    mean: Sequence[float]
    std: Sequence[float]
    global_size: int
    local_size: int
    global_scale: tuple[float, float] = (0.4, 1.0)  # area share range of the two global crops
    local_number: int = 0  # local crops per image
    local_scale: tuple[float, float] = (0.05, 0.4)
    flip_p: float = 0.5
    color_jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5)  # global 1, global 2, locals
    solarize_p: float = 0.2  # second global crop only
    paired: bool = False  # one crop, plain + colour-jittered (DMT)

    def __post_init__(self) -> None:  # tuples: hashable, and equal however they were given
        for name in ("mean", "std", "global_scale", "local_scale", "blur_p"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @classmethod
    def from_config(cls, aug, img_size: int, channels: int, mean, std, multiple: int = 1) -> CropRecipe:
        """The recipe of an ``aug`` config section (:class:`~sslkd.config.AugConfig`) for images of
        ``img_size`` px: global crops of the image's size unless set, local crops of DINO's 96/224 of
        it rounded to a multiple of ``multiple`` (the ViT patch size) unless set."""
        local = aug.local_crops_size or max(multiple, int(round(img_size * 96 / 224 / multiple)) * multiple)
        return cls(
            channels,
            mean,
            std,
            aug.global_crops_size or img_size,
            local,
            tuple(aug.global_crops_scale),
            aug.local_crops_number,
            tuple(aug.local_crops_scale),
            aug.flip_p,
            aug.color_jitter_p,
            aug.brightness,
            aug.contrast,
            aug.saturation,
            aug.hue,
            aug.grayscale_p,
            tuple(aug.blur_p),
            aug.solarize_p,
            aug.paired,
        )

    def replace(self, **changes) -> CropRecipe:
        return dataclasses.replace(self, **changes)
