"""The DINO/iBOT multi-crop recipe on PIL images, for photos decoded per item by loader workers.

The recipe of :class:`sslkd.data.augment.MultiCropTransform` (torchvision's ``RandomResizedCrop``
parameters, flip, colour jitter in random order with p=0.8, grayscale, Gaussian blur with sigma
scaled to the crop, solarize on the second global crop), applied with PIL's C code on 8-bit
images: ``resize`` with a box (bicubic, as DINO), ``ImageEnhance``, a colour matrix for the hue,
``ImageFilter.GaussianBlur``. Crops come out as **uint8** tensors; normalisation happens once per
batch on the training device, which also sends 4x fewer bytes to a GPU. With ``crop_only`` the
workers only crop and flip, and the colour ops run batched on the device
(:meth:`sslkd.data.batch_augment.BatchMultiCrop.colour`, ``data.augment_on: device``).

Why not the tensor pipeline for photos: torchvision v2 on uint8 tensors ran 44 img/s per core
where DINO's own PIL pipeline ran 61 (``benchmarks/folder_loader.py speed``); the hue through
HSV alone costs DINO's pipeline ~7 ms of its ~16 ms per image.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from torchvision.transforms import v2

from sslkd.data.folder import pil_to_uint8
from sslkd.data.recipe import CropRecipe


def _u(lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(()))


_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_FROM_YIQ = np.linalg.inv(_TO_YIQ)


def shift_hue(im: Image.Image, shift: float) -> Image.Image:
    """Rotate the hue by ``shift`` of a full turn: a rotation of the chroma plane in YIQ space,
    one 3 x 3 colour matrix in PIL's C code (0.15 ms at 224 px where torchvision's HSV round trip
    takes 2.3 ms; the batch path, ``rotate_hue``, does the same rotation)."""
    a = 2 * np.pi * shift
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    m = _FROM_YIQ @ rot @ _TO_YIQ
    return im.convert("RGB", tuple(float(v) for row in m for v in (*row, 0.0)))


class PILMultiCrop:
    """PIL image -> list of uint8 ``[C, s, s]`` crops (globals first, then locals) of a
    :class:`~sslkd.data.recipe.CropRecipe`."""

    def __init__(self, recipe: CropRecipe, crop_only: bool = False) -> None:
        r = self.recipe = recipe
        if r.paired:
            raise ValueError("paired views (DMT) are made by MultiCropTransform")
        self.crop_only = crop_only  # crops and flips only: colour on the batch (BatchMultiCrop.colour)
        self.channels, self.global_size, self.local_size = r.channels, r.global_size, r.local_size
        self.local_number, self.flip_p, self.jitter_p = r.local_number, r.flip_p, r.color_jitter_p
        self.brightness, self.contrast, self.saturation, self.hue = r.brightness, r.contrast, r.saturation, r.hue
        self.gray_p, self.blur_p, self.solarize_p = r.grayscale_p, r.blur_p, r.solarize_p
        self.rrc_global = v2.RandomResizedCrop(r.global_size, scale=r.global_scale)  # parameters only
        self.rrc_local = v2.RandomResizedCrop(r.local_size, scale=r.local_scale)

    @classmethod
    def from_transform(cls, t, crop_only: bool = False) -> PILMultiCrop:
        """The PIL twin of a :class:`~sslkd.data.augment.MultiCropTransform` (same recipe)."""
        return cls(t.recipe, crop_only=crop_only)

    def _jitter(self, im: Image.Image) -> Image.Image:
        ops = [(ImageEnhance.Brightness, self.brightness), (ImageEnhance.Contrast, self.contrast)]
        if self.channels == 3:
            ops += [(ImageEnhance.Color, self.saturation), (None, self.hue)]
        factors = [_u(-f, f) if op is None else _u(max(0.0, 1 - f), 1 + f) for op, f in ops]
        for k in torch.randperm(len(ops)).tolist():  # torchvision's ColorJitter: a random order
            op, f = ops[k][0], factors[k]
            im = shift_hue(im, f) if op is None else op(im).enhance(f)
        return im

    def _view(
        self, im: Image.Image, size: int, rrc: v2.RandomResizedCrop, blur_p: float, solarize_p: float = 0.0
    ) -> torch.Tensor:
        p = rrc.make_params([im])
        box = (p["left"], p["top"], p["left"] + p["width"], p["top"] + p["height"])
        c = im.resize((size, size), Image.BICUBIC, box=box, reducing_gap=3.0)
        if float(torch.rand(())) < self.flip_p:
            c = c.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.crop_only:
            return pil_to_uint8(c)
        if float(torch.rand(())) < self.jitter_p:
            c = self._jitter(c)
        if self.channels == 3 and float(torch.rand(())) < self.gray_p:
            c = c.convert("L").convert("RGB")
        if float(torch.rand(())) < blur_p:
            c = c.filter(ImageFilter.GaussianBlur(_u(0.1, max(0.2, 2.0 * size / 224))))
        if solarize_p and float(torch.rand(())) < solarize_p:
            c = ImageOps.solarize(c, 128)
        return pil_to_uint8(c)

    def __call__(self, im: Image.Image) -> list[torch.Tensor]:
        g = self.global_size
        crops = [
            self._view(im, g, self.rrc_global, self.blur_p[0]),
            self._view(im, g, self.rrc_global, self.blur_p[1], self.solarize_p),
        ]
        crops += [self._view(im, self.local_size, self.rrc_local, self.blur_p[2]) for _ in range(self.local_number)]
        return crops
