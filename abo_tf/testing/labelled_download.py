"""Labelled images of other sources written in the ABO download layout, for benchmarks beyond the demo sample.

    listings/metadata/listings_0.json.gz   one listing per item: item_id, product_type, main/other image ids
    images/metadata/images.csv.gz          image_id,height,width,path
    images/small/<2 hex>/<image id>.jpg

`python -m abo_tf.build_records --listings DIR --images DIR` reads it like the real download. Two sources:
`close_types` (generated products of many types that differ in hue only by a few steps, long-tailed) and
`digits` (scikit-learn's 1,797 real 8x8 scans of handwritten digits, upscaled).
"""

import json
import os

import numpy as np

from abo_tf.testing import synthetic_abo

HUE_STEP = 5  # OpenCV hue units (0-179): 10 degrees


def _jpeg(pixels, quality=90):
    import cv2

    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return encoded.tobytes()


def write_download(output_dir, items):
    """Writes `items` ([(product_type, [BGR uint8 pixels, ...]), ...], one listing each) in the ABO layout.

    Image and item ids are the items' positions, so the same items give the same bytes.
    """
    listings, rows = [], ["image_id,height,width,path"]
    for item_number, (product_type, images) in enumerate(items):
        ids = [f"{item_number:06x}{index:02x}" for index in range(len(images))]
        for image_id, pixels in zip(ids, images):
            path = f"{image_id[:2]}/{image_id}.jpg"
            folder = os.path.join(output_dir, synthetic_abo.IMAGES_DIR, image_id[:2])
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, f"{image_id}.jpg"), "wb") as handle:
                handle.write(_jpeg(pixels))
            rows.append(f"{image_id},{pixels.shape[0]},{pixels.shape[1]},{path}")
        record = {
            "item_id": f"I{item_number:09d}",
            "domain_name": "amazon.com",
            "product_type": [{"value": product_type}],
        }
        record.update({"main_image_id": ids[0], "other_image_id": ids[1:]})
        listings.append(json.dumps(record, sort_keys=True))
    for relative, text in (
        (f"{synthetic_abo.LISTINGS_DIR}/listings_0.json.gz", "\n".join(listings) + "\n"),
        (synthetic_abo.IMAGES_CSV, "\n".join(rows) + "\n"),
    ):
        os.makedirs(os.path.dirname(os.path.join(output_dir, relative)), exist_ok=True)
        with open(os.path.join(output_dir, relative), "wb") as handle:
            handle.write(synthetic_abo.gzip_bytes(text.encode("utf-8"), os.path.basename(relative)[:-3]))
    return output_dir


def close_types(num_types=40, hues_per_shape=4, head_items=80, tail_items=4, images_per_item=2, side=64, seed=0):
    """Items of `num_types` generated product types, Zipf-like from `head_items` down to `tail_items` items a type.

    Each shape of the demo's types comes in `hues_per_shape` types that differ only in hue, HUE_STEP apart, with the
    same texture (the demo's types are at least 7 hue steps apart and every shape differs, and the renderer
    jitters hue by +-3): close classes with a long tail.
    """
    rng = np.random.default_rng(seed)
    ratio = (tail_items / head_items) ** (1 / max(1, num_types - 1))
    items = []
    for type_index in range(num_types):
        _, shape, base_hue, texture, _, _ = synthetic_abo.PRODUCT_TYPES[type_index // hues_per_shape]
        hue = base_hue + type_index % hues_per_shape * HUE_STEP
        for _ in range(max(1, round(head_items * ratio**type_index))):
            images = [_photo(rng, side, shape, hue, texture) for _ in range(images_per_item)]
            items.append((f"TYPE_{type_index:03d}", images))
    return items


def _photo(rng, side, shape, hue, texture):
    canvas, _ = synthetic_abo.product_canvas(rng, side, side, shape, hue, texture)
    noisy = canvas * rng.uniform(0.9, 1.08) + rng.normal(0, rng.uniform(2.0, 4.0), canvas.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def digits(side=48):
    """Items of scikit-learn's handwritten digits (1,797 scans of 8x8 in 17 grey levels), one image each, `side` px."""
    import cv2
    from sklearn.datasets import load_digits

    data = load_digits()
    items = []
    for image, label in zip(data.images, data.target):
        grey = np.round(255 - image * (255 / 16)).astype(np.uint8)  # dark ink on white, like a product shot
        pixels = cv2.resize(grey, (side, side), interpolation=cv2.INTER_LINEAR)
        items.append((f"DIGIT_{int(label)}", [cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)]))
    return items
