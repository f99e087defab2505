"""DINO/iBOT multi-crop augmentation of a whole uint8 batch at once, on the training device.

The same recipe as :class:`sslkd.data.augment.MultiCropTransform` (random resized crops, flip,
colour jitter with p=0.8, grayscale, Gaussian blur, solarize on the second global crop), with
every random parameter drawn per image but applied to the batch in a few tensor ops: no per-image
Python, no loader workers, and on a GPU the pixels never leave the device. Differences from the
per-image torchvision path, kept because they vectorise:

- crops are resampled by ``torchvision.ops.roi_align`` (bilinear, averaging ``ceil(box/out)``
  samples per output pixel, i.e. area-antialiased), not bicubic;
- the four jitter operations run in a fixed order (brightness, contrast, saturation, hue)
  instead of torchvision's random order; hue is a rotation in YIQ space;
- a crop whose 10 draws all fall outside the image is the whole image (torchvision: a centre crop
  at the clamped aspect ratio).

Draws come from a generator seeded by ``key`` (run seed, epoch, batch position), so a resumed run
sees the views the uninterrupted run would have seen.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from sslkd.data.recipe import CropRecipe

_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale


class BatchMultiCrop:
    """``__call__(images uint8 [B, C, H, W], key: int) -> list of float [B, C, s, s]`` crops
    (two globals, then the locals; or ``[plain, jittered]`` of one crop when ``paired``)."""

    def __init__(self, recipe: CropRecipe) -> None:
        r = self.recipe = recipe
        self.channels, self.mean, self.std = r.channels, r.mean, r.std
        self.global_size, self.local_size, self.local_number = r.global_size, r.local_size, r.local_number
        self.global_scale, self.local_scale = r.global_scale, r.local_scale
        self.flip_p, self.jitter_p, self.gray_p = r.flip_p, r.color_jitter_p, r.grayscale_p
        self.brightness, self.contrast, self.saturation, self.hue = r.brightness, r.contrast, r.saturation, r.hue
        self.blur_p, self.solarize_p, self.paired = r.blur_p, r.solarize_p, r.paired
        if r.paired:  # DMT: the student's view is colour-jittered only, never turned gray
            self.gray_p = 0.0

    @classmethod
    def from_transform(cls, t) -> BatchMultiCrop:
        """The batch twin of a :class:`~sslkd.data.augment.MultiCropTransform` (same recipe)."""
        return cls(t.recipe)

    # ------------------------------------------------------------------ draws
    def _u(self, g: torch.Generator, n: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=g, device=g.device)

    def crop_boxes(self, g: torch.Generator, n: int, h: int, w: int, scale: tuple[float, float]) -> torch.Tensor:
        """RandomResizedCrop boxes ``[n, 4]`` (x1, y1, x2, y2): area share ~ U(scale), log aspect
        ~ U(log 3/4, log 4/3), first of 10 draws that fits, else the whole image."""
        tries = 10
        area = h * w * self._u(g, n * tries, *scale)
        ratio = torch.exp(self._u(g, n * tries, math.log(3 / 4), math.log(4 / 3)))
        cw, ch = torch.sqrt(area * ratio).round(), torch.sqrt(area / ratio).round()
        ok = ((cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)).reshape(n, tries)
        first = torch.where(ok.any(1), ok.float().argmax(1), -1)
        pick = first.clamp_min(0) + torch.arange(n, device=g.device) * tries
        cw, ch = torch.where(first >= 0, cw[pick], float(w)), torch.where(first >= 0, ch[pick], float(h))
        x1 = torch.floor(self._u(g, n) * (w - cw + 1))
        y1 = torch.floor(self._u(g, n) * (h - ch + 1))
        return torch.stack([x1, y1, x1 + cw, y1 + ch], 1)

    # ------------------------------------------------------------------ ops
    def _crop(self, x: torch.Tensor, boxes: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
        idx = torch.arange(len(x), device=x.device, dtype=x.dtype)[:, None]
        out = roi_align(x, torch.cat([idx, boxes.to(x.dtype)], 1), size, 1.0, -1, aligned=True)
        flip = (self._u(g, len(x)) < self.flip_p)[:, None, None, None]
        return torch.where(flip, out.flip(-1), out)

    def _gray(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            return x
        w = torch.tensor(_GRAY, device=x.device, dtype=x.dtype)[None, :, None, None]
        return (x * w).sum(1, keepdim=True)

    def _jitter(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n = len(x)
        on = (self._u(g, n) < self.jitter_p)[:, None, None, None]
        b = self._u(g, n, max(0.0, 1 - self.brightness), 1 + self.brightness)[:, None, None, None]
        c = self._u(g, n, max(0.0, 1 - self.contrast), 1 + self.contrast)[:, None, None, None]
        s = self._u(g, n, max(0.0, 1 - self.saturation), 1 + self.saturation)[:, None, None, None]
        hue = self._u(g, n, -self.hue, self.hue)
        y = (x * b).clamp(0, 1)
        mean = self._gray(y).mean((1, 2, 3), keepdim=True)
        y = ((y - mean) * c + mean).clamp(0, 1)
        if x.shape[1] == 3:
            gray = self._gray(y)
            y = ((y - gray) * s + gray).clamp(0, 1)
            y = rotate_hue(y, hue * 2 * math.pi).clamp(0, 1)
            y = torch.where(on, y, x)
            to_gray = (self._u(g, n) < self.gray_p)[:, None, None, None]
            return torch.where(to_gray, self._gray(y).expand_as(y), y)
        return torch.where(on, y, x)

    def _blur(self, x: torch.Tensor, p: float, size: int, g: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        on = self._u(g, n) < p
        sigma = self._u(g, n, 0.1, max(0.2, 2.0 * size / 224))
        if p <= 0:
            return x
        k = max(3, int(round(0.1 * size)) | 1)
        t = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
        kern = torch.exp(-(t[None] ** 2) / (2 * sigma.to(x.dtype)[:, None] ** 2))
        kern = (kern / kern.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [n*c, k]
        y = F.pad(x.reshape(1, n * c, h, w), (k // 2,) * 4, mode="reflect")
        y = F.conv2d(y, kern[:, None, :, None], groups=n * c)
        y = F.conv2d(y, kern[:, None, None, :], groups=n * c).reshape(n, c, h, w)
        return torch.where(on[:, None, None, None], y, x)

    def _solarize(self, x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
        on = (self._u(g, len(x)) < p)[:, None, None, None]
        return torch.where(on & (x >= 128 / 255), 1 - x, x)

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype)[None, :, None, None]
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype)[None, :, None, None]
        return (x - mean) / std

    # ------------------------------------------------------------------ call
    def __call__(self, images: torch.Tensor, key: int) -> list[torch.Tensor]:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"expected uint8 images [B, C, H, W], got {images.dtype} {tuple(images.shape)}")
        g = torch.Generator(images.device).manual_seed(key)
        x = images.float() / 255
        n, _, h, w = x.shape
        if self.paired:
            crop = self._crop(x, self.crop_boxes(g, n, h, w, self.global_scale), self.global_size, g)
            return [self._finish(crop), self._finish(self._jitter(crop, g))]
        views = []
        for i, (size, scale) in enumerate(
            [(self.global_size, self.global_scale)] * 2 + [(self.local_size, self.local_scale)] * self.local_number
        ):
            views.append(self._colour(self._crop(x, self.crop_boxes(g, n, h, w, scale), size, g), i, g))
        return views

    def _colour(self, v: torch.Tensor, i: int, g: torch.Generator) -> torch.Tensor:
        """View ``i``'s photometric ops (jitter, grayscale, blur, solarize on the second global),
        then normalisation."""
        v = self._blur(self._jitter(v, g), self.blur_p[min(i, 2)], v.shape[-1], g)
        if i == 1:
            v = self._solarize(v, self.solarize_p, g)
        return self._finish(v)

    def colour(self, crops: list[torch.Tensor], key: int) -> list[torch.Tensor]:
        """The photometric half for views already cropped and flipped per image (uint8 ``[B, C, s, s]``
        each, globals first: loader workers cut them from photos of any size), drawn from ``key``."""
        g = torch.Generator(crops[0].device).manual_seed(key)
        return [self._colour(c.float() / 255, i, g) for i, c in enumerate(crops)]


def rotate_hue(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate the chroma of RGB ``x [B, 3, H, W]`` by ``angle [B]`` radians in YIQ space."""
    to_yiq = torch.tensor(
        [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=x.device, dtype=x.dtype
    )
    cos, sin = torch.cos(angle).to(x.dtype), torch.sin(angle).to(x.dtype)
    rot = torch.zeros(len(x), 3, 3, device=x.device, dtype=x.dtype)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    m = torch.linalg.inv(to_yiq) @ rot @ to_yiq  # [B, 3, 3]
    return torch.einsum("bij,bjhw->bihw", m, x)
