"""Visual transforms for benchmark augmentation (Pillow + numpy, offline, seeded).

* ``figstep`` / ``figstep_pro`` — typographic attacks via :mod:`mmsafe.attacks.typography`
  (the instruction drawn as an image, the text prompt benign; FigStep-Pro cuts the figure
  into sub-figures).
* perturbations of an existing image: ``noise`` (Gaussian, sigma in 0–255 units), ``blur``
  (Gaussian radius), ``jpeg`` (re-encode at a quality), ``rotate`` (degrees, expanded canvas).
* replacements: ``blank`` (a plain white image — does the model answer the text alone?) and
  ``unrelated`` (a seeded abstract image of shapes, unrelated to the request).

:func:`apply_visual` returns a :class:`VisualResult` with the image(s) and the text prompt
to send with them (the original text, or the typographic attack's benign prompt).
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from mmsafe.attacks import typography

__all__ = ["VISUAL_TRANSFORMS", "VisualResult", "add_noise", "apply_visual", "blank_image", "blur", "jpeg",
           "lookup_visual", "rotate", "unrelated_image", "visual_transform_names"]

VISUAL_TRANSFORMS = ("figstep", "figstep_pro", "noise", "blur", "jpeg", "rotate", "blank", "unrelated")
NEEDS_IMAGE = ("noise", "blur", "jpeg", "rotate")


@dataclass
class VisualResult:
    """The image(s) to send and the text prompt to send with them, with provenance."""

    method: str
    images: list[Image.Image]
    text: str
    provenance: dict[str, Any] = field(default_factory=dict)


def add_noise(img: Image.Image, sigma: float = 25.0, seed: int = 0) -> Image.Image:
    a = np.asarray(img.convert("RGB"), dtype=np.float32)
    rng = np.random.default_rng(seed)
    a = a + rng.normal(0.0, sigma, a.shape).astype(np.float32)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")


def blur(img: Image.Image, radius: float = 2.0) -> Image.Image:
    return img.convert("RGB").filter(ImageFilter.GaussianBlur(radius))


def jpeg(img: Image.Image, quality: int = 20) -> Image.Image:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out.convert("RGB")


def rotate(img: Image.Image, degrees: float = 15.0) -> Image.Image:
    return img.convert("RGB").rotate(degrees, expand=True, fillcolor=(255, 255, 255),
                                      resample=Image.Resampling.BICUBIC)


def blank_image(size: int | tuple[int, int] = 512, color: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    wh = (size, size) if isinstance(size, int) else size
    return Image.new("RGB", wh, color)


def unrelated_image(seed: int = 0, size: int = 512) -> Image.Image:
    """A seeded abstract picture (gradient background, random ellipses and rectangles)."""
    rng = random.Random(seed)
    c1 = tuple(rng.randrange(256) for _ in range(3))
    c2 = tuple(rng.randrange(256) for _ in range(3))
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    grad = (np.asarray(c1, np.float32) * (1 - t) + np.asarray(c2, np.float32) * t)
    arr = np.broadcast_to(grad, (size, size, 3)).astype(np.uint8)
    img = Image.fromarray(np.ascontiguousarray(arr), "RGB")
    d = ImageDraw.Draw(img)
    for _ in range(rng.randint(4, 9)):
        x0, y0 = rng.randrange(size), rng.randrange(size)
        x1, y1 = min(size - 1, x0 + rng.randint(20, size // 2)), min(size - 1, y0 + rng.randint(20, size // 2))
        fill = tuple(rng.randrange(256) for _ in range(3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)((x0, y0, x1, y1), fill=fill)
    return img


# --------------------------------------------------------------------------- registered transforms
# Each is registered in the "attacks" registry (type "visual", mmsafe.attacks.registry_entries)
# and looked up there by name, like a plugin's:
# ``fn(*, text, instruction, image, seed, options) -> VisualResult``.


def _need(method: str, image: Image.Image | None) -> Image.Image:
    if image is None:
        raise ValueError(f"visual transform {method!r} needs an image")
    return image


def transform_figstep(*, text: str, instruction: str | None, image: Image.Image | None, seed: int,
                      options: dict[str, Any]) -> VisualResult:
    """FigStep: the instruction drawn as a numbered list to complete; the text prompt is benign."""
    img = typography.figstep_image(instruction or text, size=int(options.get("size", 760)))
    return VisualResult("figstep", [img], typography.FIGSTEP_PROMPT, {"typography": "figstep"})


def transform_figstep_pro(*, text: str, instruction: str | None, image: Image.Image | None, seed: int,
                          options: dict[str, Any]) -> VisualResult:
    """FigStep-Pro: the FigStep figure cut into ``parts`` sub-figures."""
    n = int(options.get("parts", 3))
    parts = typography.split_figstep(instruction or text, n, size=int(options.get("size", 760)),
                                     direction=str(options.get("direction", "vertical")))
    return VisualResult("figstep_pro", parts, typography.FIGSTEP_PRO_PROMPT, {"typography": "figstep_pro", "parts": n})


def transform_blank(*, text: str, instruction: str | None, image: Image.Image | None, seed: int,
                    options: dict[str, Any]) -> VisualResult:
    """A plain white image instead of the item's (does the model answer the text alone?)."""
    return VisualResult("blank", [blank_image(int(options.get("size", 512)))], text, {})


