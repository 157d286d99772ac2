"""Reading the ABO downloads as shipped: extracted folders or the `.tar` archives.

A tar is never extracted and a member name is never used as a file-system
path: listings are streamed, and images are located once (one pass over the tar
headers) and then read by byte offset, which lets worker processes read them in
parallel. See shared/abo-format.md for the layout and its quirks.
"""

import collections
import csv
import dataclasses
import gzip
import hashlib
import io
import json
import os
import re
import tarfile
import zlib

from abo_tf.common.errors import InputNotFoundError, UserInputError

LISTINGS_DIR = "listings/metadata"
IMAGES_CSV = "images/metadata/images.csv.gz"
IMAGES_CSV_HEADER = ["image_id", "height", "width", "path"]
IMAGE_VARIANTS = ("small", "original")
_LISTINGS_FILE = re.compile(r"(?:^|/)listings/metadata/(listings_[0-9a-f]+\.json\.gz)$")

# Keys documented in the ABO README; anything else is counted as "unknown".
KNOWN_LISTING_KEYS = frozenset({
    "item_id", "domain_name", "country", "marketplace", "product_type", "main_image_id",
    "other_image_id", "item_name", "brand", "bullet_point", "item_keywords", "material",
    "style", "color", "model_name", "product_description", "node", "item_dimensions",
    "item_weight", "spin_id", "3dmodel_id", "color_code", "model_year", "model_number",
    "fabric_type", "finish_type", "item_shape", "pattern", "product_type_name",
})
_GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile, OSError)


class ArchiveError(UserInputError):
    """An ABO input file is missing, truncated or not what ABO ships."""


@dataclasses.dataclass(frozen=True)
class Listing:
    """The fields of one listing that the pipeline uses."""

    item_id: str
    domain_name: str
    product_type: str | None  # normalised; None when absent or empty
    main_image_id: str | None
    other_image_ids: tuple[str, ...]
    source: str  # "listings_3.json.gz:17", for messages

    @property
    def image_ids(self):
        """Every image the listing shows, main first, each once (a listing may name one twice)."""
        return list(dict.fromkeys(([self.main_image_id] if self.main_image_id else []) + list(self.other_image_ids)))


@dataclasses.dataclass
class ListingsReport:
    """What reading the listings found besides the listings themselves."""

    lines_read: int = 0
    sha256: object = dataclasses.field(default_factory=hashlib.sha256)  # of every line read
    malformed_lines: list = dataclasses.field(default_factory=list)  # "file:line" strings
    unknown_keys: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    files: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class ImageRow:
    """One row of images.csv.gz; height/width are the ORIGINAL image's, not the small one's."""

    image_id: str
    height: int
    width: int
    path: str  # relative to images/small/ (or images/original/)


def normalise_product_type(value):
    """`[{"value": "Shoes"}]` or `" shoes"` -> "SHOES"; None when there is no usable value.

    The ABO README documents a plain string, the real files carry a list of
    `{"value": ...}` dicts: both are accepted.
    """
    if isinstance(value, list):
        value = next((entry.get("value") for entry in value if isinstance(entry, dict)), None)
    if not isinstance(value, str):
        return None
    normalised = re.sub(r"[^0-9A-Za-z]+", "_", value.strip()).strip("_").upper()
    return normalised or None


def _check_exists(path, what):
    if not os.path.exists(path):
        raise InputNotFoundError(f"{what} {path!r} does not exist: give the extracted folder or the downloaded .tar")


def _open_tar(path):
    try:
        return tarfile.open(path, mode="r:")
    except (tarfile.TarError, OSError) as error:
        raise ArchiveError(f"{path!r} is not a readable uncompressed tar ({error}); give the .tar as downloaded or the extracted folder") from error


def _iter_tar_members(tar):
    """Yields regular-file members without letting `TarFile.members` grow.

    `TarFile.next()` appends every header to `tar.members`; on the 398k-member
    images tar that is hundreds of MB, so the list is dropped as we go.
    """
    while (member := tar.next()) is not None:
        tar.members.clear()
        if member.isreg():
            yield member


# --- listings ---------------------------------------------------------------


def _listing_sources(path):
    """Yields (file name, binary file object) for every listings_*.json.gz, in name order."""
    _check_exists(path, "listings")
    if os.path.isdir(path):
        for folder in (os.path.join(path, LISTINGS_DIR), os.path.join(path, "metadata"), path):
            names = sorted(n for n in os.listdir(folder) if _LISTINGS_FILE.search("listings/metadata/" + n)) if os.path.isdir(folder) else []
            if names:
                for name in names:
                    with open(os.path.join(folder, name), "rb") as handle:
                        yield name, handle
                return
        raise ArchiveError(f"no {LISTINGS_DIR}/listings_*.json.gz under {path!r}: is this the extracted abo-listings.tar?")
    with _open_tar(path) as tar:
        found = False
        for member in _iter_tar_members(tar):
            match = _LISTINGS_FILE.search(member.name)
            if match:
                found = True
                yield match.group(1), tar.extractfile(member)
        if not found:
            raise ArchiveError(f"{path!r} holds no {LISTINGS_DIR}/listings_*.json.gz: is it abo-listings.tar?")


