"""Labelled images written in the ABO layout (the recipe ablation's datasets) build into the records they describe."""

import collections

from abo_tf.records import build as records_build
from abo_tf.records import shards
from abo_tf.testing import labelled_download


def test_close_types_build_into_their_types_with_every_image(tmp_path):
    items = labelled_download.close_types(num_types=4, hues_per_shape=2, head_items=6, tail_items=3, side=32)
    images_per_type = collections.Counter()
    for product_type, images in items:
        images_per_type[product_type] += len(images)
    abo = labelled_download.write_download(str(tmp_path / "abo"), items)
    manifest = records_build.build(
        records_build.BuildOptions(
            listings=abo,
            images=abo,
            output=str(tmp_path / "records"),
            image_selection="all",
            min_examples_per_class=1,
            workers=1,
            progress=False,
        )
    )
    assert manifest["classes"] == sorted(images_per_type)
    built = {
        name: sum(shards.examples_per_class(manifest, split, [name])[0] for split in manifest["splits"])
        for name in manifest["classes"]
    }
    assert built == dict(images_per_type)
    assert images_per_type["TYPE_000"] > images_per_type["TYPE_003"]  # the long tail
