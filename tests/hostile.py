"""Hostile and broken ABO downloads, crafted on top of a generated sample, for the hardening tests.

Each function writes one crafted input into a folder the caller owns (a
pytest `tmp_path`) and returns what to give the command, plus what a reader
should report. Every crafted file is small on disk (under 1 MB): a gzip bomb
is written as one compressed block repeated as gzip members (a gzip file may
hold many; readers decompress their concatenation), so nothing here ever
holds a bomb decompressed.
"""

import gzip
import os
import shutil
import tarfile

from abo_tf.records import archive

MiB = 2**20
# After the end of a valid JPEG: a record holding these bytes was read from outside the images folder.
SECRET_MARKER = b"abo-tf hostile corpus: this file lies outside images/small/"


# --- copies of the generated sample ------------------------------------------


def _link_or_copy(source, destination):
    try:
        os.link(source, destination)
    except OSError:  # another file system
        shutil.copy2(source, destination)


def copy_folder_sample(source_root, destination):
    """A copy of an extracted sample whose files are hard links; crafting replaces files, never edits them."""
    shutil.copytree(source_root, destination, copy_function=_link_or_copy)
    return str(destination)


def _replace(path, data):
    """Writes `data` as a new file at `path` (a hard-linked original stays untouched)."""
    if os.path.lexists(path):
        os.remove(path)
    with open(path, "wb") as handle:
        handle.write(data)


def write_gzip(path, parts):
    """Writes a gzip file whose decompressed content is each `(block, times)` of `parts`, in order.

    Each block is compressed once and written `times` times as a gzip member,
    so a 600 MB bomb is a 600 KB file built in milliseconds.
    """
    if os.path.lexists(path):
        os.remove(path)
    with open(path, "wb") as handle:
        for block, times in parts:
            member = gzip.compress(block, compresslevel=9, mtime=0)
            handle.writelines(member for _ in range(times))
    return str(path)


# --- folder mode: images.csv.gz paths that leave images/small/ -----------------

ESCAPE_KINDS = (
    "absolute",
    "dot_dot",
    "link_out",
    "linked_folder_out",
    "dev_zero",
    "link_to_dev_zero",
    "fifo",
    "folder",
    "trailing_slash",
)


def _usable_images(root):
    """Image ids a build with --image-selection all reads: shown by a listing with an id and a type, in id order."""
    seen, image_ids = set(), set()
    for listing in archive.read_listings(root):
        key = (listing.item_id, listing.domain_name)
        if listing.item_id and listing.product_type and key not in seen:
            image_ids.update(listing.image_ids)
        seen.add(key)
    return sorted(image_ids)


def _read_images_csv(root):
    with gzip.open(os.path.join(root, archive.IMAGES_CSV), "rt", encoding="utf-8") as handle:
        return [line.rstrip("\n").split(",") for line in handle]


def _write_images_csv(root, rows):
    data = "".join(",".join(row) + "\n" for row in rows).encode("utf-8")
    _replace(os.path.join(root, archive.IMAGES_CSV), gzip.compress(data, mtime=0))


def write_secret(outside, template_jpeg):
    """A valid JPEG outside the sample, `template_jpeg` plus SECRET_MARKER after its end; returns its path."""
    os.makedirs(outside, exist_ok=True)
    path = os.path.join(outside, "secret.jpg")
    _replace(path, template_jpeg + SECRET_MARKER)
    return path


def _escaping_path(kind, image_dir, secret):
    """Creates what `kind` needs under `image_dir` and returns the images.csv.gz path that points at it."""
    crafted = os.path.join(image_dir, "zz")
    os.makedirs(crafted, exist_ok=True)
    if kind == "absolute":
        return secret
    if kind == "dot_dot":
        return os.path.relpath(secret, image_dir)
    if kind == "link_out":
        os.symlink(secret, os.path.join(crafted, "link_out.jpg"))
        return "zz/link_out.jpg"
    if kind == "linked_folder_out":
        os.symlink(os.path.dirname(secret), os.path.join(image_dir, "linked"))
        return "linked/" + os.path.basename(secret)
    if kind == "dev_zero":
        return "/dev/zero"
    if kind == "link_to_dev_zero":
        os.symlink("/dev/zero", os.path.join(crafted, "zero.jpg"))
        return "zz/zero.jpg"
    if kind == "fifo":  # opened without care, it blocks forever
        os.mkfifo(os.path.join(crafted, "fifo.jpg"))
        return "zz/fifo.jpg"
    if kind == "folder":
        return "zz"
    if kind == "trailing_slash":
        return "zz/"
    raise ValueError(f"unknown escape kind {kind!r}")