def parse_listing(record, source):
    """The `Listing` of one raw JSON object; `source` names it in messages."""
    other = record.get("other_image_id") or []
    if isinstance(other, str):
        other = [other]
    main = record.get("main_image_id")
    return Listing(
        item_id=str(record.get("item_id") or ""),
        domain_name=str(record.get("domain_name") or ""),
        product_type=normalise_product_type(record.get("product_type")),
        main_image_id=main if isinstance(main, str) and main else None,
        other_image_ids=tuple(image_id for image_id in other if isinstance(image_id, str) and image_id),
        source=source,
    )


def read_listing_records(path, report=None):
    """Streams the raw JSON objects of an extracted folder or of `abo-listings.tar`.

    Malformed lines are skipped and recorded in `report` (never silently).

    Args:
      path: the extraction root (holding `listings/metadata/`), that folder, or the tar.
      report: a `ListingsReport` to fill in; pass one to see what was skipped.

    Yields:
      `(record, source)`: the line's dict and "listings_3.json.gz:17", in file order.

    Raises:
      ArchiveError: missing/unreadable files, truncated gzip.
    """
    report = report if report is not None else ListingsReport()
    for name, handle in _listing_sources(path):
        report.files.append(name)
        try:
            with gzip.open(handle, "rt", encoding="utf-8", errors="replace") as lines:
                yield from _read_listing_lines(name, lines, report)
        except _GZIP_ERRORS as error:
            raise ArchiveError(f"{name} in {path!r} is truncated or not gzip ({error}): download abo-listings.tar again") from error


def read_listings(path, report=None):
    """Streams the listings of an extracted folder or of `abo-listings.tar`, as `Listing`s.

    Arguments, errors and the handling of malformed lines as `read_listing_records`.
    """
    for record, source in read_listing_records(path, report):
        yield parse_listing(record, source)


def _read_listing_lines(name, lines, report):
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        report.lines_read += 1
        report.sha256.update(line.encode("utf-8"))
        source = f"{name}:{line_number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            report.malformed_lines.append(source)
            continue
        report.unknown_keys.update(key for key in record if key not in KNOWN_LISTING_KEYS)
        yield record, source


# --- images -----------------------------------------------------------------


@dataclasses.dataclass
class ImageStore:
    """Where the image files are: an extracted folder or the images tar.

    `locations` maps a path relative to `images/<variant>/` to where its bytes
    are: `(offset, size)` in the tar, or `(None, size)` in a folder. The object
    is small and picklable, so worker processes read images with `read`.
    """

    root: str
    is_tar: bool
    variant: str
    rows: dict  # image_id -> ImageRow
    locations: dict  # relative path -> (offset or None, size)
    csv_sha256: str = ""  # of images.csv.gz as shipped, for the manifest

    def without_index(self):
        """A copy without `rows`/`locations`, cheap to send to worker processes."""
        return dataclasses.replace(self, rows={}, locations={})

    def read_many(self, located_paths):
        """Yields the bytes of each `(relative path, location)`, opening the tar once."""
        if not self.is_tar:
            for relative_path, _ in located_paths:
                with open(os.path.join(self.root, "images", self.variant, relative_path), "rb") as handle:
                    yield handle.read()
            return
        with open(self.root, "rb") as handle:
            for _, (offset, size) in located_paths:
                handle.seek(offset)
                yield handle.read(size)


def _parse_images_csv(data, where):
    try:
        text = gzip.decompress(data).decode("utf-8")
    except _GZIP_ERRORS + (UnicodeDecodeError,) as error:
        raise ArchiveError(f"{where} is truncated or not gzip ({error}): download the images archive again") from error
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header != IMAGES_CSV_HEADER:
        raise ArchiveError(f"{where} has header {header}, expected {IMAGES_CSV_HEADER}")
    rows = {}
    for line_number, fields in enumerate(reader, start=2):
        try:
            image_id, height, width, relative = fields
            rows[image_id] = ImageRow(image_id, int(height), int(width), relative)
        except ValueError as error:
            raise ArchiveError(f"{where} line {line_number} is malformed ({fields!r})") from error
    return rows


def _images_root(path):
    for root in (path, os.path.dirname(os.path.normpath(path))):
        if os.path.isfile(os.path.join(root, IMAGES_CSV)):
            return root
    raise ArchiveError(f"no {IMAGES_CSV} under {path!r}: give the folder abo-images-small.tar was extracted into")


