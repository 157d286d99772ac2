"""Synthetic ABO data in the real layout, with every known quirk planted.

Nobody here can download the real Amazon Berkeley Objects data, so the tests,
the demo and the benchmarks run on this. `python -m abo_tf.sample OUT_DIR`
writes what a user gets from the ABO downloads (docs/abo-format.md): the
extracted folders, or with `--tar` only `abo-listings.tar` and
`abo-images-small.tar`. Every quirk the real data is known to have is planted
at least once, and `generate_sample` returns a "truth" dict saying exactly
what was planted, so a test can check that each one is counted.

The output is a function of the arguments only: the same arguments give the
same bytes. gzip and tar headers carry fixed times and owners, the plan (who
references which image) comes from one generator seeded with the seed, and
each image from its own generator seeded with (seed, image number), so the
number of worker processes does not change a byte.
"""

import bisect
import collections
import dataclasses
import functools
import gzip
import hashlib
import io
import json
import multiprocessing
import os
import random
import string
import tarfile

import numpy as np

from abo_tf.common.errors import UserInputError
from abo_tf.testing import image_edits

DEFAULT_LISTINGS = 300
DEFAULT_SEED = 0
DEFAULT_MAX_SIDE = 256
MIN_LISTINGS = 100  # fewer cannot carry every quirk next to a long tail
MIN_MAX_SIDE = 32

LISTINGS_DIR = "listings/metadata"
IMAGES_DIR = "images/small"
IMAGES_CSV = "images/metadata/images.csv.gz"
IMAGES_CSV_HEADER = ("image_id", "height", "width", "path")
LISTINGS_TAR = "abo-listings.tar"
IMAGES_TAR = "abo-images-small.tar"
NUM_LISTINGS_FILES = 16

# Fixed tar header fields: 2022-06-01, about when ABO was published.
TAR_MTIME = 1_654_041_600
TAR_MODE = 0o644

# (name, shape, OpenCV hue 0-179, texture, English noun, browse path). The
# look of an image is a function of its type only, so a small classifier can
# learn the types; hues are at least 7 apart and shapes all differ.
PRODUCT_TYPES = (
    ("CELLULAR_PHONE_CASE", "rectangle", 108, "stripes", "Phone Case", "Cell Phones & Accessories/Cases & Covers"),
    ("SHOES", "ellipse", 8, "dots", "Running Shoes", "Clothing, Shoes & Jewelry/Shoes"),
    ("CHAIR", "cross", 60, "checker", "Dining Chair", "Home & Kitchen/Furniture/Chairs"),
    ("SOFA", "semicircle", 150, "plain", "Sofa", "Home & Kitchen/Furniture/Living Room/Sofas"),
    ("HOME_BED_AND_BATH", "ring", 88, "stripes", "Bath Towel Set", "Home & Kitchen/Bedding & Bath"),
    ("LAMP", "triangle", 25, "plain", "Table Lamp", "Home & Kitchen/Lighting/Lamps"),
    ("RUG", "diamond", 170, "checker", "Area Rug", "Home & Kitchen/Rugs"),
    ("TABLE", "hexagon", 40, "dots", "Side Table", "Home & Kitchen/Furniture/Tables"),
    ("HOME", "star", 130, "plain", "Decorative Pillow", "Home & Kitchen/Home Decor"),
    ("KITCHEN", "circle", 0, "checker", "Cookware Set", "Home & Kitchen/Kitchen & Dining"),
    ("BOOT", "arrow", 18, "stripes", "Ankle Boot", "Clothing, Shoes & Jewelry/Boots"),
    ("GROCERY", "trapezoid", 70, "dots", "Coffee Beans", "Grocery & Gourmet Food/Coffee"),
    ("EARRING", "crescent", 160, "plain", "Hoop Earrings", "Clothing, Shoes & Jewelry/Jewelry/Earrings"),
    ("PLANTER", "chevron", 50, "checker", "Ceramic Planter", "Patio, Lawn & Garden/Planters"),
    ("MIRROR", "octagon", 100, "stripes", "Wall Mirror", "Home & Kitchen/Home Decor/Mirrors"),
    ("OTTOMAN", "star4", 140, "dots", "Storage Ottoman", "Home & Kitchen/Furniture/Ottomans"),
)
TOP_TYPE_SHARE = 0.52  # CELLULAR_PHONE_CASE is about 53% of the real listings
TAIL_COUNTS = {"PLANTER": 5, "MIRROR": 3, "OTTOMAN": 1}  # fixed, whatever the size

# More types than the 16 above (`num_types`, for ABO's 576): each further type is a (shape, texture, hue) the
# first 16 do not use, hues EXTRA_HUE_STEP apart on OpenCV's 0-179 circle. Types that share a shape and a
# texture differ in hue only (18 units, 6 times the renderer's +-3 jitter): close classes, told apart by colour.
# The middle types fall as rank^-1.5 (split_benchmark's fit of ABO's 576) over a floor of EXTRA_MIN_LISTINGS:
# at 148,148 listings and 576 types, 114 types have under 10 listings and the smallest generated one 8, about
# 21 images at 2.7 a listing, so a build's default --min-examples-per-class 10 keeps the tail.
DEFAULT_TYPES = len(PRODUCT_TYPES)
EXTRA_HUE_STEP = 18
EXTRA_TEXTURES = ("stripes", "dots", "checker", "plain")
EXTRA_ZIPF_EXPONENT = 1.5
EXTRA_MIN_LISTINGS = 5
QUIRK_CARRIER_TYPES = 3  # quirks go on listings of the 3 biggest types, never dropped as rare

# (domain, country, language tag of its text, weight). 81% of the weight is
# on English marketplaces, so most text is en_* but only about 18% en_US.
DOMAINS = (
    ("amazon.in", "IN", "en_IN", 30),
    ("amazon.com", "US", "en_US", 18),
    ("amazon.co.uk", "GB", "en_GB", 12),
    ("amazon.ae", "AE", "en_AE", 6),
    ("amazon.sg", "SG", "en_SG", 5),
    ("amazon.ca", "CA", "en_CA", 5),
    ("amazon.com.au", "AU", "en_AU", 5),
    ("amazon.de", "DE", "de_DE", 4),
    ("amazon.fr", "FR", "fr_FR", 3),
    ("amazon.it", "IT", "it_IT", 3),
    ("amazon.es", "ES", "es_ES", 3),
    ("amazon.co.jp", "JP", "ja_JP", 3),
    ("amazon.cn", "CN", "zh_CN", 1),
    ("amazon.nl", "NL", "nl_NL", 1),
    ("amazon.com.tr", "TR", "tr_TR", 1),
)
ADJECTIVES = {
    "en": ("Classic", "Modern", "Premium", "Slim", "Rustic", "Soft", "Durable", "Compact"),
    "de": ("Klassisch", "Modern", "Hochwertig", "Schlank", "Robust", "Weich"),
    "fr": ("Classique", "Moderne", "Élégant", "Fin", "Robuste", "Doux"),
    "it": ("Classico", "Moderno", "Elegante", "Sottile", "Robusto"),
    "es": ("Clásico", "Moderno", "Elegante", "Delgado", "Resistente"),
    "ja": ("クラシック", "モダン", "プレミアム", "スリム", "やわらか"),
    "zh": ("经典", "现代", "高级", "轻薄", "耐用"),
    "nl": ("Klassiek", "Modern", "Stevig", "Zacht"),
    "tr": ("Klasik", "Modern", "Dayanıklı", "Yumuşak"),
}
CATEGORIES_WORD = {
    "en": "Categories",
    "de": "Kategorien",
    "fr": "Catégories",
    "it": "Categorie",
    "es": "Categorías",
    "ja": "カテゴリー",
    "zh": "类别",
    "nl": "Categorieën",
    "tr": "Kategoriler",
}
BRANDS = (
    "Amazon Brand - Solimo",
    "AmazonBasics",
    "Rivet",
    "Stone & Beam",
    "Amazon Essentials",
    "find.",
    "Pinzon",
    "Amazon Brand - Symbol",
    "Movian",
    "Ravenna Home",
    "Eono",
    "Goodthreads",
)
COLOURS = (
    ("Black", "Jet Black"),
    ("White", "Off White"),
    ("Blue", "Navy Blue"),
    ("Red", "Crimson"),
    ("Grey", "Charcoal"),
    ("Green", "Olive"),
    ("Brown", "Walnut"),
    ("Multicolor", "Multi"),
)
MATERIALS = ("Plastic", "Silicone", "Leather", "Wood", "Cotton", "Metal", "Polyester", "Ceramic")
KEYWORDS = ["gift", "new", "home"]
STYLES = ("Modern", "Contemporary", "Traditional", "Mid-Century", "Casual", "Industrial")