def transform_unrelated(*, text: str, instruction: str | None, image: Image.Image | None, seed: int,
                        options: dict[str, Any]) -> VisualResult:
    """A seeded abstract image unrelated to the request."""
    return VisualResult("unrelated", [unrelated_image(seed, int(options.get("size", 512)))], text, {"seed": seed})


def transform_noise(*, text: str, instruction: str | None, image: Image.Image | None, seed: int,
                    options: dict[str, Any]) -> VisualResult:
    """Gaussian noise on the item's image (``sigma`` in 0–255 units)."""
    sigma = float(options.get("sigma", 25.0))
    return VisualResult("noise", [add_noise(_need("noise", image), sigma, seed)], text, {"sigma": sigma, "seed": seed})


def transform_blur(*, text: str, instruction: str | None, image: Image.Image | None, seed: int,
                   options: dict[str, Any]) -> VisualResult:
    """Gaussian blur of the item's image (``radius``)."""
    r = float(options.get("radius", 2.0))
    return VisualResult("blur", [blur(_need("blur", image), r)], text, {"radius": r})


def transform_jpeg(*, text: str, instruction: str | None, image: Image.Image | None, seed: int,
                   options: dict[str, Any]) -> VisualResult:
    """The item's image re-encoded as JPEG at ``quality``."""
    q = int(options.get("quality", 20))
    return VisualResult("jpeg", [jpeg(_need("jpeg", image), q)], text, {"quality": q})


def transform_rotate(*, text: str, instruction: str | None, image: Image.Image | None, seed: int,
                     options: dict[str, Any]) -> VisualResult:
    """The item's image rotated by ``degrees`` (canvas expanded, white fill)."""
    deg = float(options.get("degrees", 15.0))
    return VisualResult("rotate", [rotate(_need("rotate", image), deg)], text, {"degrees": deg})


def visual_transform_names() -> list[str]:
    """Registered visual transforms (built-ins first, in their documented order)."""
    from mmsafe.attacks.registry_entries import attack_names
    order = {n: i for i, n in enumerate(VISUAL_TRANSFORMS)}
    return sorted(attack_names(("visual",)), key=lambda n: (order.get(n, len(order)), n))


def lookup_visual(method: str) -> Any:
    """The registered (type ``visual``) or ``module.path:Name`` transform; ValueError naming the choices
    (a plugin that cannot be loaded: its one-line PluginError, also a ValueError)."""
    from mmsafe.attacks.registry_entries import find_attack
    from mmsafe.registry import is_reference
    found = find_attack(method, ("visual",))
    if found is not None:
        return found[0]
    if is_reference(method):
        raise ValueError(f"{method}: not a visual transform")
    raise ValueError(f"unknown visual transform {method!r}; choose one of {', '.join(visual_transform_names())} "
                     "(or module.path:Name)")


def apply_visual(method: str, *, text: str, instruction: str | None = None, image: Image.Image | None = None,
                 seed: int = 0, options: dict[str, Any] | None = None) -> VisualResult:
    """Apply a visual transform (registered in the "attacks" registry, or ``module.path:Name``).

    ``text`` is the item's text prompt, ``instruction`` the harmful instruction to draw for
    typographic attacks (defaults to ``text``), ``image`` the item's image for
    perturbations. Raises ValueError for an unknown method or a perturbation with no image.
    """
    fn = lookup_visual(method)
    res = fn(text=text, instruction=instruction, image=image, seed=seed, options=dict(options or {}))
    if isinstance(res, VisualResult):
        return res
    from mmsafe.registry import (
        PluginError,  # a ValueError: the build counts it as a failed variant
    )
    raise PluginError(f"visual transform {method!r} returned {type(res).__name__}, not a VisualResult")