def plant_escaping_paths(root, outside, kinds=ESCAPE_KINDS):
    """Points the images.csv.gz rows of some read images at paths that leave images/small/ or are no regular file.

    Args:
      root: a folder sample (a copy: its images.csv.gz is replaced).
      outside: a folder beside the sample, where the secret JPEG goes.
      kinds: the kinds of path to plant, one image each (see ESCAPE_KINDS).

    Returns:
      `(secret path, {image id: kind})`.
    """
    rows = _read_images_csv(root)
    header, body = rows[0], rows[1:]
    image_dir = os.path.join(root, "images", "small")
    path_of = {row[0]: row[3] for row in body}
    victims = [image_id for image_id in _usable_images(root) if image_id in path_of][: len(kinds)]
    with open(os.path.join(image_dir, path_of[victims[0]]), "rb") as handle:
        secret = write_secret(outside, handle.read())
    planted = {}
    for image_id, kind in zip(victims, kinds):
        path_of[image_id] = _escaping_path(kind, image_dir, secret)
        planted[image_id] = kind
    _write_images_csv(root, [header] + [[row[0], row[1], row[2], path_of[row[0]]] for row in body])
    return secret, planted


# --- listings: malformed lines and bombs ----------------------------------------

_DEPTH = 100_000
# kind -> (line, the reason the reader gives). Each is under 1 MB.
MALFORMED_LISTINGS = {
    "deep_nesting": (b'{"item_id": ' + b"[" * _DEPTH + b"]" * _DEPTH + b"}", "too_deeply_nested"),
    "huge_integer": (b'{"item_id": "B0HUGEINT1", "model_year": ' + b"9" * 100_000 + b"}", "invalid_json"),
    "item_id_dict": (
        (
            b'{"item_id": {"value": "B0DICT0001"}, "domain_name": "amazon.com", '
            b'"product_type": "SHOES", "main_image_id": "41abcdefghL"}'
        ),
        "bad_item_id",
    ),
    "item_id_number": (b'{"item_id": 12345, "domain_name": "amazon.com", "product_type": "SHOES"}', "bad_item_id"),
    "main_image_id_list": (
        b'{"item_id": "B0MAINLIST", "product_type": "SHOES", "main_image_id": ["41abcdefghL"]}',
        "bad_main_image_id",
    ),
    "other_image_id_dicts": (
        (b'{"item_id": "B0OTHERDIC", "product_type": "SHOES", "other_image_id": [{"id": "41abcdefghL"}]}'),
        "bad_other_image_id",
    ),
    "product_type_number": (b'{"item_id": "B0TYPENUMB", "product_type": 7}', "bad_product_type"),
    "product_type_dict": (b'{"item_id": "B0TYPEDICT", "product_type": {"value": "SHOES"}}', "bad_product_type"),
    "product_type_value_list": (
        b'{"item_id": "B0TYPEVLIS", "product_type": [{"value": ["SHOES"]}]}',
        "bad_product_type",
    ),
    "domain_name_list": (
        b'{"item_id": "B0DOMAINLS", "domain_name": ["amazon.com"], "product_type": "SHOES"}',
        "bad_domain_name",
    ),
    "not_an_object": (b'["B0NOTOBJEC", "SHOES"]', "not_an_object"),
    "item_name_number": (b'{"item_id": "B0NAMENUMB", "product_type": "SHOES", "item_name": 5}', "bad_item_name"),
    "language_tag_list": (
        (
            b'{"item_id": "B0TAGLIST1", "product_type": "SHOES", '
            b'"item_name": [{"language_tag": ["en_US"], "value": "Shoe"}]}'
        ),
        "bad_item_name",
    ),
}


def listings_file(root, number=0):
    return os.path.join(root, archive.LISTINGS_DIR, f"listings_{number:x}.json.gz")


def _listings_content(path):
    with gzip.open(path, "rb") as handle:
        return handle.read()


def append_listing_lines(root, lines, number=0):
    """Appends raw lines to listings_<number>.json.gz of a folder sample; returns their "file:line" sources."""
    path = listings_file(root, number)
    content = _listings_content(path)
    first = content.count(b"\n") + 1
    write_gzip(path, [(content + b"".join(line + b"\n" for line in lines), 1)])
    return [f"{os.path.basename(path)}:{first + index}" for index in range(len(lines))]