# Optional listing fields and how often a listing carries each.
FIELD_RATES = {
    "brand": 0.95,
    "bullet_point": 0.7,
    "item_keywords": 0.6,
    "color": 0.7,
    "material": 0.4,
    "style": 0.4,
    "model_name": 0.3,
    "product_description": 0.15,
    "node": 0.9,
    "item_dimensions": 0.5,
    "item_weight": 0.5,
    "spin_id": 0.03,
    "3dmodel_id": 0.02,
    "color_code": 0.2,
    "model_year": 0.15,
    "model_number": 0.4,
}
PLAIN_STRING_TYPE_RATE = 0.2  # the README's form; the real files use [{"value": ...}]
MULTI_DOMAIN_ITEM_RATE = 0.1
OTHER_IMAGE_COUNTS = (0, 1, 2, 3, 4)
OTHER_IMAGE_WEIGHTS = (15, 20, 25, 20, 20)  # with generic/boilerplate images: ~2.7 images per listing

IMAGE_ID_ALPHABET = string.digits + string.ascii_letters + "+-"
ITEM_ID_ALPHABET = string.digits + string.ascii_uppercase
BOMB_SIDE = 60_000  # patched into a small JPEG's frame header
JPEG_QUALITY_RANGE = (85, 90)
ORIGINAL_SCALE_RANGE = (2, 6)  # images.csv.gz describes originals this many times larger
BOILERPLATE_TEXTS = ("SIZE GUIDE", "WARRANTY", "CARE LABEL")
NOISE_TABLE_SIDE = 512  # a crop of one shared noise table per image: see _noise_table
NOISE_STREAM = 1
CHUNK_IMAGES = 128  # images per task sent to a worker
AUTO_WORKERS_MIN_IMAGES = 1500  # below this, starting processes costs more than it saves
MAX_AUTO_WORKERS = 8

# Image kinds. Every kind but the two "missing_*" has a file; every kind but
# "missing_from_csv" has a row in images.csv.gz.
JPEG, PNG, PNG_RGBA, GRAYSCALE, CMYK = "jpeg", "png", "png_rgba", "grayscale", "cmyk"
TRUNCATED, EMPTY, NOT_AN_IMAGE, TOO_LARGE = "truncated", "empty", "not_an_image", "too_large"
MISSING_FROM_ARCHIVE, MISSING_FROM_CSV = "missing_from_archive", "missing_from_csv"
BAD_KINDS = (TRUNCATED, EMPTY, NOT_AN_IMAGE, TOO_LARGE)

# The data audit's truth (issue 11). Planted last, from their own random stream, so every earlier image and
# listing keeps its bytes: near-duplicates are new images on other items' listings, flips repaint an image.
NEAR_DUPLICATE_VARIANTS = tuple(image_edits.PLANTED_EDITS)  # every edit family a catalog makes (issue 18)
NEAR_DUPLICATES_PER_LISTING = 1 / 12  # 20 on the 240-listing test sample: every one of the 18 variants
LABEL_FLIPS_PER_LISTING = 1 / 24
LISTING_FLIPS_PER_LISTING = 1 / 40
MIN_LISTING_FLIP_IMAGES = 2  # a listing flip has other views that could vouch for the wrong label
MAX_OTHER_IMAGES_BEFORE_PLANTING = 4  # a listing shows at most 8 other images; planting adds one


# --- the plan: listings, items and images, before any file is written -------


@dataclasses.dataclass
class _Image:
    kind: str
    style: int  # a product_type index, or -1 - n for boilerplate picture n
    height: int  # of the small file
    width: int
    quality: int
    scale: int  # original = small * scale, as images.csv.gz reports it
    image_id: str = ""
    path: str = ""  # relative to images/small/
    source: "_Image | None" = None  # a near-duplicate: the image whose photo this one re-uses
    source_index: int = -1
    variant: str = ""  # how the source's photo was changed, one of NEAR_DUPLICATE_VARIANTS


@dataclasses.dataclass
class _Listing:
    type_index: int
    item: int = -1
    domain: int = 0
    main: int | None = None
    others: list = dataclasses.field(default_factory=list)
    product_type_form: str = "list"  # "list", "string", or "odd" (needs normalising)
    extra_key: bool = False


