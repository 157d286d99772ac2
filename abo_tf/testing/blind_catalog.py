"""A second catalog-image generator, written blind to `synthetic_abo` and `image_edits`: product photos to check
that near-duplicate thresholds tuned on the first generator hold on images it did not make.

`catalog_shots(count, seed)` draws distinct product photographs (OpenCV/NumPy only): one product of ten kinds
(bottle, box, shoe, chair, lamp, mug, bag, phone, rug, t-shirt), built from shaded shapes, textures and printed
logos, on white, light grey, a floor shadow or a plain wall, framed 40-95% of a square, portrait or landscape picture,
with camera noise and JPEG softness. About a fifth of the shots are the hard negatives of real catalogs: another
colour, another angle or another detail (logo, handle, lenses) of an earlier shot's product; `with_families=True`
also returns which shots belong together. No shot is an edit (crop, resize, re-encode) of another.
"""

import dataclasses
import string
from typing import NamedTuple

import cv2
import numpy as np

VARIANT_SHARE = 0.2  # of the shots: another colour, angle or detail of an earlier shot's product
VARIATIONS = ("colour", "angle", "detail")
SUPERSAMPLE = 2  # drawn at twice the size and shrunk with INTER_AREA: antialiased edges without LINE_AA on floats
MIRRORED_KINDS = ("shoe", "chair", "lamp")  # drawn without text: facing left or right is then just a pose
FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_COMPLEX)
# Every shot is held at once (a dict of pixels): 5,000 at side 256 are 1 GB and about 100 s of drawing (20 ms a
# shot, one core, load 3); a mistyped count or side would otherwise fill the memory, after the benchmark's other
# sources had run.
MAX_SHOTS, MAX_SIDE = 5_000, 1_024


@dataclasses.dataclass(frozen=True)
class _Product:
    kind: str
    main: tuple  # BGR in 0-1
    accent: tuple
    trim: tuple
    brand: str
    font: int
    view: float  # 0-1: where the camera stands around the product (each kind reads it its own way)
    mirror: bool
    detail: int  # 0-2: which version of the line's detail (logo shape, handle, lenses...)
    texture_seed: int
    aspect: float  # width / height of the product's bounding box


@dataclasses.dataclass(frozen=True)
class _Scene:
    height: int
    width: int
    background: str  # white, grey, floor or wall
    paper: tuple  # the background's BGR in 0-1
    wall: tuple
    fill: float  # share of the frame's limiting side the product spans
    offset: tuple  # (x, y) as a share of the free margin, -1..1
    shadow: tuple  # (dx, dy, darkness, blur) as shares of the product's height
    noise: float  # camera noise sigma, 0-255 scale
    softness: float  # blur sigma before the JPEG
    quality: int


class ShotPlan(NamedTuple):
    name: str
    family: str  # the name of the family's first shot
    variation: str  # "" for a family's first shot, else one of VARIATIONS


def catalog_shots(count, seed, side=256, with_families=False):
    """Distinct generated product photographs.

    Args:
      count: how many shots.
      seed: the same seed gives byte-identical pixels.
      side: the longer side of every picture, in pixels.
      with_families: also return {name: family}: the shots of one product (colour, angle, detail variants) share a
        family, the name of the family's first shot.

    Returns:
      {"blind-00000": BGR uint8 pixels, ...}, and with `with_families` the family of each name.
    """
    if not (0 <= count <= MAX_SHOTS and 32 <= side <= MAX_SIDE):
        raise ValueError(
            f"catalog_shots needs 0 <= count <= {MAX_SHOTS} and 32 <= side <= {MAX_SIDE}, got count={count}, "
            f"side={side}"
        )
    plans = shot_plans(count, seed)
    products, scenes, shots = {}, {}, {}
    for index, plan in enumerate(plans):
        rng = np.random.default_rng([seed, index])
        if plan.variation:
            products[plan.name], scenes[plan.name] = _vary(products[plan.family], scenes[plan.family], plan, rng)
        else:
            products[plan.name], scenes[plan.name] = _new_product(rng), _new_scene(side, rng)
        shots[plan.name] = _photograph(products[plan.name], scenes[plan.name], rng)
    if with_families:
        return shots, {plan.name: plan.family for plan in plans}
    return shots


def shot_plans(count, seed):
    """Which shots are variants of which earlier product, and how (exactly round(VARIANT_SHARE * count) of them)."""
    rng = np.random.default_rng([seed, 1 << 30])
    variants = round(VARIANT_SHARE * count) if count > 1 else 0
    variant_indices = set((1 + rng.choice(count - 1, size=variants, replace=False)).tolist()) if variants else set()
    plans, firsts = [], []  # firsts grown as the plans are: a list rebuilt a variant made 20,000 plans take 1.4 s
    for index in range(count):
        name = f"blind-{index:05d}"
        if index in variant_indices:
            family = firsts[int(rng.integers(len(firsts)))]
            plans.append(ShotPlan(name, family, VARIATIONS[int(rng.integers(len(VARIATIONS)))]))
        else:
            plans.append(ShotPlan(name, name, ""))
            firsts.append(name)
    return plans