def append_long_listing_line(root, line_bytes, number=0):
    """Appends one JSON line of about `line_bytes` bytes (one string value); returns its "file:line" source."""
    path = listings_file(root, number)
    content = _listings_content(path)
    write_gzip(
        path,
        [(content + b'{"item_id": "B0LONGLINE", "item_name": "', 1), (b"a" * MiB, line_bytes // MiB), (b'"}\n', 1)],
    )
    line_number = content.count(b"\n") + 1
    return f"{os.path.basename(path)}:{line_number}"


def append_blank_lines(root, blank_bytes, number=0):
    """Appends `blank_bytes` newlines to listings_<number>.json.gz, then one copy of its first line."""
    path = listings_file(root, number)
    content = _listings_content(path)
    first_line = content.split(b"\n", 1)[0] + b"\n"
    write_gzip(path, [(content, 1), (b"\n" * MiB, blank_bytes // MiB), (first_line, 1)])
    line_number = content.count(b"\n") + blank_bytes // MiB * MiB + 1
    return f"{os.path.basename(path)}:{line_number}"


def images_csv_bomb(root, decompressed_bytes):
    """Replaces images.csv.gz with its header followed by `decompressed_bytes` of newlines."""
    header = (",".join(archive.IMAGES_CSV_HEADER) + "\n").encode()
    return write_gzip(os.path.join(root, archive.IMAGES_CSV), [(header, 1), (b"\n" * MiB, decompressed_bytes // MiB)])


# --- tar surgery --------------------------------------------------------------


def with_link(source_tar, destination, name, kind, target="/etc/passwd"):
    """The tar repacked with member `name` replaced by a link ("symlink" or "hardlink") to `target`, or a FIFO."""
    types = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE}
    with tarfile.open(source_tar) as source, tarfile.open(destination, "w", format=tarfile.GNU_FORMAT) as packed:
        for member in source.getmembers():
            if member.name == name:
                member = tarfile.TarInfo(name)
                member.type, member.linkname = types[kind], target if kind != "fifo" else ""
            packed.addfile(member, source.extractfile(member) if member.isreg() else None)
    return str(destination)


def tar_members(path):
    """`(name, header offset, data offset, size)` of every member, by tarfile."""
    with tarfile.open(path) as tar:
        return [(member.name, member.offset, member.offset_data, member.size) for member in tar]


def cut_file(source, destination, at_byte):
    """Copies the first `at_byte` bytes of `source`: a download that stopped there."""
    with open(source, "rb") as handle:
        _replace(destination, handle.read(at_byte))
    return str(destination)


def _size_field(size):
    """The 12-byte size field: octal when it fits, GNU base-256 otherwise (also for negative sizes)."""
    if 0 <= size < 8**11:
        return f"{size:011o}".encode() + b"\0"
    return (b"\x80" if size >= 0 else b"\xff") + (size % 256**11).to_bytes(11, "big")


def with_declared_size(source, destination, member_name, size):
    """Copies a tar with `member_name`'s header declaring `size` bytes (checksum fixed, data untouched)."""
    header_offset = next(offset for name, offset, _, _ in tar_members(source) if name == member_name)
    with open(source, "rb") as handle:
        data = bytearray(handle.read())
    header = data[header_offset : header_offset + 512]
    header[124:136] = _size_field(size)
    header[148:156] = b" " * 8
    header[148:156] = f"{sum(header):06o}".encode() + b"\0 "
    data[header_offset : header_offset + 512] = header
    _replace(destination, bytes(data))
    return str(destination)


def with_csv_first(images_tar, destination):
    """The images tar repacked with images.csv.gz as its first member (as a tar sorted by name would have it)."""
    with tarfile.open(images_tar) as source, tarfile.open(destination, "w", format=tarfile.GNU_FORMAT) as target:
        members = source.getmembers()
        for member in sorted(members, key=lambda member: member.name != archive.IMAGES_CSV):
            target.addfile(member, source.extractfile(member) if member.isreg() else None)
    return str(destination)


# --- an audit's worst case: one picture, thousands of times ------------------------


def identical_images_download(root, count, side=32):
    """An ABO folder of `count` listings, each showing its own JPEG of the same pixels (only a JPEG comment
    differs, so no two files share bytes and the build keeps them all): every pair is a near-duplicate.

    Returns:
      (listings folder, images folder) for build_records.
    """
    import gzip as gzip_lib
    import json

    import cv2
    import numpy as np

    os.makedirs(os.path.join(root, "listings", "metadata"))
    os.makedirs(os.path.join(root, "images", "metadata"))
    os.makedirs(os.path.join(root, "images", "small", "aa"))
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    jpeg = cv2.imencode(".jpg", pixels)[1].tobytes()
    rows, lines = ["image_id,height,width,path"], []
    for index in range(count):
        comment = f"copy {index}".encode()
        image_id = f"1{index:09d}L"
        with open(os.path.join(root, "images", "small", "aa", f"{image_id}.jpg"), "wb") as handle:
            handle.write(jpeg[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + jpeg[2:])
        rows.append(f"{image_id},{side},{side},aa/{image_id}.jpg")
        product_type = [{"value": ("CHAIR", "TABLE")[index % 2]}]
        lines.append(json.dumps({"item_id": f"I{index:09d}", "main_image_id": image_id, "product_type": product_type}))
    with gzip_lib.open(os.path.join(root, "images", "metadata", "images.csv.gz"), "wt") as handle:
        handle.write("\n".join(rows) + "\n")
    with gzip_lib.open(os.path.join(root, "listings", "metadata", "listings_0.json.gz"), "wt") as handle:
        handle.write("\n".join(lines) + "\n")
    return os.path.join(root, "listings"), os.path.join(root, "images")
