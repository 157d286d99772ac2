"""Where the ABO download is: the paths the user gave, or the `data/` folder the ABO instructions use."""

import os

from abo_tf.common.errors import InputNotFoundError

DATA_DIR = "data"
LISTINGS_TAR = "abo-listings.tar"
IMAGES_TAR = "abo-images-small.tar"
# What `tar xf` of each archive creates under the folder it is run in.
LISTINGS_EXTRACTED = os.path.join("listings", "metadata")
IMAGES_EXTRACTED = os.path.join("images", "metadata", "images.csv.gz")


def _find(given, data_dir, tar_name, extracted, flag):
    if given:
        return given
    looked = [os.path.join(data_dir, tar_name), os.path.join(data_dir, extracted)]
    if os.path.isfile(looked[0]):
        return looked[0]
    if os.path.exists(looked[1]):
        return data_dir
    raise InputNotFoundError(
        f"no {flag} given and no ABO download under {data_dir!r} (looked for {looked[0]!r} and "
        f"{looked[1]!r}): pass {flag} PATH, or put the download (the .tar or its extracted folder) there"
    )


def locate(listings=None, images=None, data_dir=DATA_DIR):
    """The listings and images inputs: as given, else the tar or the extracted folder under `data_dir`.

    Returns:
      `(listings path, images path)`.

    Raises:
      InputNotFoundError: one was not given and is not under `data_dir` (the message lists where it looked).
    """
    return (
        _find(listings, data_dir, LISTINGS_TAR, LISTINGS_EXTRACTED, "--listings"),
        _find(images, data_dir, IMAGES_TAR, IMAGES_EXTRACTED, "--images"),
    )