# --- what is photographed -----------------------------------------------------------------------------------------


def _colour(rng, muted=False):
    """A product colour: a saturated hue, a pastel, or black/white/grey (a third of catalog colours are neutral)."""
    if rng.random() < 0.3:
        value = rng.choice([0.75, 0.85, 0.92] if muted else [0.08, 0.2, 0.45, 0.7, 0.92]) + rng.uniform(-0.05, 0.05)
        return (value, value, value)
    saturation = rng.uniform(0.15, 0.4) if muted else rng.uniform(0.45, 0.95)
    value = rng.uniform(0.75, 0.95) if muted else rng.uniform(0.35, 0.95)
    # On float32 pixels OpenCV's hue runs 0-360 and saturation and value 0-1.
    hsv = np.array([[[rng.uniform(0, 360), saturation, value]]], np.float32)
    return tuple(float(channel) for channel in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def _another_colour(colour, rng):
    """A colour variant: redraw until it is clearly not the same colour."""
    while True:
        candidate = _colour(rng)
        if np.abs(np.subtract(candidate, colour)).sum() > 0.45:
            return candidate


ASPECTS = {
    "bottle": (0.3, 0.42),
    "box": (0.7, 1.3),
    "shoe": (2.0, 2.6),
    "chair": (0.6, 0.8),
    "lamp": (0.5, 0.7),
    "mug": (1.15, 1.4),
    "bag": (0.9, 1.3),
    "phone": (0.46, 0.52),
    "rug": (1.4, 1.8),
    "tshirt": (0.95, 1.1),
}


def _new_product(rng):
    kind = str(rng.choice(list(ASPECTS)))
    letters = rng.choice(list(string.ascii_uppercase), size=int(rng.integers(3, 7)))
    return _Product(
        kind=kind,
        main=_colour(rng),
        accent=_colour(rng),
        trim=_colour(rng, muted=True),
        brand="".join(letters),
        font=int(rng.choice(FONTS)),
        view=float(rng.uniform(0, 1)),
        mirror=bool(kind in MIRRORED_KINDS and rng.random() < 0.5),
        detail=int(rng.integers(3)),
        texture_seed=int(rng.integers(1 << 31)),
        aspect=float(rng.uniform(*ASPECTS[kind])),
    )


def _new_scene(side, rng):
    shape = rng.choice(["square", "portrait", "landscape"], p=[0.5, 0.3, 0.2])
    short = int(side * rng.uniform(0.66, 0.85))
    height, width = {"square": (side, side), "portrait": (side, short), "landscape": (short, side)}[str(shape)]
    background = str(rng.choice(["white", "grey", "floor", "wall"], p=[0.5, 0.2, 0.2, 0.1]))
    paper = {"white": 1.0, "grey": rng.uniform(0.88, 0.95), "floor": rng.uniform(0.95, 1.0), "wall": 0.9}[background]
    off_centre = rng.random() < 0.3
    return _Scene(
        height=height,
        width=width,
        background=background,
        paper=(paper, paper, paper) if background != "grey" else tuple(paper + rng.uniform(-0.015, 0.015, 3)),
        wall=_colour(rng, muted=True),
        fill=float(rng.uniform(0.4, 0.95)),
        offset=tuple(rng.uniform(-1, 1, 2)) if off_centre else (0.0, 0.0),
        shadow=(rng.uniform(-0.05, 0.05), rng.uniform(0.0, 0.04), rng.uniform(0.1, 0.35), rng.uniform(0.02, 0.06)),
        noise=float(rng.uniform(0.8, 3.0)),
        softness=float(rng.uniform(0.3, 0.9)),
        quality=int(rng.integers(82, 97)),
    )


def _vary(product, scene, plan, rng):
    """The same product line in another colour (same studio set-up), from another angle, or with another detail."""
    if plan.variation == "colour":
        return dataclasses.replace(product, main=_another_colour(product.main, rng)), scene
    if plan.variation == "angle":
        # Half a turn of `view`: every kind then shows another side (the phone's back, the mug without its handle).
        view = (product.view + 0.5) % 1.0
        fill = float(np.clip(scene.fill + rng.uniform(-0.1, 0.1), 0.4, 0.95))
        # A shoe's other side is its mirror image; other kinds carry print that a mirror would reverse.
        mirror = not product.mirror if product.kind == "shoe" else product.mirror
        return dataclasses.replace(product, view=view, mirror=mirror), dataclasses.replace(scene, fill=fill)
    brand = product.brand if rng.random() < 0.5 else product.brand[::-1] + "X"
    return dataclasses.replace(product, detail=(product.detail + 1) % 3, brand=brand), scene


# --- drawing tools: a layer is (colour HxWx3 float 0-1, alpha HxW float 0-1) ----------------------------------------


def _mask(height, width, draw):
    """A float mask drawn by `draw(uint8 canvas)` with OpenCV primitives at value 255."""
    canvas = np.zeros((height, width), np.uint8)
    draw(canvas)
    return canvas.astype(np.float32) / 255


def _points(fractions, height, width):
    return np.round(np.asarray(fractions, np.float64) * (width, height)).astype(np.int32)


def _polygon(height, width, fractions):
    return _mask(height, width, lambda canvas: cv2.fillPoly(canvas, [_points(fractions, height, width)], 255))


def _rectangle(height, width, left, top, right, bottom):
    return _polygon(height, width, [(left, top), (right, top), (right, bottom), (left, bottom)])


def _ellipse(height, width, centre, axes, thickness=-1, arc=(0, 360)):
    def draw(canvas):
        centre_px = tuple(int(value) for value in _points(centre, height, width))
        axes_px = tuple(max(1, int(value)) for value in _points(axes, height, width))
        cv2.ellipse(canvas, centre_px, axes_px, 0, arc[0], arc[1], 255, thickness)

    return _mask(height, width, draw)


def _paint(layer, mask, colour):
    """Lay `colour` (a BGR tuple or an HxWx3 image) over the layer where `mask` is set."""
    pixels, alpha = layer
    weight = mask[..., None]
    pixels[:] = pixels * (1 - weight) + np.asarray(colour, np.float32) * weight
    alpha[:] = np.maximum(alpha, mask)


def _cylinder(height, width, light, start=0.0, stop=1.0):
    """Brightness of a vertical cylinder spanning columns start..stop, lit from `light` (-1..1): shade and a
    specular stripe, as an HxWx1 factor around 1."""
    across = (np.linspace(0, 1, width, dtype=np.float32) - start) / max(stop - start, 1e-3) * 2 - 1
    across = np.clip(across, -1, 1)
    shade = 0.62 + 0.38 * np.sqrt(1 - across**2) + 0.1 * light * across
    highlight = 0.55 * np.exp(-(((across - 0.55 * light) / 0.09) ** 2))
    return np.broadcast_to((shade + highlight)[None, :, None], (height, width, 1))


def _vertical(height, width, top, bottom):
    """A top-to-bottom brightness ramp, HxWx1."""
    ramp = np.linspace(top, bottom, height, dtype=np.float32)
    return np.broadcast_to(ramp[:, None, None], (height, width, 1))


def _lit(colour, factor):
    """Colour times a brightness factor; above 1 it whitens (a highlight), as glossy surfaces do."""
    base = np.asarray(colour, np.float32) * np.minimum(factor, 1)
    return np.clip(base + (1 - base) * np.maximum(factor - 1, 0), 0, 1)


def _texture(material, height, width, seed):
    """A multiplicative texture around 1: fabric weave, wood grain, brushed metal or leather grain."""
    rng = np.random.default_rng(seed)
    grain = rng.normal(0, 1, (height, width)).astype(np.float32)
    rows, columns = np.mgrid[0:height, 0:width].astype(np.float32)
    if material == "fabric":
        weave = np.sin(columns * rng.uniform(1.2, 1.8)) * np.sin(rows * rng.uniform(1.2, 1.8))
        return (1 + 0.05 * weave + 0.04 * cv2.GaussianBlur(grain, (0, 0), 0.8))[..., None]
    if material == "wood":
        streaks = cv2.GaussianBlur(grain, (0, 0), sigmaX=0.7, sigmaY=max(height / 8, 2))
        rings = np.sin(columns * rng.uniform(0.08, 0.2) + 6 * streaks)
        return (1 + 0.1 * rings + 0.08 * streaks)[..., None]
    if material == "metal":
        return (1 + 0.06 * cv2.GaussianBlur(grain, (0, 0), sigmaX=max(width / 10, 2), sigmaY=0.5))[..., None]
    return (1 + 0.035 * cv2.GaussianBlur(grain, (0, 0), 1.2))[..., None]


def _text(layer, text, centre, size, colour, font, clip=None):
    """Printed text, centred at `centre` (fractions), `size` its height in fractions of the layer; `clip` keeps it
    on its surface (a label, a box face)."""
    height, width = layer[1].shape
    scale = max(size * height / 22, 0.2)
    thickness = max(1, int(round(scale * 2)))
    (text_width, text_height), _ = cv2.getTextSize(text, font, scale, thickness)
    origin = (int(centre[0] * width - text_width / 2), int(centre[1] * height + text_height / 2))
    mask = _mask(height, width, lambda canvas: cv2.putText(canvas, text, origin, font, scale, 255, thickness))
    _paint(layer, mask * clip if clip is not None else mask, colour)


def _logo(layer, shape, centre, radius, colour):
    """A brand mark: a ring, a triangle or a diamond (the detail variants of a line swap it)."""
    height, width = layer[1].shape
    x, y = centre
    radius_y = radius * width / height
    if shape == 0:
        mask = _ellipse(height, width, centre, (radius, radius_y), thickness=max(2, int(radius * width / 3)))
    elif shape == 1:
        mask = _polygon(height, width, [(x, y - radius_y), (x + radius, y + radius_y), (x - radius, y + radius_y)])
    else:
        mask = _polygon(height, width, [(x, y - radius_y), (x + radius, y), (x, y + radius_y), (x - radius, y)])
    _paint(layer, mask, colour)


# --- the products: each draws into an empty layer of its bounding box -----------------------------------------------


def _bottle(product, layer):
    height, width = layer[1].shape
    light = product.view * 2 - 1
    glass = _lit(product.main, _cylinder(height, width, light))
    _paint(layer, _rectangle(height, width, 0.02, 0.36, 0.98, 0.97), glass)
    _paint(layer, _ellipse(height, width, (0.5, 0.97), (0.48, 0.025)), glass)
    _paint(layer, _ellipse(height, width, (0.5, 0.36), (0.48, 0.14), arc=(180, 360)), glass)
    neck = _lit(product.main, _cylinder(height, width, light, 0.33, 0.67))
    _paint(layer, _rectangle(height, width, 0.33, 0.08, 0.67, 0.3), neck)
    cap = _lit(product.trim if product.detail != 2 else product.accent, _cylinder(height, width, light, 0.3, 0.7))
    _paint(layer, _rectangle(height, width, 0.3, 0.0, 0.7, 0.1), cap)
    label = _rectangle(height, width, 0.02, 0.5, 0.98, 0.84)
    _paint(layer, label, _lit(product.accent, _cylinder(height, width, light)))
    # Turning the bottle moves the print round the label: the angle variants' difference.
    across = 0.5 + 0.35 * (0.5 - product.view)
    _text(layer, product.brand[:4], (across, 0.62), 0.05, product.trim, product.font, clip=label)
    _logo(layer, product.detail, (across, 0.75), 0.12, product.main)


def _box(product, layer):
    height, width = layer[1].shape
    depth = 0.12 + 0.3 * product.view  # how much of the side and the top the camera sees
    front = [(0, depth / 2), (1 - depth, depth / 2), (1 - depth, 1), (0, 1)]
    side = [(1 - depth, depth / 2), (1, 0), (1, 1 - depth / 2), (1 - depth, 1)]
    top = [(0, depth / 2), (depth, 0), (1, 0), (1 - depth, depth / 2)]
    texture = _texture("paper", height, width, product.texture_seed)
    _paint(layer, _polygon(height, width, front), _lit(product.main, texture * _vertical(height, width, 1.02, 0.92)))
    _paint(layer, _polygon(height, width, side), _lit(product.main, texture * 0.72))
    _paint(layer, _polygon(height, width, top), _lit(product.main, texture * 1.12))
    face = _polygon(height, width, front)
    centre = (0.5 * (1 - depth), 0.5 + depth / 4)
    stripe = _polygon(height, width, [(0, 0.72), (1 - depth, 0.72), (1 - depth, 0.8), (0, 0.8)])
    _paint(layer, stripe, product.accent)
    _text(layer, product.brand, (centre[0], centre[1] - 0.12), 0.09, product.accent, product.font, clip=face)
    _logo(layer, product.detail, (centre[0], centre[1] + 0.08), 0.1, product.trim)


def _shoe(product, layer):
    height, width = layer[1].shape
    squash = 0.75 + 0.25 * product.view  # a three-quarter view shortens the shoe
    sole = [(0.0, 0.82), (squash, 0.78), (squash, 0.92), (0.85 * squash, 1.0), (0.04, 1.0), (0.0, 0.93)]
    upper = [(0.02, 0.82), (0.02, 0.28), (0.12, 0.22), (0.3, 0.34), (0.42, 0.08), (0.52, 0.1)]
    upper += [(0.62, 0.4), (0.85 * squash, 0.52), (squash, 0.7), (squash, 0.8)]
    fabric = _texture("fabric", height, width, product.texture_seed)
    _paint(layer, _polygon(height, width, upper), _lit(product.main, fabric * _vertical(height, width, 1.15, 0.8)))
    _paint(layer, _polygon(height, width, sole), _lit((0.95, 0.95, 0.93), _vertical(height, width, 1.0, 0.8)))
    toe_cap = _ellipse(height, width, (0.9 * squash, 0.74), (0.12 * squash, 0.09))
    _paint(layer, toe_cap * _polygon(height, width, upper), _lit(product.trim, _vertical(height, width, 1.1, 0.85)))
    for step in range(4):  # laces
        x = 0.4 + 0.06 * step
        lace = _polygon(
            height,
            width,
            [
                (x, 0.16 + 0.07 * step),
                (x + 0.07, 0.2 + 0.07 * step),
                (x + 0.06, 0.24 + 0.07 * step),
                (x - 0.01, 0.2 + 0.07 * step),
            ],
        )
        _paint(layer, lace, product.trim)
    if product.detail == 0:
        stripe = _ellipse(height, width, (0.45, 0.62), (0.25, 0.14), thickness=max(2, height // 14), arc=(10, 170))
    else:
        stripe = _polygon(height, width, [(0.2, 0.75), (0.55, 0.35), (0.6, 0.4), (0.27, 0.75)])
    _paint(layer, stripe, product.accent)
    if product.detail == 2:  # a heel tab in the accent colour
        _paint(layer, _polygon(height, width, [(0.0, 0.3), (0.06, 0.27), (0.07, 0.6), (0.0, 0.62)]), product.accent)


def _chair(product, layer):
    height, width = layer[1].shape
    skew = 0.36 * (product.view - 0.5)  # the camera's side: back and legs shift against the seat
    wood = _lit(product.trim, _texture("wood", height, width, product.texture_seed))
    for x in (0.12 + skew, 0.82 + skew):  # back legs, further away: higher and thinner
        _paint(layer, _rectangle(height, width, x, 0.55, x + 0.05, 0.9), wood * 0.8)
    seat = [(0.15 + skew, 0.52), (0.85 + skew, 0.52), (0.95, 0.65), (0.05, 0.65)]
    upholstery = _lit(product.main, _texture("fabric", height, width, product.texture_seed + 1))
    back = _rectangle(height, width, 0.15 + skew, 0.0, 0.85 + skew, 0.52)
    _paint(layer, back, upholstery * _vertical(height, width, 1.05, 0.85))
    _paint(layer, _polygon(height, width, seat), upholstery * 1.08)
    _paint(layer, _rectangle(height, width, 0.05, 0.65, 0.95, 0.7), wood)
    for x in (0.06, 0.88):
        _paint(layer, _rectangle(height, width, x, 0.7, x + 0.06, 1.0), wood)
    if product.detail != 1:  # arm rests on two of a line's three versions
        for x in (0.0, 0.9):
            _paint(layer, _rectangle(height, width, x, 0.38, x + 0.1, 0.44), wood * 1.1)
    if product.detail == 2:
        _paint(layer, _rectangle(height, width, 0.25 + skew, 0.12, 0.75 + skew, 0.15), product.accent)


def _lamp(product, layer):
    height, width = layer[1].shape
    tilt = 0.35 * (product.view - 0.5)
    metal = _lit(
        product.trim, _texture("metal", height, width, product.texture_seed) * _cylinder(height, width, 0.5, 0.46, 0.54)
    )
    _paint(layer, _rectangle(height, width, 0.47, 0.38, 0.53, 0.93), metal)
    base_colour = _lit(product.trim, _cylinder(height, width, 0.5, 0.2, 0.8))
    if product.detail == 1:
        _paint(layer, _rectangle(height, width, 0.25, 0.9, 0.75, 1.0), base_colour)
    else:
        _paint(layer, _ellipse(height, width, (0.5, 0.95), (0.3, 0.05)), base_colour)
    shade = [(0.22 + tilt, 0.0), (0.78 + tilt, 0.0), (1.0, 0.4), (0.0, 0.4)]
    cloth = _lit(product.main, _texture("fabric", height, width, product.texture_seed) * _cylinder(height, width, -0.3))
    _paint(layer, _polygon(height, width, shade), cloth)
    if product.detail == 2:
        _paint(layer, _polygon(height, width, [(0.02, 0.35), (0.98, 0.35), (1.0, 0.4), (0.0, 0.4)]), product.accent)
    # The camera's height: from above the shade's dark top opening shows, from below its lit inside and the bulb.
    if product.view < 0.5:
        _paint(layer, _ellipse(height, width, (0.5 + tilt, 0.0), (0.28, 0.045)), _lit(product.main, 0.35))
    else:
        _paint(layer, _ellipse(height, width, (0.5, 0.4), (0.5, 0.08)), _lit(product.main, 1.6))
        _paint(layer, _ellipse(height, width, (0.5, 0.37), (0.1, 0.05)), (0.85, 0.97, 1.0))


def _mug(product, layer):
    height, width = layer[1].shape
    handle_side = product.view < 0.5  # from behind, the handle hides
    body_right = 0.76
    ceramic = _lit(product.main, _cylinder(height, width, 0.4, 0.0, body_right))
    if handle_side:
        thickness = max(2, int(0.06 * width)) if product.detail != 1 else max(2, int(0.1 * width))
        _paint(layer, _ellipse(height, width, (0.76, 0.5), (0.18, 0.22), thickness=thickness), ceramic * 0.9)
    body = _polygon(height, width, [(0.0, 0.08), (body_right, 0.08), (body_right, 0.95), (0.0, 0.95)])
    _paint(layer, body, ceramic)
    _paint(layer, _ellipse(height, width, (body_right / 2, 0.95), (body_right / 2, 0.05)), ceramic)
    _paint(layer, _ellipse(height, width, (body_right / 2, 0.08), (body_right / 2, 0.07)), _lit(product.main, 0.55))
    print_x = body_right / 2 + 0.3 * (0.5 - product.view)
    _text(layer, product.brand, (print_x, 0.45), 0.09, product.accent, product.font, clip=body)
    if product.detail != 0:
        _logo(layer, product.detail, (print_x, 0.7), 0.08, product.accent)


def _bag(product, layer):
    height, width = layer[1].shape
    gusset = 0.25 * product.view  # the side panel the camera sees
    leather = _lit(
        product.main, _texture("leather", height, width, product.texture_seed) * _vertical(height, width, 1.1, 0.85)
    )
    handle_thickness = max(2, int(0.05 * width)) if product.detail != 1 else max(2, int(0.025 * width))
    _paint(
        layer,
        _ellipse(height, width, (0.5, 0.38), (0.28, 0.34), thickness=handle_thickness, arc=(180, 360)),
        leather * 0.85,
    )
    _paint(
        layer,
        _polygon(height, width, [(0.92 - gusset, 0.38), (0.92, 0.38), (1.0, 1.0), (1.0 - gusset, 1.0)]),
        leather * 0.7,
    )
    body = [(0.08, 0.38), (0.92 - gusset, 0.38), (1.0 - gusset, 1.0), (0.0, 1.0)]
    _paint(layer, _polygon(height, width, body), leather)
    flap = [(0.08, 0.38), (0.92 - gusset, 0.38), (0.88 - gusset, 0.62), (0.12, 0.62)]
    _paint(layer, _polygon(height, width, flap), leather * 0.92)
    if product.detail != 2:  # a metal buckle on two of the line's versions
        metal = _lit((0.75, 0.72, 0.6), _cylinder(height, width, 0.5, 0.42, 0.56) * 1.1)
        _paint(layer, _rectangle(height, width, 0.42, 0.56, 0.56, 0.68), metal)
    _text(layer, product.brand, (0.5, 0.85), 0.06, product.trim, product.font)


def _phone(product, layer):
    height, width = layer[1].shape
    outline = _mask(height, width, lambda canvas: _rounded_rectangle(canvas, 0.12))
    back_view = product.view >= 0.5
    _paint(layer, outline, _lit(product.main, _vertical(height, width, 1.15, 0.85)))
    if back_view:
        lenses = 1 + product.detail
        bump = [(0.08, 0.04), (0.48, 0.04), (0.48, 0.04 + 0.06 * lenses + 0.02), (0.08, 0.04 + 0.06 * lenses + 0.02)]
        _paint(layer, _polygon(height, width, bump), _lit(product.main, 0.8))
        for lens in range(lenses):
            _paint(layer, _ellipse(height, width, (0.22, 0.08 + 0.06 * lens), (0.1, 0.022)), (0.08, 0.08, 0.1))
        _logo(layer, product.detail, (0.5, 0.5), 0.12, _lit(product.main, 1.3))
        return
    screen = _rectangle(height, width, 0.06, 0.03, 0.94, 0.97)
    wallpaper = np.asarray(product.accent, np.float32) * _vertical(height, width, 1.0, 0.3)
    _paint(layer, screen * outline, wallpaper + 0.3 * _cylinder(height, width, 0.8) - 0.3)
    # The line's versions differ in the front camera: a pill, a punch hole, or a bezel with a speaker grille.
    if product.detail == 0:
        _paint(layer, _ellipse(height, width, (0.5, 0.06), (0.14, 0.014)), (0.02, 0.02, 0.02))
    elif product.detail == 1:
        _paint(layer, _ellipse(height, width, (0.5, 0.06), (0.04, 0.04 * width / height)), (0.02, 0.02, 0.02))
    else:
        _paint(
            layer,
            _rectangle(height, width, 0.06, 0.03, 0.94, 0.1),
            _lit(product.main, 0.3),
        )
        _paint(
            layer,
            _rectangle(height, width, 0.38, 0.055, 0.62, 0.07),
            (0.35, 0.35, 0.35),
        )


def _rounded_rectangle(canvas, radius_share):
    height, width = canvas.shape
    radius = int(radius_share * width)
    cv2.rectangle(canvas, (radius, 0), (width - radius, height), 255, -1)
    cv2.rectangle(canvas, (0, radius), (width, height - radius), 255, -1)
    for x, y in (
        (radius, radius),
        (width - radius, radius),
        (radius, height - radius),
        (width - radius, height - radius),
    ):
        cv2.circle(canvas, (x, y), radius, 255, -1)


def _rug(product, layer):
    height, width = layer[1].shape
    flat_height, flat_width = height, int(width * 0.9)
    flat = (np.zeros((flat_height, flat_width, 3), np.float32), np.zeros((flat_height, flat_width), np.float32))
    wool = _texture("fabric", flat_height, flat_width, product.texture_seed)
    _paint(flat, np.ones((flat_height, flat_width), np.float32), _lit(product.main, wool))
    _paint(
        flat,
        _rectangle(flat_height, flat_width, 0.06, 0.08, 0.94, 0.92),
        _lit(product.accent, wool),
    )
    _paint(
        flat,
        _rectangle(flat_height, flat_width, 0.12, 0.18, 0.88, 0.82),
        _lit(product.trim, wool),
    )
    motif = (
        [(0.5, 0.25), (0.8, 0.5), (0.5, 0.75), (0.2, 0.5)]
        if product.detail != 1
        else [(0.3, 0.3), (0.7, 0.3), (0.7, 0.7), (0.3, 0.7)]
    )
    _paint(flat, _polygon(flat_height, flat_width, motif), _lit(product.main, wool))
    if product.detail == 2:
        _paint(flat, _ellipse(flat_height, flat_width, (0.5, 0.5), (0.08, 0.1)), _lit(product.accent, wool))
    # Seen from the front at an angle: the far edge is narrower and the rug foreshortened.
    far = 0.1 + 0.25 * product.view
    corners = np.float32(
        [
            [far * width, 0.35 * height * product.view],
            [(1 - far) * width, 0.35 * height * product.view],
            [width, height],
            [0, height],
        ]
    )
    source = np.float32([[0, 0], [flat_width, 0], [flat_width, flat_height], [0, flat_height]])
    warp = cv2.getPerspectiveTransform(source, corners)
    layer[0][:] = cv2.warpPerspective(flat[0], warp, (width, height), flags=cv2.INTER_LINEAR)
    layer[1][:] = cv2.warpPerspective(flat[1], warp, (width, height), flags=cv2.INTER_LINEAR)


def _tshirt(product, layer):
    height, width = layer[1].shape
    outline = [(0.3, 0.0), (0.4, 0.02), (0.6, 0.02), (0.7, 0.0), (1.0, 0.15), (0.9, 0.38), (0.78, 0.3), (0.78, 1.0)]
    outline += [(0.22, 1.0), (0.22, 0.3), (0.1, 0.38), (0.0, 0.15)]
    folds = 1 + 0.06 * np.sin(np.linspace(0, 9, width, dtype=np.float32))[None, :, None]
    cotton = _lit(product.main, _texture("fabric", height, width, product.texture_seed) * folds)
    _paint(layer, _polygon(height, width, outline), cotton)
    back_view = product.view >= 0.5
    collar_depth = 0.035 if back_view else 0.09
    _paint(layer, _ellipse(height, width, (0.5, 0.0), (0.11, collar_depth)), _lit(product.main, 0.5))
    _paint(
        layer,
        _ellipse(height, width, (0.5, 0.0), (0.13, collar_depth + 0.02), thickness=max(2, height // 60)),
        _lit(product.trim, 0.9),
    )
    if product.detail == 1:  # hems on the sleeves: seen from the front and from the back
        for hem in (
            [(0.0, 0.15), (0.04, 0.13), (0.14, 0.36), (0.1, 0.38)],
            [(1.0, 0.15), (0.96, 0.13), (0.86, 0.36), (0.9, 0.38)],
        ):
            _paint(layer, _polygon(height, width, hem), _lit(product.trim, 0.9))
    if back_view:  # the line's third version carries its brand across the back
        if product.detail == 2:
            _text(layer, product.brand, (0.5, 0.2), 0.06, product.accent, product.font)
        return
    _text(layer, product.brand, (0.5, 0.35), 0.07, product.accent, product.font)
    _logo(layer, product.detail, (0.5, 0.52), 0.09, product.accent)


DRAWERS = {
    "bottle": _bottle,
    "box": _box,
    "shoe": _shoe,
    "chair": _chair,
    "lamp": _lamp,
    "mug": _mug,
    "bag": _bag,
    "phone": _phone,
    "rug": _rug,
    "tshirt": _tshirt,
}


# --- the photograph -------------------------------------------------------------------------------------------------


def _product_box(product, scene, height, width):
    """(top, left, box height, box width) of the product in the frame: `fill` of the limiting side, off-centre by
    `offset` of the margin left."""
    scale = scene.fill * min(height, width / product.aspect)
    box_height, box_width = max(8, int(scale)), max(8, int(scale * product.aspect))
    top = int((height - box_height) / 2 * (1 + scene.offset[1]))
    left = int((width - box_width) / 2 * (1 + scene.offset[0]))
    if scene.background in ("floor", "wall"):  # stands on the floor, in the lower part of the frame
        top = int(min(height - box_height, (height - box_height) * 0.75 + 0.02 * height))
    return top, left, box_height, box_width


def _background(scene, height, width):
    pixels = np.empty((height, width, 3), np.float32)
    pixels[:] = scene.paper
    if scene.background == "floor":  # a sweep: the paper darkens slightly towards the top
        pixels *= _vertical(height, width, 0.94, 1.0)
    if scene.background == "wall":
        horizon = int(height * 0.62)
        pixels[:horizon] = np.asarray(scene.wall, np.float32) * _vertical(horizon, width, 0.95, 1.05)
        pixels[horizon:] = 0.93 * _vertical(height - horizon, width, 0.9, 1.0)
    return pixels


def _shadow(alpha, scene, box, height, width):
    """A soft shadow: the product's silhouette shifted and blurred, or squashed onto the floor under it."""
    top, left, box_height, box_width = box
    dx, dy, darkness, blur = scene.shadow
    silhouette = np.zeros((height, width), np.float32)
    if scene.background in ("floor", "wall"):
        floor_height = max(2, box_height // 8)
        squashed = cv2.resize(alpha, (box_width, floor_height), interpolation=cv2.INTER_AREA)
        row = min(height - floor_height, top + box_height - floor_height // 2)
        _place(silhouette, squashed, row, left)
        darkness *= 1.5
    else:
        _place(silhouette, alpha, top + int(dy * box_height), left + int(dx * box_height))
    soft = cv2.GaussianBlur(silhouette, (0, 0), max(1.0, blur * box_height))
    return 1 - darkness * soft


def _place(canvas, patch, top, left):
    """Add `patch` into `canvas` at (top, left), clipped to the canvas."""
    height, width = canvas.shape[:2]
    rows = slice(max(0, top), min(height, top + patch.shape[0]))
    columns = slice(max(0, left), min(width, left + patch.shape[1]))
    canvas[rows, columns] = np.maximum(
        canvas[rows, columns], patch[rows.start - top : rows.stop - top, columns.start - left : columns.stop - left]
    )


def _photograph(product, scene, rng):
    """Background, shadow, product, then the camera: downsampling, softness, noise, JPEG."""
    height, width = scene.height * SUPERSAMPLE, scene.width * SUPERSAMPLE
    box = _product_box(product, scene, height, width)
    layer = (np.zeros((box[2], box[3], 3), np.float32), np.zeros((box[2], box[3]), np.float32))
    DRAWERS[product.kind](product, layer)
    if product.mirror:
        layer = (layer[0][:, ::-1], layer[1][:, ::-1])
    pixels = _background(scene, height, width)
    if scene.background != "white" or rng.random() < 0.6:
        pixels *= _shadow(layer[1], scene, box, height, width)[..., None]
    alpha = np.zeros((height, width), np.float32)
    colour = np.zeros((height, width, 3), np.float32)
    _place(alpha, layer[1], box[0], box[1])
    _place(colour, layer[0] * layer[1][..., None], box[0], box[1])
    pixels = pixels * (1 - alpha[..., None]) + colour
    return _camera(pixels, scene, rng)


def _camera(pixels, scene, rng):
    small = cv2.resize(pixels, (scene.width, scene.height), interpolation=cv2.INTER_AREA) * 255
    small = cv2.GaussianBlur(small, (0, 0), scene.softness)
    small += rng.normal(0, scene.noise, small.shape).astype(np.float32)
    encoded = cv2.imencode(
        ".jpg", np.clip(np.round(small), 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, scene.quality]
    )[1]
    return cv2.imdecode(encoded, cv2.IMREAD_COLOR)