@dataclasses.dataclass
class _Plan:
    seed: int
    max_side: int
    rng: random.Random
    listings: list = dataclasses.field(default_factory=list)
    items: list = dataclasses.field(default_factory=list)  # per item: listing indices
    item_ids: list = dataclasses.field(default_factory=list)
    images: list = dataclasses.field(default_factory=list)
    boilerplate: list = dataclasses.field(default_factory=list)  # image indices
    files: list = dataclasses.field(default_factory=list)  # per listings file: listing indices in order
    malformed: dict = dataclasses.field(default_factory=dict)  # file number -> 0-based line of the bad line
    near_duplicates: list = dataclasses.field(default_factory=list)  # (source image, near-duplicate image)
    label_flips: list = dataclasses.field(default_factory=list)  # (listing, image showing another type)
    listing_flips: list = dataclasses.field(default_factory=list)  # (listing, the type all its images show)

    def new_image(self, kind, style):
        """Adds an image of random size; returns its index."""
        longest = self.rng.randint(self.max_side // 2, self.max_side)
        shortest = max(16, round(longest * self.rng.uniform(0.55, 1.0)))
        height, width = (longest, shortest) if self.rng.random() < 0.5 else (shortest, longest)
        self.images.append(
            _Image(
                kind,
                style,
                height,
                width,
                self.rng.randint(*JPEG_QUALITY_RANGE),
                self.rng.randint(*ORIGINAL_SCALE_RANGE),
            )
        )
        return len(self.images) - 1


def _type_counts(num_listings, num_types=DEFAULT_TYPES):
    """Listings per product type: about half the top type, a Zipf-like middle, a fixed tail."""
    names = [product_type(index)[0] for index in range(num_types)]
    counts = [TAIL_COUNTS.get(name, 0) for name in names]
    middle = [index for index, name in enumerate(names) if index and name not in TAIL_COUNTS]
    counts[0] = round(TOP_TYPE_SHARE * num_listings)
    extra = num_types > DEFAULT_TYPES  # the 16-type default keeps its bytes: no floor, exponent 1
    floor = EXTRA_MIN_LISTINGS if extra and num_listings - sum(counts) >= EXTRA_MIN_LISTINGS * len(middle) else 0
    exponent = EXTRA_ZIPF_EXPONENT if extra else 1.0
    remaining = num_listings - sum(counts) - floor * len(middle)
    weights = [1.0 / (rank + 2) ** exponent for rank in range(len(middle))]
    shares = [remaining * weight / sum(weights) for weight in weights]
    floors = [int(share) for share in shares]
    # Largest remainder: the counts add up exactly.
    by_remainder = sorted(range(len(middle)), key=lambda rank: floors[rank] - shares[rank])
    for rank in by_remainder[: remaining - sum(floors)]:
        floors[rank] += 1
    for rank, index in enumerate(middle):
        counts[index] = floors[rank] + floor
    return counts


@functools.lru_cache(maxsize=1)
def _extra_types():
    """The (shape, hue, texture) of every type past the first 16, in a fixed shuffled order (no sizes by shape)."""
    used = {(shape, texture): hue for _, shape, hue, texture, _, _ in PRODUCT_TYPES}
    looks = []
    for shape in SHAPES:
        for texture in EXTRA_TEXTURES:
            for hue in range(0, 180, EXTRA_HUE_STEP):
                taken = used.get((shape, texture))
                # as close to one of the 16 as two extra types are to each other, or closer: left out
                if taken is None or min(abs(hue - taken), 180 - abs(hue - taken)) >= EXTRA_HUE_STEP:
                    looks.append((shape, hue, texture))
    random.Random("abo-sample-extra-types").shuffle(looks)
    return tuple(looks)


def max_types():
    """How many distinct product types the generator can draw."""
    return DEFAULT_TYPES + len(_extra_types())


def product_type(index):
    """(name, shape, hue, texture, noun, browse path) of type `index`: PRODUCT_TYPES, then generated ones."""
    if index < DEFAULT_TYPES:
        return PRODUCT_TYPES[index]
    shape, hue, texture = _extra_types()[index - DEFAULT_TYPES]
    noun = f"{texture.title()} {shape.title()} Item"
    return f"PRODUCT_TYPE_{index:03d}", shape, hue, texture, noun, f"Home & Kitchen/Generated/{noun}s"


def _group_into_items(plan, counts):
    """Creates the listings; about 10% of items are listed on 2 or 3 marketplaces."""
    for type_index, count in enumerate(counts):
        left = count
        while left:
            size = 1
            if left > 1 and plan.rng.random() < MULTI_DOMAIN_ITEM_RATE:
                size = min(left, 2 if plan.rng.random() < 0.7 else 3)
            start = len(plan.listings)
            plan.listings += [_Listing(type_index) for _ in range(size)]
            plan.items.append(list(range(start, start + size)))
            left -= size
    if all(len(item) == 1 for item in plan.items):  # tiny samples: make sure the quirk exists
        first, second = plan.items[0], plan.items[1]
        plan.items[0], plan.items[1] = first + second, []


def _single_items(plan, type_indices):
    """Items listed once whose type is in `type_indices`, in random order."""
    found = [
        index
        for index, item in enumerate(plan.items)
        if len(item) == 1 and plan.listings[item[0]].type_index in type_indices
    ]
    plan.rng.shuffle(found)
    return found


def _merge_conflicting_items(plan, count):
    """The same item_id under two product types, on two marketplaces: a label conflict."""
    top = _single_items(plan, {0})
    others = _single_items(plan, set(range(1, QUIRK_CARRIER_TYPES + 2)))
    for first, second in zip(top[:count], others[:count]):
        plan.items[first] += plan.items[second]
        plan.items[second] = []


def _assign_domains_and_ids(plan):
    """Distinct marketplaces within an item; unique 10-character item ids."""
    plan.items = [item for item in plan.items if item]
    weights = [entry[3] for entry in DOMAINS]
    seen = set()
    for item in plan.items:
        domains = []
        while len(domains) < len(item):
            domain = plan.rng.choices(range(len(DOMAINS)), weights)[0]
            if domain not in domains:
                domains.append(domain)
        item_id = None
        while item_id is None or item_id in seen:
            item_id = "B0" + "".join(plan.rng.choices(ITEM_ID_ALPHABET, k=8))
        seen.add(item_id)
        plan.item_ids.append(item_id)
        for listing_index, domain in zip(item, domains):
            plan.listings[listing_index].item = len(plan.item_ids) - 1
            plan.listings[listing_index].domain = domain


def _quirk_count(num_listings, per, minimum=1):
    return max(minimum, num_listings // per)


def _pick_item_quirks(plan, num_listings):
    """Items (listed once, big types) whose main image is special: item index -> main kind or None."""
    wanted = [
        (None, _quirk_count(num_listings, 200)),
        (MISSING_FROM_CSV, _quirk_count(num_listings, 1000)),
        (PNG, _quirk_count(num_listings, 500)),
        (PNG_RGBA, _quirk_count(num_listings, 500)),
        (GRAYSCALE, _quirk_count(num_listings, 500)),
        (CMYK, _quirk_count(num_listings, 500)),
    ]
    candidates = iter(_single_items(plan, set(range(QUIRK_CARRIER_TYPES))))
    return {next(candidates): kind for kind, count in wanted for _ in range(count)}


def _add_item_images(plan, num_listings):
    """Each item's main and other images, shared by all its listings."""
    special = _pick_item_quirks(plan, num_listings)
    for item_index, item in enumerate(plan.items):
        style = plan.listings[item[0]].type_index
        kind = special.get(item_index, JPEG)
        main = None if item_index in special and kind is None else plan.new_image(kind, style)
        num_others = plan.rng.choices(OTHER_IMAGE_COUNTS, OTHER_IMAGE_WEIGHTS)[0]
        others = [plan.new_image(JPEG, style) for _ in range(num_others)]
        for listing_index in item:
            plan.listings[listing_index].main = main
            plan.listings[listing_index].others = list(others)


def _listings_of_types(plan, type_indices):
    return [index for index, listing in enumerate(plan.listings) if listing.type_index in type_indices]


def _share_generic_images(plan, num_listings):
    """Generic secondary pictures reused by 2-5 phone cases each (far below any over-sharing cut)."""
    phone_cases = _listings_of_types(plan, {0})
    for _ in range(_quirk_count(num_listings, 30, minimum=3)):
        image = plan.new_image(JPEG, 0)
        for listing_index in plan.rng.sample(phone_cases, plan.rng.randint(2, 5)):
            plan.listings[listing_index].others.append(image)


def _attach_boilerplate(plan, num_listings):
    """1-2 pictures on more than 50 listings of every type, as on the real catalog pages."""
    count = 1 if num_listings < 200 else 2
    per_image = min(num_listings, max(60, num_listings // 5))
    for number in range(count):
        image = plan.new_image(JPEG, -1 - number)
        plan.boilerplate.append(image)
        for listing_index in plan.rng.sample(range(len(plan.listings)), per_image):
            plan.listings[listing_index].others.append(image)


def _plant_conflicting_images(plan, num_listings):
    """One picture on a phone case and on a listing of another type."""
    phone_cases = _listings_of_types(plan, {0})
    others = _listings_of_types(plan, set(range(1, QUIRK_CARRIER_TYPES)))
    for _ in range(_quirk_count(num_listings, 1000)):
        image = plan.new_image(JPEG, 0)
        plan.listings[plan.rng.choice(phone_cases)].others.append(image)
        plan.listings[plan.rng.choice(others)].others.append(image)


def _plant_bad_images(plan, num_listings):
    """Damaged files and files missing from the archive, each on one listing of a big type."""
    carriers = _listings_of_types(plan, set(range(QUIRK_CARRIER_TYPES)))
    kinds = [kind for kind in (*BAD_KINDS, MISSING_FROM_ARCHIVE) for _ in range(_quirk_count(num_listings, 1000))]
    for kind, listing_index in zip(kinds, plan.rng.sample(carriers, len(kinds))):
        listing = plan.listings[listing_index]
        listing.others.append(plan.new_image(kind, listing.type_index))


def _new_image_id(rng):
    # Real ids: 11 characters, digits first, an "L" last, "+" and "-" inside.
    return rng.choice("123456789") + rng.choice(string.digits) + "".join(rng.choices(IMAGE_ID_ALPHABET, k=8)) + "L"


def _assign_image_ids(plan):
    """Unique ids; at least one with "+" and one with "-" (they break naive path handling)."""
    seen = set()
    for image in plan.images:
        while not image.image_id or image.image_id in seen:
            image.image_id = _new_image_id(plan.rng)
        seen.add(image.image_id)
    normal = [image for image in plan.images if image.kind == JPEG and image.style >= 0]
    for character, image in zip("+-", normal):
        if any(character in image_id for image_id in seen):
            continue
        seen.discard(image.image_id)
        image.image_id = image.image_id[:4] + character + image.image_id[5:]
        while image.image_id in seen:
            image.image_id = _new_image_id(plan.rng)[:4] + character + _new_image_id(plan.rng)[5:]
        seen.add(image.image_id)


def _assign_paths(plan):
    """`xx/<8 hex>.jpg` from a hash of the id, so a path never depends on order unless hashes collide."""
    taken = set()
    for image in plan.images:
        if image.kind == MISSING_FROM_CSV:
            continue
        attempt = 0
        while not image.path or image.path in taken:
            name = hashlib.md5(f"{image.image_id}:{attempt}".encode()).hexdigest()[:8]
            extension = "png" if image.kind in (PNG, PNG_RGBA) else "jpg"
            image.path = f"{name[:2]}/{name}.{extension}"
            attempt += 1
        taken.add(image.path)


def _choose_listing_details(plan, num_listings):
    """Product-type spelling, the unknown key, and the order of listings over the 16 files."""
    for listing in plan.listings:
        listing.product_type_form = "string" if plan.rng.random() < PLAIN_STRING_TYPE_RATE else "list"
    for type_index in range(2):  # " shoes" and "Cellular Phone Case" normalise to existing types
        listing = plan.listings[plan.rng.choice(_listings_of_types(plan, {type_index}))]
        listing.product_type_form = "odd"
    for listing_index in plan.rng.sample(range(len(plan.listings)), _quirk_count(num_listings, 2000)):
        plan.listings[listing_index].extra_key = True
    order = list(range(len(plan.listings)))
    plan.rng.shuffle(order)
    bounds = [round(number * len(order) / NUM_LISTINGS_FILES) for number in range(NUM_LISTINGS_FILES + 1)]
    plan.files = [order[bounds[number] : bounds[number + 1]] for number in range(NUM_LISTINGS_FILES)]
    num_malformed = min(NUM_LISTINGS_FILES, _quirk_count(num_listings, 5000))  # at most one per file
    for file_number in plan.rng.sample(range(NUM_LISTINGS_FILES), num_malformed):
        position = plan.rng.randint(0, len(plan.files[file_number]))
        plan.malformed[file_number] = position


def _make_plan(num_listings, seed, max_side, num_types=DEFAULT_TYPES):
    plan = _Plan(seed, max_side, random.Random(f"abo-sample-plan-{seed}"))
    _group_into_items(plan, _type_counts(num_listings, num_types))
    _merge_conflicting_items(plan, _quirk_count(num_listings, 500))
    _assign_domains_and_ids(plan)
    _add_item_images(plan, num_listings)
    _share_generic_images(plan, num_listings)
    _attach_boilerplate(plan, num_listings)
    _plant_conflicting_images(plan, num_listings)
    _plant_bad_images(plan, num_listings)
    _assign_image_ids(plan)
    _assign_paths(plan)
    _choose_listing_details(plan, num_listings)
    _plant_audit_truth(plan, num_listings)
    return plan


def _exclusive_photos(plan):
    """Listing index -> its plain product photos that no other listing shows, in listing order."""
    shown_by = collections.Counter(
        index for listing in plan.listings for index in set(listing.others + [listing.main]) if index is not None
    )
    photos = {}
    for listing_index, listing in enumerate(plan.listings):
        if len(plan.items[listing.item]) == 1 and listing.type_index < QUIRK_CARRIER_TYPES:
            photos[listing_index] = [
                index
                for index in [listing.main] + listing.others
                if index is not None
                and shown_by[index] == 1
                and plan.images[index].kind == JPEG
                and plan.images[index].style == listing.type_index
            ]
    return {listing_index: found for listing_index, found in photos.items() if found}


def _near_duplicate_size(source, variant, max_side, seed, index):
    """(height, width) of a near-duplicate: its edit applied to blank pixels of the source's size, scaled back
    into [max_side // 2, max_side] if the edit left that range (padding grows an image, halving shrinks it; a
    catalog's small image stays in the range: a halved copy is then a blurred one)."""
    blank = np.zeros((source.height, source.width, 3), np.uint8)
    height, width = _edited(blank, variant, seed, index)[0].shape[:2]
    scale = min(1.0, max_side / max(height, width)) * max(1.0, (max_side // 2) / max(height, width))
    return max(16, round(height * scale)), max(16, round(width * scale))


def _edited(pixels, variant, seed, index):
    """(pixels, JPEG quality) of planted copy `index`: its `image_edits` family at the planted strength."""
    return image_edits.edited_pixels(
        pixels, variant, image_edits.PLANTED_EDITS[variant], image_edits.edit_rng(seed, index)
    )


def _assign_new_image_ids(plan, rng, start):
    """Unique ids for the images from `start` on, drawn from `rng`, leaving the earlier ids as they were."""
    seen = {image.image_id for image in plan.images[:start]}
    for image in plan.images[start:]:
        while not image.image_id or image.image_id in seen:
            image.image_id = _new_image_id(rng)
        seen.add(image.image_id)


def _open_listings(plan):
    """Type -> its listings that may take one more planted image, in index order."""
    found = collections.defaultdict(list)
    for index, listing in enumerate(plan.listings):
        if len(listing.others) <= MAX_OTHER_IMAGES_BEFORE_PLANTING:
            found[listing.type_index].append(index)
    return found


class _OtherItems:
    """`listings` (sorted) but those of `item` (its listing indices), as a sequence `random.choice` draws from.

    The same draws as a list of them, without building one per planted copy: scanning every listing per copy
    cost listings x copies, about 1.8e9 steps at ABO's 148,148 listings.
    """

    def __init__(self, listings, item):
        self.listings = listings
        positions = (bisect.bisect_left(listings, index) for index in item)
        self.skipped = sorted(
            position
            for position, index in zip(positions, item)
            if position < len(listings) and listings[position] == index
        )

    def __len__(self):
        return len(self.listings) - len(self.skipped)

    def __getitem__(self, position):
        for skipped in self.skipped:  # ascending: each one at or before the position shifts it on by one
            if skipped <= position:
                position += 1
        return self.listings[position]


def _plant_near_duplicates(plan, rng, candidates, count):
    """Copies of an item's photo, changed a little, on a listing of another item of the same type."""
    sources = [(listing_index, photos[0]) for listing_index, photos in candidates.items()]
    rng.shuffle(sources)
    open_listings = _open_listings(plan)
    for listing_index, source_index in sources[:count]:
        source, type_index = plan.images[source_index], plan.listings[listing_index].type_index
        targets = _OtherItems(open_listings[type_index], plan.items[plan.listings[listing_index].item])
        variant = NEAR_DUPLICATE_VARIANTS[len(plan.near_duplicates) % len(NEAR_DUPLICATE_VARIANTS)]
        height, width = _near_duplicate_size(source, variant, plan.max_side, plan.seed, len(plan.images))
        plan.images.append(
            dataclasses.replace(
                source,
                kind=JPEG,  # a catalog's edited copy is a JPEG, whatever the source was
                height=height,
                width=width,
                image_id="",
                path="",
                source=source,
                source_index=source_index,
                variant=variant,
            )
        )
        target = rng.choice(targets)
        plan.listings[target].others.append(len(plan.images) - 1)
        plan.near_duplicates.append((source_index, len(plan.images) - 1))
        if len(plan.listings[target].others) > MAX_OTHER_IMAGES_BEFORE_PLANTING:
            open_listings[type_index].remove(target)


def _plant_label_flips(plan, rng, candidates, count):
    """Other photos that show another big type than their listing says: the seller's label is wrong."""
    flippable = [
        (listing_index, photos[-1])
        for listing_index, photos in candidates.items()
        if photos[-1] != plan.listings[listing_index].main
    ]
    rng.shuffle(flippable)
    for listing_index, image_index in flippable[:count]:
        given = plan.listings[listing_index].type_index
        plan.images[image_index].style = rng.choice([index for index in range(QUIRK_CARRIER_TYPES) if index != given])
        plan.label_flips.append((listing_index, image_index))


def _plant_audit_truth(plan, num_listings):
    """Near-duplicates across items and flipped labels, each on its own photo."""
    rng = random.Random(f"abo-sample-audit-{plan.seed}")
    candidates = _exclusive_photos(plan)
    flips = max(1, round(num_listings * LABEL_FLIPS_PER_LISTING))
    flip_candidates = dict(list(candidates.items())[::2])  # disjoint from the near-duplicates' sources
    duplicate_candidates = {key: value for key, value in candidates.items() if key not in flip_candidates}
    _plant_label_flips(plan, rng, flip_candidates, flips)
    _plant_near_duplicates(plan, rng, duplicate_candidates, max(1, round(num_listings * NEAR_DUPLICATES_PER_LISTING)))
    first_new = len(plan.images) - len(plan.near_duplicates)
    _assign_new_image_ids(plan, rng, first_new)
    _assign_paths(plan)
    _plant_listing_flips(plan, num_listings)


def _plant_listing_flips(plan, num_listings):
    """Listings whose every image shows another big type than the listing says: the seller's label is wrong
    for the whole listing, so its other views agree with each other, not with the label. From their own
    random stream, on listings no other audit truth touched, so that truth keeps its bytes."""
    rng = random.Random(f"abo-sample-listing-flips-{plan.seed}")
    touched = {image for pair in plan.near_duplicates for image in pair} | {image for _, image in plan.label_flips}
    candidates = []
    for listing_index, photos in _exclusive_photos(plan).items():
        listing = plan.listings[listing_index]
        shown = {index for index in [listing.main] + listing.others if index is not None}
        products = {index for index in shown if plan.images[index].style >= 0}  # not the boilerplate
        if len(photos) >= MIN_LISTING_FLIP_IMAGES and set(photos) == products and not shown & touched:
            candidates.append(listing_index)
    for listing_index in rng.sample(candidates, max(1, round(num_listings * LISTING_FLIPS_PER_LISTING))):
        listing = plan.listings[listing_index]
        shown_type = rng.choice([index for index in range(QUIRK_CARRIER_TYPES) if index != listing.type_index])
        for index in [listing.main] + listing.others:
            if index is not None and plan.images[index].style >= 0:
                plan.images[index].style = shown_type
        plan.listing_flips.append((listing_index, shown_type))


# --- listing records ---------------------------------------------------------


def _localised(value, language_tag):
    return {"language_tag": language_tag, "value": value}


def _text_tags(rng, language_tag):
    """The tags a listing's text carries: its marketplace's, and on non-English ones often English too."""
    if language_tag.startswith("en_") or rng.random() < 0.4:
        return [language_tag]
    return [language_tag, rng.choice(("en_GB", "en_US"))]


def _measure(value, unit, inches_per_unit):
    normalised = {"unit": "inches", "value": round(value * inches_per_unit, 2)}
    return {"normalized_value": normalised, "unit": unit, "value": round(value, 2)}


def _physical_fields(rng, metric):
    unit, factor = ("centimeters", 1 / 2.54) if metric else ("inches", 1.0)
    dimensions = {side: _measure(rng.uniform(1, 80), unit, factor) for side in ("height", "length", "width")}
    weight_value = rng.uniform(0.05, 40)
    weight_unit, pounds_per_unit = ("kilograms", 2.2046) if metric else ("pounds", 1.0)
    weight = {
        "normalized_value": {"unit": "pounds", "value": round(weight_value * pounds_per_unit, 3)},
        "unit": weight_unit,
        "value": round(weight_value, 3),
    }
    return {"item_dimensions": dimensions, "item_weight": [weight]}


def _text_fields(rng, type_index, tags):
    """All localised text fields; the caller keeps each optional one at its rate in FIELD_RATES."""
    noun = product_type(type_index)[4]
    brand = rng.choice(BRANDS)
    standard, colour = rng.choice(COLOURS)
    fields = {
        "item_name": [_localised(f"{brand} {rng.choice(ADJECTIVES[tag[:2]])} {noun}, {colour}", tag) for tag in tags],
        "brand": [_localised(brand, tag) for tag in tags],
        "bullet_point": [
            _localised(f"{rng.choice(ADJECTIVES[tag[:2]])} {noun.lower()} ({number + 1})", tag)
            for tag in tags
            for number in range(rng.randint(1, 4))
        ],
        "item_keywords": [_localised(word, tags[0]) for word in rng.sample(noun.lower().split() + KEYWORDS, 2)],
        "color": [{"language_tag": tag, "standardized_values": [standard], "value": colour} for tag in tags],
        "material": [_localised(rng.choice(MATERIALS), tags[0])],
        "style": [_localised(rng.choice(STYLES), tags[0])],
        "model_name": [_localised(f"{noun.split()[-1]} {rng.randint(100, 999)}", tags[0])],
        "product_description": [_localised(f"{brand}: {noun.lower()}, {colour.lower()}. " * 3, tags[0])],
    }
    return fields


def _other_fields(rng, type_index, language_tag):
    path = product_type(type_index)[5]
    node_name = f"/{CATEGORIES_WORD[language_tag[:2]]}/{path}"
    return {
        "node": [{"node_id": 1_000_000 * (type_index + 1) + rng.randint(0, 50), "node_name": node_name}],
        "spin_id": f"{rng.getrandbits(32):08x}",
        "3dmodel_id": "B0" + "".join(rng.choices(ITEM_ID_ALPHABET, k=8)),
        "color_code": [f"#{rng.getrandbits(24):06X}"],
        "model_year": [{"value": rng.randint(2014, 2021)}],
        "model_number": [{"value": f"{rng.choice(string.ascii_uppercase)}{rng.randint(1000, 99999)}"}],
    }


def _product_type_value(listing):
    name = product_type(listing.type_index)[0]
    if listing.product_type_form == "odd":
        # "Cellular Phone Case" or " shoes": uppercase, strip, spaces to "_" give the type back.
        return name.replace("_", " ").title() if listing.type_index == 0 else " " + name.lower()
    return name if listing.product_type_form == "string" else [{"value": name}]


def _listing_record(plan, listing, rng):
    """One listing as the real files have it; optional keys present at their real-ish rates."""
    domain, country, language_tag, _ = DOMAINS[listing.domain]
    record = {
        "item_id": plan.item_ids[listing.item],
        "domain_name": domain,
        "country": country,
        "marketplace": "Amazon",
        "product_type": _product_type_value(listing),
    }
    if listing.main is not None:
        record["main_image_id"] = plan.images[listing.main].image_id
    if listing.others:
        record["other_image_id"] = [plan.images[index].image_id for index in listing.others]
    optional = _text_fields(rng, listing.type_index, _text_tags(rng, language_tag))
    optional.update(_physical_fields(rng, metric=country not in ("US", "GB")))
    optional.update(_other_fields(rng, listing.type_index, language_tag))
    record["item_name"] = optional.pop("item_name")
    record.update({key: value for key, value in optional.items() if rng.random() < FIELD_RATES[key]})
    if listing.extra_key:
        record["extra_field_v2"] = {"source": "synthetic", "revision": 2}
    return record


def _malformed_line(rng):
    """A listing cut off mid-object, as a damaged line of a real file would be."""
    record = {
        "item_id": "B0" + "".join(rng.choices(ITEM_ID_ALPHABET, k=8)),
        "domain_name": "amazon.com",
        "country": "US",
        "marketplace": "Amazon",
        "product_type": [{"value": "CELLULAR_PHONE_CASE"}],
        "item_name": [_localised("Amazon Brand - Solimo Phone Case, Jet Black", "en_US")],
    }
    text = json.dumps(record, ensure_ascii=False, sort_keys=True)
    return text[: len(text) * 2 // 3]


def _listings_files(plan):
    """(file name, JSON Lines text) for the 16 listings files."""
    rng = random.Random(f"abo-sample-text-{plan.seed}")
    files = []
    for number, listing_indices in enumerate(plan.files):
        lines = [
            json.dumps(_listing_record(plan, plan.listings[index], rng), ensure_ascii=False, sort_keys=True)
            for index in listing_indices
        ]
        if number in plan.malformed:
            lines.insert(plan.malformed[number], _malformed_line(rng))
        files.append((f"listings_{number:x}.json.gz", "\n".join(lines) + "\n"))
    return files


def gzip_bytes(data, name):
    """gzip with a fixed header (mtime 0, the given name), so equal data gives equal bytes."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename=name, mode="wb", fileobj=buffer, mtime=0) as handle:
        handle.write(data)
    return buffer.getvalue()


def _images_csv(plan):
    lines = [",".join(IMAGES_CSV_HEADER)]
    for image in plan.images:
        if image.kind != MISSING_FROM_CSV:
            lines.append(f"{image.image_id},{image.height * image.scale},{image.width * image.scale},{image.path}")
    return ("\n".join(lines) + "\n").encode("utf-8")


# --- pixels ------------------------------------------------------------------


def _regular_polygon(corners, phase=0.0, radii=(1.0,)):
    angles = np.arange(corners * len(radii)) * 2 * np.pi / (corners * len(radii)) + phase
    radius = np.resize(np.array(radii), angles.size)
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def _circle(center=(0.0, 0.0), radius=1.0, scale_y=1.0):
    points = _regular_polygon(40) * radius
    points[:, 1] *= scale_y
    return points + np.array(center)


# Unit shapes in [-1, 1]: (outline, hole or None). Drawn scaled, rotated and moved.
SHAPES = {
    "rectangle": (np.array([[-0.5, -1.0], [0.5, -1.0], [0.5, 1.0], [-0.5, 1.0]]), None),
    "ellipse": (_circle(scale_y=0.55), None),
    "cross": (
        np.array(
            [
                [-0.3, -1],
                [0.3, -1],
                [0.3, -0.3],
                [1, -0.3],
                [1, 0.3],
                [0.3, 0.3],
                [0.3, 1],
                [-0.3, 1],
                [-0.3, 0.3],
                [-1, 0.3],
                [-1, -0.3],
                [-0.3, -0.3],
            ]
        ),
        None,
    ),
    "semicircle": (np.array([[np.cos(t), 0.4 - np.sin(t)] for t in np.linspace(0, np.pi, 24)]), None),
    "ring": (_circle(), _circle(radius=0.55)),
    "triangle": (_regular_polygon(3, -np.pi / 2), None),
    "diamond": (np.array([[0.0, -1.0], [0.65, 0.0], [0.0, 1.0], [-0.65, 0.0]]), None),
    "hexagon": (_regular_polygon(6), None),
    "star": (_regular_polygon(5, -np.pi / 2, (1.0, 0.42)), None),
    "circle": (_circle(), None),
    "arrow": (np.array([[-1, -0.25], [0.2, -0.25], [0.2, -0.6], [1, 0], [0.2, 0.6], [0.2, 0.25], [-1, 0.25]]), None),
    "trapezoid": (np.array([[-1.0, 0.6], [1.0, 0.6], [0.5, -0.6], [-0.5, -0.6]]), None),
    "crescent": (_circle(), _circle(center=(0.45, -0.15), radius=0.85)),
    "chevron": (np.array([[-1, -0.8], [0, 0.2], [1, -0.8], [1, -0.2], [0, 0.8], [-1, -0.2]]), None),
    "octagon": (_regular_polygon(8, np.pi / 8), None),
    "star4": (_regular_polygon(4, 0.0, (1.0, 0.35)), None),
}


def _hsv_to_bgr(hue, saturation, value):
    import cv2

    pixel = np.array([[[hue % 180, saturation, value]]], dtype=np.uint8)
    return cv2.cvtColor(pixel, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _texture(rng, height, width, texture):
    """A 0/1 pattern over a height x width box: the second colour goes where it is 1."""
    rows, columns = np.ogrid[:height, :width]
    period = int(rng.integers(8, 16))
    if texture == "stripes":
        angle = rng.uniform(0, np.pi)
        return ((rows * np.float32(np.sin(angle)) + columns * np.float32(np.cos(angle))) // (period / 2)) % 2 == 1
    if texture == "checker":
        return ((rows // period) + (columns // period)) % 2 == 1
    if texture == "dots":
        return (rows % period - period / 2) ** 2 + (columns % period - period / 2) ** 2 < (period / 3.5) ** 2
    return np.zeros((height, width), dtype=bool)


def _shape_mask(rng, height, width, shape):
    """uint8 mask (255 inside) of the shape, at a random place, size and tilt."""
    import cv2

    outline, hole = SHAPES[shape]
    radius = rng.uniform(0.28, 0.45) * min(height, width)
    center = np.array([rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)])
    angle = rng.uniform(-0.5, 0.5)  # tilted, not upside down: the shape stays recognisable
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    mask = np.zeros((height, width), dtype=np.uint8)
    for polygon, value in ((outline, 255), (hole, 0)):
        if polygon is not None:
            points = (polygon @ rotation.T) * radius + center
            cv2.fillPoly(mask, [np.round(points).astype(np.int32)], value, lineType=cv2.LINE_8)
    return mask


def _product_pixels(rng, image):
    """A textured shape of the type's hue on a near-white background: uint8 BGR and the mask."""
    _, shape, hue, texture, _, _ = product_type(image.style)
    return product_canvas(rng, image.height, image.width, shape, hue, texture)


def product_canvas(rng, height, width, shape, hue, texture):
    """A `shape` (a SHAPES key) of `hue` (OpenCV's 0-179, jittered by +-3) with `texture` on near-white: BGR, mask."""
    import cv2

    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:] = rng.integers(236, 256, size=3)
    mask = _shape_mask(rng, height, width, shape)
    hue += int(rng.integers(-3, 4))
    colour = _hsv_to_bgr(hue, int(rng.integers(150, 230)), int(rng.integers(150, 230)))
    second = colour * rng.uniform(0.45, 0.65)
    # Only the shape's bounding box is textured: most of the canvas is background.
    left, top, box_width, box_height = cv2.boundingRect(mask)
    box = (slice(top, top + box_height), slice(left, left + box_width))
    pattern = _texture(rng, box_height, box_width, texture)[..., None]
    fill = np.where(pattern, second.astype(np.uint8), colour.astype(np.uint8))
    np.copyto(canvas[box], fill, where=mask[box][..., None] > 0)
    return canvas, mask > 0


def _boilerplate_pixels(rng, image):
    """A size chart/warranty card: black lines and text on white, the same for every type."""
    import cv2

    canvas = np.full((image.height, image.width, 3), 250, dtype=np.uint8)
    number = (-1 - image.style) % len(BOILERPLATE_TEXTS)
    scale = image.width / 320
    cv2.putText(
        canvas,
        BOILERPLATE_TEXTS[number],
        (int(10 * scale), int(40 * scale)),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        (20, 20, 20),
        max(1, int(2 * scale)),
    )
    for row in range(int(60 * scale), image.height - 5, max(4, int(24 * scale))):
        cv2.line(canvas, (5, row), (image.width - 5, row), (60, 60, 60), 1)
    return canvas, np.ones((image.height, image.width), dtype=bool)


@functools.lru_cache(maxsize=4)
def _noise_table(seed, side):
    """Gaussian noise, made once per process; each image adds its own random crop of it.

    Drawing fresh noise per image was half the rendering time. The table has
    its own stream (spawn key NOISE_STREAM), apart from the per-image streams.
    """
    sequence = np.random.SeedSequence(seed, spawn_key=(NOISE_STREAM,))
    return np.random.default_rng(sequence).standard_normal((side, side, 3), dtype=np.float32)


def _pixels(seed, index, image):
    """uint8 BGR pixels and the object mask; a function of (seed, index, image) only."""
    rng = np.random.default_rng([seed, index])
    canvas, mask = (_product_pixels if image.style >= 0 else _boilerplate_pixels)(rng, image)
    table = _noise_table(seed, max(NOISE_TABLE_SIDE, image.height, image.width))
    top, left = rng.integers(0, table.shape[0] - image.height + 1), rng.integers(0, table.shape[1] - image.width + 1)
    noise = table[top : top + image.height, left : left + image.width]
    pixels = canvas.astype(np.float32)
    pixels *= rng.uniform(0.9, 1.08)  # brightness jitter
    pixels += noise * np.float32(rng.uniform(2.0, 4.0))
    np.clip(pixels, 0, 255, out=pixels)
    return pixels.astype(np.uint8), mask


def _encode_jpeg(pixels, quality):
    import cv2

    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return encoded.tobytes()


def _encode_png(pixels):
    import cv2

    return cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, 6])[1].tobytes()


def _encode_cmyk(pixels, quality):
    # OpenCV cannot write CMYK JPEGs; Pillow (a matplotlib dependency) can.
    import cv2
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)).convert("CMYK").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _jpeg_segments(data):
    """Yields (marker, offset of the marker) up to the start of scan."""
    position = 2
    while position + 4 <= len(data):
        marker = data[position + 1]
        yield marker, position
        if marker == 0xDA:
            return
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")


def _with_absurd_size(data):
    """The JPEG with its frame header claiming BOMB_SIDE x BOMB_SIDE pixels: a decompression bomb."""
    patched = bytearray(data)
    for marker, position in _jpeg_segments(data):
        if marker in (0xC0, 0xC1, 0xC2):
            patched[position + 5 : position + 9] = BOMB_SIDE.to_bytes(2, "big") * 2
            return bytes(patched)
    raise RuntimeError("no frame header in the encoded JPEG")


def _not_an_image(image):
    # What a failed download saves under the image's name.
    return (
        f"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n"
        f"<body><h1>Not Found</h1><p>{image.image_id} was not found on this server.</p></body></html>\n"
    ).encode()


def _near_duplicate_pixels(seed, index, image):
    """The source's photo, changed as `image.variant` says, at the image's own size; and its JPEG quality."""
    import cv2

    pixels, quality = _edited(_pixels(seed, image.source_index, image.source)[0], image.variant, seed, index)
    if pixels.shape[:2] != (image.height, image.width):
        pixels = cv2.resize(pixels, (image.width, image.height), interpolation=cv2.INTER_AREA)
    return pixels, quality


def _image_bytes(seed, index, image):
    """The file an image's kind calls for."""
    if image.kind == EMPTY:
        return b""
    if image.kind == NOT_AN_IMAGE:
        return _not_an_image(image)
    if image.source is not None:
        pixels, quality = _near_duplicate_pixels(seed, index, image)
        return _encode_jpeg(pixels, quality if image.variant in ("jpeg", "crop+jpeg") else image.quality)
    pixels, mask = _pixels(seed, index, image)
    if image.kind == PNG:
        return _encode_png(pixels)
    if image.kind == PNG_RGBA:
        # Transparent around the product, as on real product shots.
        return _encode_png(np.dstack([pixels, np.where(mask, 255, 0).astype(np.uint8)]))
    if image.kind == GRAYSCALE:
        import cv2

        return _encode_jpeg(cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY), image.quality)
    if image.kind == CMYK:
        return _encode_cmyk(pixels, image.quality)
    data = _encode_jpeg(pixels, image.quality)
    if image.kind == TRUNCATED:
        return data[: len(data) * 3 // 5]  # cut inside the scan: no end-of-image marker
    if image.kind == TOO_LARGE:
        return _with_absurd_size(data)
    return data


def _render_chunk(seed, jobs):
    """Worker: the bytes of each (index, image) in `jobs`."""
    return [_image_bytes(seed, index, image) for index, image in jobs]


def _render_chunk_star(arguments):
    return _render_chunk(*arguments)


def _rendered(plan, jobs, workers):
    """Yields the bytes of each job in order, rendered by `workers` processes."""
    chunks = [(plan.seed, jobs[start : start + CHUNK_IMAGES]) for start in range(0, len(jobs), CHUNK_IMAGES)]
    if workers <= 1:
        for chunk in chunks:
            yield from _render_chunk(*chunk)
        return
    # "spawn": a forked child would inherit whatever threads the parent runs (TensorFlow's).
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for results in pool.imap(_render_chunk_star, chunks):
            yield from results


# --- writing -----------------------------------------------------------------


def _tar_info(name, size):
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, TAR_MTIME, TAR_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class _TarWriter:
    """Writes members with fixed headers into `<path>.partial`, renamed to `path` on success."""

    def __init__(self, path):
        self.path = path
        self.tar = None

    def __enter__(self):
        self.tar = tarfile.open(self.path + ".partial", "w", format=tarfile.GNU_FORMAT)
        return self

    def __exit__(self, error_type, error, traceback):
        self.tar.close()
        if error_type is None:
            os.replace(self.path + ".partial", self.path)
        else:  # never leave half a tar that looks like a download
            os.remove(self.path + ".partial")

    def add(self, name, data):
        self.tar.addfile(_tar_info(name, len(data)), io.BytesIO(data))


class _FolderWriter:
    """Writes members as files under a root folder, as `tar xf` would."""

    def __init__(self, root):
        self.root = root

    def __enter__(self):
        return self

    def __exit__(self, error_type, error, traceback):
        pass

    def add(self, name, data):
        path = os.path.join(self.root, *name.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)


def _write_listings(plan, writer):
    names = []
    for name, text in _listings_files(plan):
        writer.add(f"{LISTINGS_DIR}/{name}", gzip_bytes(text.encode("utf-8"), name[: -len(".gz")]))
        names.append(f"{LISTINGS_DIR}/{name}")
    return names


def _write_images(plan, writer, workers):
    """Image files in path order, then images.csv.gz last (the worst case for a streaming reader)."""
    with_files = [
        (index, image)
        for index, image in enumerate(plan.images)
        if image.kind not in (MISSING_FROM_ARCHIVE, MISSING_FROM_CSV)
    ]
    jobs = sorted(with_files, key=lambda job: job[1].path)
    names = []
    for (_, image), data in zip(jobs, _rendered(plan, jobs, workers)):
        names.append(f"{IMAGES_DIR}/{image.path}")
        writer.add(names[-1], data)
    writer.add(IMAGES_CSV, gzip_bytes(_images_csv(plan), "images.csv"))
    return names + [IMAGES_CSV]


def _write(plan, output_dir, tar, workers):
    """Writes the ABO files; returns their paths relative to `output_dir`."""
    os.makedirs(output_dir, exist_ok=True)
    if tar:
        with _TarWriter(os.path.join(output_dir, LISTINGS_TAR)) as writer:
            _write_listings(plan, writer)
        with _TarWriter(os.path.join(output_dir, IMAGES_TAR)) as writer:
            _write_images(plan, writer, workers)
        return [IMAGES_TAR, LISTINGS_TAR]
    with _FolderWriter(output_dir) as writer:
        return sorted(_write_listings(plan, writer) + _write_images(plan, writer, workers))


# --- truth -------------------------------------------------------------------


def _ids_of_kind(plan, kind):
    return sorted(image.image_id for image in plan.images if image.kind == kind)


def _listing_key(plan, listing):
    return [plan.item_ids[listing.item], DOMAINS[listing.domain][0]]


def _conflicts(plan):
    """Item ids and image ids seen with more than one product type."""
    types_of_item, types_of_image = collections.defaultdict(set), collections.defaultdict(set)
    for listing in plan.listings:
        types_of_item[plan.item_ids[listing.item]].add(listing.type_index)
        for index in ([listing.main] if listing.main is not None else []) + listing.others:
            types_of_image[plan.images[index].image_id].add(listing.type_index)
    return (
        sorted(key for key, types in types_of_item.items() if len(types) > 1),
        sorted(key for key, types in types_of_image.items() if len(types) > 1),
    )


def _truth(plan, files, tar):
    """What was planted, JSON-serialisable; `generate_sample` lists the keys."""
    conflicting_items, conflicting_images = _conflicts(plan)
    listings_of_image = collections.Counter(index for listing in plan.listings for index in set(listing.others))
    return {
        "seed": plan.seed,
        "max_side": plan.max_side,
        "tar": tar,
        "num_listings": len(plan.listings),
        "num_lines": len(plan.listings) + len(plan.malformed),
        "malformed_lines": [
            {"file": f"listings_{number:x}.json.gz", "line": position + 1}
            for number, position in sorted(plan.malformed.items())
        ],
        "listings_per_type": dict(
            sorted(collections.Counter(product_type(listing.type_index)[0] for listing in plan.listings).items())
        ),
        "num_images": sum(image.kind != MISSING_FROM_CSV for image in plan.images),
        "bad_images": {kind: _ids_of_kind(plan, kind) for kind in BAD_KINDS},
        "reencode_images": {
            "png": sorted(_ids_of_kind(plan, PNG) + _ids_of_kind(plan, PNG_RGBA)),
            "grayscale": _ids_of_kind(plan, GRAYSCALE),
            "cmyk": _ids_of_kind(plan, CMYK),
        },
        "transparent_png": _ids_of_kind(plan, PNG_RGBA),
        "missing_from_archive": _ids_of_kind(plan, MISSING_FROM_ARCHIVE),
        "missing_from_csv": _ids_of_kind(plan, MISSING_FROM_CSV),
        "no_main_image": sorted(_listing_key(plan, listing) for listing in plan.listings if listing.main is None),
        "boilerplate_images": {plan.images[index].image_id: listings_of_image[index] for index in plan.boilerplate},
        "conflicting_items": conflicting_items,
        "conflicting_images": conflicting_images,
        "num_items": len(plan.items),
        "shared_item_ids": sum(len(item) > 1 for item in plan.items),
        "non_normalised_product_types": sorted(
            _product_type_value(listing) for listing in plan.listings if listing.product_type_form == "odd"
        ),
        "unknown_keys": ["extra_field_v2"],
        "near_duplicates": sorted(
            (
                {
                    "image_id": plan.images[source].image_id,
                    "duplicate_id": plan.images[copy].image_id,
                    "variant": plan.images[copy].variant,
                    "strength": image_edits.PLANTED_EDITS[plan.images[copy].variant],
                }
                for source, copy in plan.near_duplicates
            ),
            key=lambda entry: entry["image_id"],
        ),
        "label_flips": sorted(
            (
                {
                    "image_id": plan.images[image].image_id,
                    "given_type": product_type(plan.listings[listing].type_index)[0],
                    "true_type": product_type(plan.images[image].style)[0],
                }
                for listing, image in plan.label_flips
            ),
            key=lambda entry: entry["image_id"],
        ),
        "listing_flips": sorted(
            (
                {
                    "item_id": plan.item_ids[plan.listings[listing].item],
                    "image_ids": sorted(
                        plan.images[index].image_id
                        for index in [plan.listings[listing].main] + plan.listings[listing].others
                        if index is not None and plan.images[index].style >= 0
                    ),
                    "given_type": product_type(plan.listings[listing].type_index)[0],
                    "true_type": product_type(shown_type)[0],
                }
                for listing, shown_type in plan.listing_flips
            ),
            key=lambda entry: entry["item_id"],
        ),
        "files": files,
    }


# --- public API and CLI ------------------------------------------------------


def _check_arguments(output_dir, num_listings, seed, max_side, workers, num_types=DEFAULT_TYPES):
    if not DEFAULT_TYPES <= num_types <= max_types():
        raise UserInputError(f"--types {num_types} is out of range: give {DEFAULT_TYPES} to {max_types()}")
    if num_listings < MIN_LISTINGS:
        raise UserInputError(
            f"--listings {num_listings} is too few: at least {MIN_LISTINGS} are needed to plant every quirk"
        )
    if max_side < MIN_MAX_SIDE:
        raise UserInputError(f"--max-side {max_side} is too small: give at least {MIN_MAX_SIDE} pixels")
    if seed < 0:
        raise UserInputError(f"--seed {seed} is negative: give a seed of 0 or more")
    if workers is not None and workers < 1:
        raise UserInputError(f"--workers {workers}: give 1 or more")
    if not output_dir:  # os.makedirs("") raised FileNotFoundError after the plan was made
        raise UserInputError("output '' is no folder name: give a new or empty folder")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UserInputError(f"output {output_dir!r} is a file: give a new or empty folder")
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        raise UserInputError(f"output folder {output_dir!r} is not empty: give a new or empty folder")


def _auto_workers(num_images):
    if num_images < AUTO_WORKERS_MIN_IMAGES:
        return 1
    return max(1, min(os.cpu_count() or 1, MAX_AUTO_WORKERS))


def generate_sample(
    output_dir,
    num_listings=DEFAULT_LISTINGS,
    seed=DEFAULT_SEED,
    tar=False,
    max_side=DEFAULT_MAX_SIDE,
    workers=None,
    num_types=DEFAULT_TYPES,
):
    """Writes a synthetic ABO download with every known quirk planted.

    The same arguments give byte-identical files, whatever `workers` is.

    Args:
      output_dir: a new or empty folder.
      num_listings: listing objects to write (besides the malformed line), at least 100.
      seed: non-negative seed of everything random.
      tar: write only `abo-listings.tar` and `abo-images-small.tar` instead of the extracted folders.
      max_side: longest side of the small images, in pixels (at least 32).
      workers: processes that render images; None picks by size and CPU count.
      num_types: product types to draw, from the 16 of PRODUCT_TYPES up to `max_types()` (ABO has 576); the
        types past the 16 look like no other type (`product_type`) and follow a long tail.

    Returns:
      The "truth", a JSON-serialisable dict of what was planted (image ids
      and item ids as strings, lists sorted):
        num_listings, num_lines: listing objects, and all lines with the malformed ones;
        malformed_lines: [{"file": "listings_3.json.gz", "line": 17}] (1-based);
        listings_per_type: {normalised product type: listings};
        num_images: rows of images.csv.gz; num_items: distinct item ids;
        bad_images: {"truncated"|"empty"|"not_an_image"|"too_large": [ids]};
        reencode_images: {"png"|"grayscale"|"cmyk": [ids]}; transparent_png: the RGBA PNGs;
        missing_from_archive: in images.csv.gz, no file; missing_from_csv: a
          main_image_id that images.csv.gz does not list;
        no_main_image: [[item_id, domain_name]] of listings without main_image_id;
        boilerplate_images: {id: listings showing it}, each on more than 50;
        conflicting_items, conflicting_images: ids seen with two product types;
        shared_item_ids: item ids listed on more than one marketplace;
        non_normalised_product_types, unknown_keys: spellings and keys planted;
        near_duplicates: [{"image_id", "duplicate_id", "variant"}]: a photo and its changed copy (variant one of
          NEAR_DUPLICATE_VARIANTS, an `image_edits` family, at `strength`)
          on a listing of another item of the same type, each shown by one listing;
        label_flips: [{"image_id", "given_type", "true_type"}]: an other image of one listing that shows
          another big type than the listing's;
        listing_flips: [{"item_id", "image_ids", "given_type", "true_type"}]: a listing (its item listed once)
          whose every image (at least MIN_LISTING_FLIP_IMAGES) shows another big type than the listing's;
        files: paths written, relative to `output_dir`; seed, max_side, tar: the arguments.

    Raises:
      UserInputError: a non-empty output folder or an out-of-range argument.
    """
    _check_arguments(output_dir, num_listings, seed, max_side, workers, num_types)
    plan = _make_plan(num_listings, seed, max_side, num_types)
    workers = workers or _auto_workers(len(plan.images))
    files = _write(plan, output_dir, tar, workers)
    return _truth(plan, files, tar)


def summary(truth, output_dir, seconds):
    bad = sum(len(ids) for ids in truth["bad_images"].values())
    top_type, top_count = max(truth["listings_per_type"].items(), key=lambda entry: entry[1])
    return "\n".join(
        [
            f"wrote {truth['num_listings']} listings ({truth['num_lines']} lines, "
            f"{len(truth['malformed_lines'])} malformed) "
            f"and {truth['num_images']} images to {os.path.abspath(output_dir)} in {seconds:.1f} s",
            f"{len(truth['listings_per_type'])} product types, "
            f"{top_type} {100 * top_count / truth['num_listings']:.0f}%; "
            f"{bad} damaged images, {len(truth['boilerplate_images'])} boilerplate, "
            f"{len(truth['conflicting_items'])} conflicting items, {len(truth['conflicting_images'])} conflicting "
            f"images",
        ]
    )


def sample_records(work_dir, num_listings, max_side=DEFAULT_MAX_SIDE, min_examples_per_class=5):
    """A generated sample in `work_dir/abo` and its build in `work_dir/records` (every image of every listing).

    Reused when `work_dir/records` exists, so benchmarks pay for the sample once. Returns the records folder.
    """
    from abo_tf.records import build as records_build  # the generator itself needs no build

    raw, records = os.path.join(work_dir, "abo"), os.path.join(work_dir, "records")
    if not os.path.isdir(records):
        generate_sample(raw, num_listings=num_listings, seed=0, max_side=max_side)
        options = records_build.BuildOptions(
            listings=raw,
            images=raw,
            output=records,
            image_selection="all",
            min_examples_per_class=min_examples_per_class,
            progress=False,
        )
        records_build.build(options)
    return records