def _open_folder_store(path, variant):
    root = _images_root(path)
    with open(os.path.join(root, IMAGES_CSV), "rb") as handle:
        csv_data = handle.read()
    rows = _parse_images_csv(csv_data, IMAGES_CSV)
    image_dir = os.path.join(root, "images", variant)
    if not os.path.isdir(image_dir):
        raise ArchiveError(f"{image_dir!r} does not exist: is {path!r} the extracted abo-images-{variant}.tar?")
    locations = {}
    for row in rows.values():
        try:
            locations[row.path] = (None, os.stat(os.path.join(image_dir, row.path)).st_size)
        except FileNotFoundError:
            pass  # reported per image as "missing_from_archive" by the build
    return ImageStore(root, False, variant, rows, locations, hashlib.sha256(csv_data).hexdigest())


class _NotPlainUstar(Exception):
    """The tar uses headers the fast reader leaves to `tarfile` (pax, GNU long names, ...)."""


_BLOCK = 512
_PLAIN_FILE, _DIRECTORY = (b"0", b"\0"), b"5"


def _header_field(header, start, end):
    return header[start:end].split(b"\0", 1)[0]


def _fast_tar_files(path):
    """Yields `(name, data offset, size)` of the regular files of a plain ustar/GNU tar.

    `tarfile` builds a full `TarInfo` per header (about 40 us); on the 398k
    members of abo-images-small.tar that is the slowest serial step of a
    build. ABO's tars are plain: anything else raises `_NotPlainUstar` and the
    caller falls back to `tarfile`.
    """
    with open(path, "rb") as handle:
        offset = 0
        while len(header := handle.read(_BLOCK)) == _BLOCK and header.count(0) != _BLOCK:
            stored = _header_field(header, 148, 156).strip()
            if not stored or int(stored, 8) != sum(header[:148]) + 256 + sum(header[156:]):
                raise _NotPlainUstar(f"bad header checksum at byte {offset}")
            typeflag, size_field = header[156:157], _header_field(header, 124, 136).strip()
            if typeflag not in _PLAIN_FILE + (_DIRECTORY,) or not size_field or header[124] & 0x80:
                raise _NotPlainUstar(f"header type {typeflag!r} at byte {offset}")
            size, name = int(size_field, 8), _header_field(header, 0, 100)
            prefix = _header_field(header, 345, 500) if header[257:263] == b"ustar\0" else b""
            if typeflag in _PLAIN_FILE:
                full_name = (prefix + b"/" + name if prefix else name).decode("utf-8", "surrogateescape")
                yield full_name, offset + _BLOCK, size
            offset += _BLOCK + -(-size // _BLOCK) * _BLOCK
            handle.seek(offset)


def _tar_files(path):
    """`(name, data offset, size)` of every regular file, by the fast reader or by `tarfile`."""
    try:
        return list(_fast_tar_files(path))
    except (_NotPlainUstar, ValueError):
        with _open_tar(path) as tar:
            try:
                return [(member.name, member.offset_data, member.size) for member in _iter_tar_members(tar)]
            except tarfile.TarError as error:
                raise ArchiveError(f"{path!r} is truncated or damaged ({error}): download it again") from error


def _open_tar_store(path, variant):
    prefix = f"images/{variant}/"
    locations, csv_location = {}, None
    _open_tar(path).close()  # a clear error for a file that is not a tar at all
    for name, offset, size in _tar_files(path):
        name = name.removeprefix("./")
        if name.startswith(prefix):
            locations[name[len(prefix):]] = (offset, size)
        elif name == IMAGES_CSV:
            csv_location = (offset, size)
    if csv_location is None:
        raise ArchiveError(f"{path!r} has no {IMAGES_CSV} member: is it abo-images-{variant}.tar?")
    with open(path, "rb") as handle:
        handle.seek(csv_location[0])
        csv_data = handle.read(csv_location[1])
    rows = _parse_images_csv(csv_data, f"{IMAGES_CSV} in {path!r}")
    return ImageStore(path, True, variant, rows, locations, hashlib.sha256(csv_data).hexdigest())


def open_images(path, variant="small"):
    """Indexes the images of an extracted folder or of `abo-images-<variant>.tar`.

    Args:
      path: the extraction root (holding `images/`), or the `.tar` as downloaded.
      variant: "small" (256 px) or "original".

    Returns:
      An `ImageStore`.
    """
    if variant not in IMAGE_VARIANTS:
        raise UserInputError(f"image variant {variant!r} is not one of {IMAGE_VARIANTS}")
    _check_exists(path, "images")
    if os.path.isdir(path):
        return _open_folder_store(path, variant)
    return _open_tar_store(path, variant)
