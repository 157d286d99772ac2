"""Reading the ABO downloads as shipped: extracted folders or the `.tar` archives.

A tar is never extracted and a member name is never used as a file-system
path: listings are streamed, and images are located once (one pass over the tar
headers) and then read by byte offset, which lets worker processes read them in
parallel. In an extracted folder, the `path` column of images.csv.gz is not
trusted either: a file is opened one path component at a time below
`images/<variant>/`, following no link, and must be a regular file.

Every read is bounded whatever the input (the MAX_* constants below, each
with the real figure it leaves a margin over): gzip streams are decompressed
in chunks and capped, lines are split without materialising an over-long one,
and a tar that stops early is an error ("truncated at byte N") unless the
caller allows a partial read, which is then reported. See
docs/abo-format.md for the layout and its quirks.
"""

import collections
import csv
import dataclasses
import errno
import functools
import gzip
import hashlib
import io
import itertools
import json
import os
import re
import stat
import sys
import tarfile
import zlib

from abo_tf.common.errors import InputNotFoundError, UserInputError

LISTINGS_DIR = "listings/metadata"
IMAGES_CSV = "images/metadata/images.csv.gz"
IMAGES_CSV_HEADER = ["image_id", "height", "width", "path"]
IMAGE_VARIANTS = ("small", "original")
_LISTINGS_FILE = re.compile(r"(?:^|/)listings/metadata/(listings_[0-9a-f]+\.json\.gz)$")

# Limits. Small images are about 8 KB, originals a few MB.
MAX_IMAGE_FILE_BYTES = 50 * 2**20
# images.csv.gz: about 20 MB decompressed and 398,212 rows of about 40 bytes.
MAX_IMAGES_CSV_BYTES = 512 * 2**20
MAX_IMAGES_CSV_ROWS = 1_000_000  # also bounds the parse time and the memory of the rows (about 0.3 KB each)
MAX_IMAGES_CSV_LINE_BYTES = 64 * 2**10
# listings_*.json.gz: lines of a few KB, about 50 MB decompressed per file, 147,702 listings in all.
MAX_LISTING_LINE_BYTES = 2**20  # a longer line is counted as malformed
MAX_LISTINGS_FILE_BYTES = 2**30  # decompressed, per file: also bounds the time spent on blank lines
MAX_LISTING_LINES = 1_000_000  # all files together; bounds the memory of the parsed listings (~0.4 KB each)
MAX_UNKNOWN_KEYS = 1000  # distinct unknown keys counted by name; the rest under UNKNOWN_KEYS_OVERFLOW
UNKNOWN_KEYS_OVERFLOW = "(other unknown keys)"
_READ_CHUNK = 2**20

# Drop reasons of an image, besides those of images.py.
PATH_OUTSIDE_IMAGES = "path_outside_images"  # not a regular file reached inside images/<variant>/ without a link
FILE_TOO_LARGE = "file_too_large"  # more than MAX_IMAGE_FILE_BYTES

# Keys documented in the ABO README; anything else is counted as "unknown".
# Localised text fields, as documented (docs/abo-format.md).
LOCALISED_LISTING_KEYS = (
    "item_name",
    "brand",
    "bullet_point",
    "item_keywords",
    "material",
    "style",
    "color",
    "model_name",
    "product_description",
)
KNOWN_LISTING_KEYS = frozenset(
    {
        *LOCALISED_LISTING_KEYS,
        "item_id",
        "domain_name",
        "country",
        "marketplace",
        "product_type",
        "main_image_id",
        "other_image_id",
        "node",
        "item_dimensions",
        "item_weight",
        "spin_id",
        "3dmodel_id",
        "color_code",
        "model_year",
        "model_number",
        "fabric_type",
        "finish_type",
        "item_shape",
        "pattern",
        "product_type_name",
    }
)
_GZIP_ERRORS = (zlib.error, gzip.BadGzipFile, OSError)
_GIVE_INPUT = "give the extracted folder or the downloaded .tar"
_ALLOW_TRUNCATED_HINT = "download it again (or pass --allow-truncated to use what is there)"


class ArchiveError(UserInputError):
    """An ABO input file is missing, truncated or not what ABO ships."""


@dataclasses.dataclass(frozen=True, slots=True)
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

    lines_read: int = 0  # lines that are not blank, malformed ones included
    sha256: object = dataclasses.field(default_factory=hashlib.sha256)  # of every line parsed
    malformed_lines: list = dataclasses.field(default_factory=list)  # "file:line" strings
    malformed_reasons: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    unknown_keys: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    files: list = dataclasses.field(default_factory=list)
    truncated: list = dataclasses.field(default_factory=list)  # one line per cut file, when allowed

    def add_malformed(self, source, reason):
        self.malformed_lines.append(source)
        self.malformed_reasons[reason] += 1


@dataclasses.dataclass(frozen=True, slots=True)
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
    return _normalised_type(value)


_NOT_ALPHANUMERIC = re.compile(r"[^0-9A-Za-z]+")


@functools.lru_cache(maxsize=4096)  # ABO has 576 types: a regular expression a listing was 8% of reading them
def _normalised_type(value):
    normalised = _NOT_ALPHANUMERIC.sub("_", value.strip()).strip("_").upper()
    return normalised or None


def _check_exists(path, what):
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputNotFoundError(f"{what} {path!r} does not exist: {_GIVE_INPUT}") from None
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):  # a FIFO or a device would block or never end
        raise ArchiveError(f"{what} {path!r} is neither a folder nor a regular file: {_GIVE_INPUT}")


def _open_regular_file(path, what, inside_dataset=False):
    """A binary file object for `path`; a FIFO, a device or a folder is refused without blocking.

    A file found inside the dataset (a listings file, images.csv.gz) must not be a link either: like
    the image paths, nothing the dataset names may lead out of it. Paths the user gives may be links.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | (os.O_NOFOLLOW if inside_dataset else 0)
    try:
        descriptor = os.open(path, flags)
    except OSError as error:
        if inside_dataset and error.errno == errno.ELOOP:
            raise ArchiveError(f"{what} {path!r} is a link: give the files as extracted from the ABO tar") from error
        raise ArchiveError(f"{what} {path!r} cannot be opened ({error.strerror})") from error
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise ArchiveError(f"{what} {path!r} is not a regular file: give the files as extracted from the ABO tar")
    return os.fdopen(descriptor, "rb")


class _Section(io.RawIOBase):
    """Bytes `[offset, offset + size)` of an open file, read with `os.pread` (no shared file position)."""

    def __init__(self, handle, offset, size):
        super().__init__()
        self._descriptor, self._position, self._end = handle.fileno(), offset, offset + size

    def readable(self):
        return True

    def readinto(self, buffer):
        data = os.pread(self._descriptor, max(0, min(len(buffer), self._end - self._position)), self._position)
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)


class _HashingReader:
    """Passes `read` through to `raw`, hashing every byte read."""

    def __init__(self, raw):
        self.raw, self.sha256 = raw, hashlib.sha256()

    def read(self, size=-1):
        data = self.raw.read(size)
        self.sha256.update(data)
        return data

    def read_to_end(self):
        while self.read(_READ_CHUNK):
            pass


def _decompressed_chunks(stream, max_bytes, where):
    """The decompressed bytes of a `GzipFile`, in chunks, refusing more than `max_bytes` in all.

    `read1` returns what one read of the input gave, so the bytes before a
    truncation are yielded before the `EOFError` that reports it.
    """
    total = 0
    while chunk := stream.read1(_READ_CHUNK):
        total += len(chunk)
        if total > max_bytes:
            raise ArchiveError(
                f"{where} decompresses to more than {max_bytes} bytes, far more than ABO's: "
                "it is damaged or a decompression bomb; download it again"
            )
        yield chunk


_NOT_BLANK = re.compile(rb"[^ \t\n\r\x0b\x0c]")


def _split_lines(chunks, max_line_bytes):
    """Yields `(line number, line)` for every line of a byte stream that is not blank, in bounded memory.

    Runs of blank lines are skipped by a regular expression, not line by line
    (a file of 300 MB of newlines took 44 s of CPU read line by line). A line
    longer than `max_line_bytes` is yielded as None and its bytes are dropped as
    they arrive, so it is never held whole.
    """
    line_number, pending, skipping = 1, b"", False
    for chunk in chunks:
        if skipping:  # inside an over-long line: drop bytes up to its end
            end = chunk.find(b"\n")
            if end < 0:
                continue
            chunk, skipping, line_number = chunk[end + 1 :], False, line_number + 1
        buffer, position = pending + chunk if pending else chunk, 0
        while (found := _NOT_BLANK.search(buffer, position)) is not None:
            if (first := found.start()) == position:  # the common case: no blank bytes first
                start = position
            else:
                start = buffer.rfind(b"\n", position, first) + 1 or position
                line_number += buffer.count(b"\n", position, start)
            end = buffer.find(b"\n", first)
            if end < 0:
                break
            yield line_number, buffer[start : end + 1] if end - start <= max_line_bytes else None
            line_number, position = line_number + 1, end + 1
        else:  # only blank bytes left: count their line ends, keep the unfinished line's white space
            start = buffer.rfind(b"\n", position) + 1 or position
            line_number += buffer.count(b"\n", position, start)
        pending = buffer[start:]
        if len(pending) > max_line_bytes:
            if found is None:  # blank so far: whatever follows, the line is blank or over-long
                pending = pending[: max_line_bytes + 1]
            else:
                yield line_number, None
                pending, skipping = b"", True
    if pending.strip() and not skipping:
        yield line_number, pending


# --- tar headers --------------------------------------------------------------


class _NotPlainUstar(Exception):
    """The tar uses headers the fast reader leaves to `tarfile` (pax, GNU long names, ...)."""


class _TarCut(Exception):
    """The tar stops before its end-of-archive marker: at byte `at_byte`, inside `member` (None: in a header)."""

    def __init__(self, at_byte, member=None, data_offset=None):
        super().__init__(at_byte, member, data_offset)
        self.at_byte, self.member, self.data_offset = at_byte, member, data_offset

    def describe(self, path):
        inside = f" inside member {self.member!r}" if self.member else ""
        return f"{path!r} is truncated at byte {self.at_byte}{inside}"


_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_PLAIN_FILE, _DIRECTORY = (b"0", b"\0"), b"5"


def _header_field(header, start, end):
    return header[start:end].split(b"\0", 1)[0]


def _header_sum(header):
    """The sum of a header's bytes, its checksum field (148:156) left out, as `sum()` would give it.

    Adler-32's low half is 1 + the sum of the bytes mod 65521: exact for runs of at most 256 bytes (255 * 256
    < 65521). Three C calls instead of `sum()` iterating 504 ints: 3.6 -> 0.9 us a header, at 400k headers a
    second off the serial index.
    """
    return (
        (zlib.adler32(header[:148]) & 0xFFFF)
        + (zlib.adler32(header[156:412]) & 0xFFFF)
        + (zlib.adler32(header[412:]) & 0xFFFF)
        - 3
    )


def _fast_tar_files(path):
    """Yields `(name, data offset, size)` of the regular files of a plain ustar/GNU tar.

    `tarfile` builds a full `TarInfo` per header (about 40 us); on the 398k
    members of abo-images-small.tar that is the slowest serial step of a
    build. ABO's tars are plain: anything else raises `_NotPlainUstar` and the
    caller falls back to `tarfile`. A member whose data runs past the end of the
    file, or a file that ends before the end-of-archive marker (a zero block),
    raises `_TarCut`.
    """
    # One pread a header: a buffered seek and read copied 8 KiB (about one small image) for each 512-byte header.
    with open(path, "rb", buffering=0) as handle:
        descriptor = handle.fileno()
        file_size = os.fstat(descriptor).st_size
        offset = 0
        while len(header := os.pread(descriptor, _BLOCK, offset)) == _BLOCK and header != _ZERO_BLOCK:
            try:
                stored = _header_field(header, 148, 156).strip()
                if not stored or int(stored, 8) != _header_sum(header) + 256:
                    raise _NotPlainUstar(f"bad header checksum at byte {offset}")
                typeflag, size_field = header[156:157], _header_field(header, 124, 136).strip()
                if typeflag not in _PLAIN_FILE + (_DIRECTORY,) or not size_field or header[124] & 0x80:
                    raise _NotPlainUstar(f"header type {typeflag!r} at byte {offset}")
                size, name = int(size_field, 8), _header_field(header, 0, 100)
            except ValueError as error:
                raise _NotPlainUstar(f"unreadable header at byte {offset}") from error
            prefix = _header_field(header, 345, 500) if header[257:263] == b"ustar\0" else b""
            full_name = (prefix + b"/" + name if prefix else name).decode("utf-8", "surrogateescape")
            if not 0 <= size <= file_size - offset - _BLOCK:
                if size < 0:
                    raise _NotPlainUstar(f"negative size at byte {offset}")
                raise _TarCut(file_size, full_name, offset + _BLOCK)
            if typeflag in _PLAIN_FILE:
                yield full_name, offset + _BLOCK, size
            elif size:  # tarfile skips no data after a folder entry: leave this odd header to it
                raise _NotPlainUstar(f"folder entry with data at byte {offset}")
            offset += _BLOCK + -(-size // _BLOCK) * _BLOCK
        if len(header) < _BLOCK:  # no end-of-archive marker: cut in or before a header
            if offset == 0:
                raise _NotPlainUstar("shorter than one header")  # tarfile says "not a tar"
            raise _TarCut(file_size)


class _ClampedReads:
    """A tar file for `tarfile` whose reads never go past its end nor ask for more than `_MAX_TAR_METADATA_READ`.

    tarfile reads a pax or GNU long-name header's declared size in one call:
    2**62 raised MemoryError, 8 GB allocated 8 GB. `asked_past_end` records
    that a read wanted bytes the file does not have, which is truncation.
    """

    def __init__(self, handle, file_size):
        self._handle, self._file_size, self.asked_past_end = handle, file_size, False

    def read(self, size):
        if size < 0:  # tarfile always asks for a size: this one comes from a header
            raise ValueError(f"a header declares a negative size ({size})")
        left = max(0, self._file_size - self._handle.tell())
        if size > left:
            self.asked_past_end, size = True, left
        return self._handle.read(min(size, _MAX_TAR_METADATA_READ))

    def seek(self, offset, whence=os.SEEK_SET):
        return self._handle.seek(offset, whence)

    def tell(self):
        return self._handle.tell()


_MAX_TAR_METADATA_READ = 2**20  # pax records and long names are a few hundred bytes
_TARFILE_ERRORS = (tarfile.TarError, OSError, ValueError, OverflowError, MemoryError)


def _tarfile_files(path):
    """As `_fast_tar_files`, read by `tarfile` (pax headers, GNU long names, base-256 sizes)."""
    file_size = os.path.getsize(path)
    with open(path, "rb") as handle:
        reads = _ClampedReads(handle, file_size)
        with _open_tarfile(reads, path, file_size) as tar:
            try:
                yield from _tarfile_members(tar, file_size)
            except _TARFILE_ERRORS as error:
                if reads.asked_past_end:
                    raise _TarCut(file_size) from error
                message = f"{path!r} is damaged near byte {tar.offset} ({error}): download it again"
                raise ArchiveError(message) from error
        handle.seek(tar.offset)  # where tarfile stopped: the end-of-archive marker, or not
        block = handle.read(_BLOCK)
    if len(block) < _BLOCK:
        raise _TarCut(file_size)
    if block != _ZERO_BLOCK:
        raise ArchiveError(f"{path!r} is damaged at byte {tar.offset} (no valid tar header there): download it again")


def _open_tarfile(reads, path, file_size):
    if file_size < _BLOCK:  # "truncated at byte 6" read as a cut download; most likely it is no tar at all
        raise ArchiveError(
            f"{path!r} is {file_size} bytes, shorter than one tar header: not a tar archive, or a download cut "
            "at its start; give the .tar as downloaded or the extracted folder"
        )
    try:
        return tarfile.open(fileobj=reads, mode="r:")  # reads the first header
    except _TARFILE_ERRORS as error:
        if reads.asked_past_end:
            raise _TarCut(file_size) from error
        raise ArchiveError(
            f"{path!r} is not a readable uncompressed tar ({error}); "
            "give the .tar as downloaded or the extracted folder"
        ) from error


def _tarfile_members(tar, file_size):
    while (member := tar.next()) is not None:
        tar.members.clear()  # TarFile.next() keeps every header: hundreds of MB on the images tar
        if member.size < 0:
            raise tarfile.HeaderError(f"member {member.name!r} declares a negative size")
        if member.offset_data + member.size > file_size:
            raise _TarCut(file_size, member.name, member.offset_data)
        if member.isreg():
            yield member.name, member.offset_data, member.size
        elif not member.isdir():
            # A link, device or FIFO: no data to read, but named, so that a listings file or an image that
            # is one is refused by name rather than silently missing (as a link is in an extracted folder).
            yield member.name, None, None


def _tar_files(path, allow_truncated=False):
    """`(name, data offset, size)` of every complete regular file, by the fast reader or by `tarfile`.

    Links, devices and FIFOs come as `(name, None, None)` (`tarfile` reads them: the fast reader does not).

    Returns:
      `(files, cut)`: `cut` is None, or the `_TarCut` where the file stops
      (only when `allow_truncated`; otherwise that raises `ArchiveError`).
    """
    files = []
    try:
        # Appended one by one (not list()), so the files before a _TarCut are kept.
        try:
            for entry in _fast_tar_files(path):
                files.append(entry)  # noqa: PERF402
        except _NotPlainUstar:
            files = []
            for entry in _tarfile_files(path):
                files.append(entry)
    except _TarCut as cut:
        if not allow_truncated:
            raise ArchiveError(f"{cut.describe(path)}: {_ALLOW_TRUNCATED_HINT}") from None
        return files, cut
    return files, None


# --- listings ---------------------------------------------------------------


def _listing_sources(path, report, allow_truncated):
    """Yields (file name, binary file object, its size, whether the tar is cut inside it) per listings_*.json.gz.

    Files come in name order from a folder, in member order from a tar.
    """
    _check_exists(path, "listings")
    if os.path.isdir(path):
        for folder in (os.path.join(path, LISTINGS_DIR), os.path.join(path, "metadata"), path):
            names = (
                sorted(name for name in os.listdir(folder) if _LISTINGS_FILE.search("listings/metadata/" + name))
                if os.path.isdir(folder)
                else []
            )
            if names:
                for name in names:
                    with _open_regular_file(os.path.join(folder, name), "listings file", inside_dataset=True) as handle:
                        yield name, handle, os.fstat(handle.fileno()).st_size, False
                return
        raise ArchiveError(
            f"no {LISTINGS_DIR}/listings_*.json.gz under {path!r}: is this the extracted abo-listings.tar?"
        )
    files, cut = _tar_files(path, allow_truncated)
    if cut is not None:
        report.truncated.append(f"{cut.describe(path)}: read up to there")
        if cut.member is not None:  # the cut member's first bytes are still listings
            files.append((cut.member, cut.data_offset, cut.at_byte - cut.data_offset))
    found = False
    with open(path, "rb") as handle:
        for member_name, offset, size in files:
            match = _LISTINGS_FILE.search(member_name)
            if match and offset is None:
                raise ArchiveError(
                    f"listings file {member_name!r} in {path!r} is a link or a device, not a file: "
                    "give abo-listings.tar as downloaded"
                )
            if match:
                found = True
                is_cut = cut is not None and member_name == cut.member
                yield match.group(1), _Section(handle, offset, size), size, is_cut
    if not found:
        raise ArchiveError(f"{path!r} holds no {LISTINGS_DIR}/listings_*.json.gz: is it abo-listings.tar?")


def parse_listing(record, source):
    """The `Listing` of one raw JSON object (as yielded by `read_listing_records`); `source` names it in messages."""
    other = record.get("other_image_id") or []
    if isinstance(other, str):
        other = [other]
    main = record.get("main_image_id")
    product_type = normalise_product_type(record.get("product_type"))
    return Listing(
        item_id=str(record.get("item_id") or ""),
        # A few domains and 576 types over 147,702 listings: one copy of each string, not one per listing.
        domain_name=sys.intern(str(record.get("domain_name") or "")),
        product_type=sys.intern(product_type) if product_type else None,
        main_image_id=main if isinstance(main, str) and main else None,
        other_image_ids=tuple(image_id for image_id in other if isinstance(image_id, str) and image_id),
        source=source,
    )


def read_listing_records(path, report=None, allow_truncated=False):
    """Streams the raw JSON objects of an extracted folder or of `abo-listings.tar`.

    Malformed lines (not JSON, not an object, nested too deep, a key field of
    the wrong type, longer than MAX_LISTING_LINE_BYTES) are skipped and
    recorded in `report`, never silently.

    Args:
      path: the extraction root (holding `listings/metadata/`), that folder, or the tar.
      report: a `ListingsReport` to fill in; pass one to see what was skipped.
      allow_truncated: read a truncated tar or gzip up to where it stops,
        recording that in `report.truncated`, instead of raising.

    Yields:
      `(record, source)`: the line's dict and "listings_3.json.gz:17", in file order.

    Raises:
      ArchiveError: missing/unreadable/damaged files, truncated files (unless
        allowed), more than the MAX_* limits.
    """
    report = report if report is not None else ListingsReport()
    for name, handle, size, is_cut in _listing_sources(path, report, allow_truncated):
        report.files.append(name)
        where = f"{name} in {path!r}"
        try:
            with gzip.GzipFile(fileobj=handle, mode="rb") as stream:
                chunks = _decompressed_chunks(stream, MAX_LISTINGS_FILE_BYTES, where)
                yield from _read_listing_lines(name, _split_lines(chunks, MAX_LISTING_LINE_BYTES), report)
        except EOFError:  # the gzip stream stops early; a tar cut inside this file is already reported
            if not allow_truncated:
                raise ArchiveError(
                    f"{where} is truncated at byte {size} (its gzip stream ends early): download "
                    "abo-listings.tar again (or pass --allow-truncated to use what is there)"
                ) from None
            if not is_cut:
                report.truncated.append(f"{where} is truncated at byte {size}: read up to there")
        except _GZIP_ERRORS as error:
            raise ArchiveError(f"{where} is damaged or not gzip ({error}): download abo-listings.tar again") from error


def read_listings(path, report=None, allow_truncated=False):
    """Streams the listings of an extracted folder or of `abo-listings.tar`, as `Listing`s.

    Arguments, errors and the handling of malformed lines as `read_listing_records`.
    """
    for record, source in read_listing_records(path, report, allow_truncated):
        yield parse_listing(record, source)


def _read_listing_lines(name, lines, report):
    for line_number, line in lines:
        source = f"{name}:{line_number}"
        if line is None:
            report.lines_read += 1
            report.add_malformed(source, "line_too_long")
            continue
        text = line.decode("utf-8", "replace")
        if not text.strip():  # blank but for non-ASCII white space
            continue
        report.lines_read += 1
        if report.lines_read > MAX_LISTING_LINES:
            raise ArchiveError(
                f"the listings hold more than {MAX_LISTING_LINES} lines (ABO has 147,702 listings), "
                f"the last at {source}: not ABO's listings"
            )
        if text.endswith("\r\n"):  # the digest is that of the lines as text, whatever the line ends
            text = text[:-2] + "\n"
        report.sha256.update(text.encode("utf-8"))
        record, reason = _parse_listing_line(text)
        if reason is not None:
            report.add_malformed(source, reason)
            continue
        _count_unknown_keys(record, report)
        yield record, source


def _parse_listing_line(text):
    """`(record, None)` for a usable listing, `(None, reason)` for a malformed line."""
    try:
        record = json.loads(text)
    except RecursionError:
        return None, "too_deeply_nested"
    except ValueError:  # not JSON, or an integer longer than sys.get_int_max_str_digits()
        return None, "invalid_json"
    if not isinstance(record, dict):
        return None, "not_an_object"
    for key, is_valid in _LISTING_FIELD_TYPES.items():
        value = record.get(key)
        if value is not None and not is_valid(value):
            return None, f"bad_{key}"
    return record, None


def _is_string_list(value):
    return isinstance(value, str) or isinstance(value, list) and all(isinstance(entry, str) for entry in value)


def _is_product_type(value):
    return (
        isinstance(value, str)
        or isinstance(value, list)
        and all(isinstance(entry, dict) and isinstance(entry.get("value", ""), str) for entry in value)
    )


def _is_localised(value):
    """A list of `{"language_tag": "en_US", "value": ...}` objects (the tag may be missing)."""
    # Checked by C loops (map), not a generator: 10-15% of reading the listings (every listing has several).
    return (
        isinstance(value, list)
        and all(map(isinstance, value, itertools.repeat(dict)))
        and all(map(isinstance, map(dict.get, value, _LANGUAGE_TAG, _NO_TAG), _OPTIONAL_STRING))
    )


# Endless repeats, shared by every call (each takes what it zips with, never exhausting them).
_LANGUAGE_TAG, _NO_TAG, _OPTIONAL_STRING = map(itertools.repeat, ("language_tag", "", (str, type(None))))


# The fields the pipeline (build and analyze) reads, with the shapes ABO gives them (None counts as absent).
_LISTING_FIELD_TYPES = {
    "item_id": lambda value: isinstance(value, str),
    "domain_name": lambda value: isinstance(value, str),
    "main_image_id": lambda value: isinstance(value, str),
    "other_image_id": _is_string_list,
    "product_type": _is_product_type,
    **{key: _is_localised for key in LOCALISED_LISTING_KEYS},
}


def _count_unknown_keys(record, report):
    for key in record:
        if key not in KNOWN_LISTING_KEYS:
            if key not in report.unknown_keys and len(report.unknown_keys) >= MAX_UNKNOWN_KEYS:
                key = UNKNOWN_KEYS_OVERFLOW
            report.unknown_keys[key] += 1


# --- images -----------------------------------------------------------------


def _plain_parts(relative_path):
    """The components of a plain relative path ("d9/d91ab9cf.jpg"); None for anything else.

    None for an absolute path, `..`, `.`, an empty component (`a//b`, a trailing
    `/`) or a NUL byte: none of those can name a file under images/<variant>/.
    """
    parts = relative_path.split("/")
    if any(part in ("", ".", "..") or "\0" in part for part in parts):
        return None
    return parts


class _Refused(Exception):
    """A path of images.csv.gz that does not lead to a regular file inside images/<variant>/."""


class _ImageFolder:
    """Finds and reads files below `images/<variant>/` by their images.csv.gz path, never leaving it.

    Each folder on the way is opened relative to its parent with O_NOFOLLOW
    and the file is opened the same way, so neither `..`, nor an absolute
    path, nor a symbolic link (to anywhere, even inside: `tar xf` of ABO makes
    none) can lead elsewhere, and only a regular file is read (a FIFO would
    block forever, /dev/zero would never end). Paths are best looked up in
    sorted order: the last folder opened is kept open.
    """

    def __init__(self, image_dir):
        self.image_dir = image_dir
        try:
            self._root = os.open(image_dir, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as error:
            raise ArchiveError(f"images folder {image_dir!r} cannot be opened ({error.strerror})") from error
        self._folder_parts, self._folder = (), self._root

    def close(self):
        if self._folder != self._root:
            os.close(self._folder)
        os.close(self._root)

    def __enter__(self):
        return self

    def __exit__(self, *exception):
        self.close()

    def _open_folder(self, parts):
        """The descriptor of the folder `parts` below the root, reached without following a link."""
        parts = tuple(parts)
        if parts == self._folder_parts:
            return self._folder
        if self._folder != self._root:
            os.close(self._folder)
        self._folder_parts, self._folder = (), self._root
        descriptor = self._root
        try:
            for part in parts:
                opened = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=descriptor)
                if descriptor != self._root:
                    os.close(descriptor)
                descriptor = opened
        except OSError:
            if descriptor != self._root:
                os.close(descriptor)
            raise
        self._folder_parts, self._folder = parts, descriptor
        return descriptor

    def size(self, relative_path):
        """The file's size; FileNotFoundError when it is missing, `_Refused` when it is not allowed."""
        parts = _plain_parts(relative_path)
        if parts is None:
            raise _Refused(relative_path)
        try:
            info = os.stat(parts[-1], dir_fd=self._open_folder(parts[:-1]), follow_symlinks=False)
        except FileNotFoundError:
            raise
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.ENOTDIR):  # a link, or a file where a folder should be
                raise _Refused(relative_path) from error
            where = os.path.join(self.image_dir, relative_path)
            raise ArchiveError(f"{where!r} cannot be read ({error.strerror}): check its permissions") from error
        if not stat.S_ISREG(info.st_mode):
            raise _Refused(relative_path)
        return info.st_size

    def read(self, relative_path):
        """The bytes of a file `size` accepted, at most MAX_IMAGE_FILE_BYTES."""
        where = os.path.join(self.image_dir, relative_path)
        parts = _plain_parts(relative_path)
        if parts is None:
            raise ArchiveError(f"{where!r} is not a path inside the images folder")
        try:
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
            descriptor = os.open(parts[-1], flags, dir_fd=self._open_folder(parts[:-1]))
            with os.fdopen(descriptor, "rb") as handle:
                info = os.fstat(descriptor)
                if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_IMAGE_FILE_BYTES:
                    raise ArchiveError(
                        f"{where!r} is no longer the regular file it was: the images folder changed "
                        "while the build was running; start again"
                    )
                return handle.read(info.st_size)
        except OSError as error:
            raise ArchiveError(
                f"{where!r} cannot be read ({error.strerror}): the images folder changed while the "
                "build was running; start again"
            ) from error


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
    refused: dict = dataclasses.field(default_factory=dict)  # relative path -> PATH_OUTSIDE_IMAGES or FILE_TOO_LARGE
    truncated: list = dataclasses.field(default_factory=list)  # one line per cut archive, when allowed

    def without_index(self):
        """A copy without `rows`/`locations`, cheap to send to worker processes."""
        return dataclasses.replace(self, rows={}, locations={}, refused={})

    def read_many(self, located_paths):
        """Yields the bytes of each `(relative path, location)`, opening the tar once."""
        if not self.is_tar:
            with _ImageFolder(os.path.join(self.root, "images", self.variant)) as folder:
                for relative_path, _ in located_paths:
                    yield folder.read(relative_path)
            return
        # One pread an image, unbuffered: a buffered seek and read copied each image twice (2.8 -> 2.2 us).
        with open(self.root, "rb", buffering=0) as handle:
            descriptor = handle.fileno()
            for relative_path, (offset, size) in located_paths:
                data = os.pread(descriptor, size, offset)
                if len(data) != size:  # the index holds no cut member: the tar was cut (re-downloaded?) since
                    raise ArchiveError(
                        f"{self.root!r} ends before {relative_path} (bytes {offset} to {offset + size}): the images "
                        "archive changed while the build was running; start again"
                    )
                yield data


def _parse_images_csv(handle, where):
    """Rows of images.csv.gz and the SHA-256 of its compressed bytes, streamed from a binary file object."""
    reader = _HashingReader(handle)
    try:
        with gzip.GzipFile(fileobj=reader, mode="rb") as stream:
            lines = _split_lines(_decompressed_chunks(stream, MAX_IMAGES_CSV_BYTES, where), MAX_IMAGES_CSV_LINE_BYTES)
            rows = _images_csv_rows(lines, where)
        reader.read_to_end()
    except EOFError:
        raise ArchiveError(
            f"{where} is truncated (its gzip stream ends early): download the images archive again"
        ) from None
    except _GZIP_ERRORS as error:
        raise ArchiveError(f"{where} is damaged or not gzip ({error}): download the images archive again") from error
    return rows, reader.sha256.hexdigest()


class _CsvLines:
    """The decoded lines `csv.reader` reads, remembering the number of the last one for messages."""

    def __init__(self, lines, where):
        self._lines, self.where, self.line_number = lines, where, 0

    def __iter__(self):
        return self

    def __next__(self):
        self.line_number, line = next(self._lines)
        if line is None:
            raise ArchiveError(
                f"{self.where} line {self.line_number} is longer than {MAX_IMAGES_CSV_LINE_BYTES} "
                "bytes: it is not ABO's images.csv.gz"
            )
        return line.decode("utf-8")


def _images_csv_rows(lines, where):
    lines = _CsvLines(lines, where)
    fields_of_lines = csv.reader(lines)
    try:
        header = next(fields_of_lines, None)
        if header != IMAGES_CSV_HEADER:
            raise ArchiveError(f"{where} has header {_shorten(header)}, expected {IMAGES_CSV_HEADER}")
        rows = {}
        for fields in fields_of_lines:
            try:
                image_id, height, width, relative = fields
                rows[image_id] = ImageRow(image_id, int(height), int(width), relative)
            except ValueError as error:
                raise ArchiveError(f"{where} line {lines.line_number} is malformed ({_shorten(fields)})") from error
            if lines.line_number > MAX_IMAGES_CSV_ROWS:
                raise ArchiveError(
                    f"{where} has more than {MAX_IMAGES_CSV_ROWS} rows (ABO has 398,212): it is not ABO's images.csv.gz"
                )
    except (UnicodeDecodeError, csv.Error) as error:
        raise ArchiveError(f"{where} line {lines.line_number} is malformed ({error})") from error
    return rows


def _shorten(value, limit=120):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _images_root(path):
    for root in (path, os.path.dirname(os.path.normpath(path))):
        if os.path.lexists(os.path.join(root, IMAGES_CSV)):  # a FIFO or a link is refused when opened
            return root
    raise ArchiveError(f"no {IMAGES_CSV} under {path!r}: give the folder abo-images-small.tar was extracted into")


def _open_folder_store(path, variant):
    root = _images_root(path)
    with _open_regular_file(os.path.join(root, IMAGES_CSV), "images list", inside_dataset=True) as handle:
        rows, csv_sha256 = _parse_images_csv(handle, IMAGES_CSV)
    image_dir = os.path.join(root, "images", variant)
    if not os.path.isdir(image_dir):
        raise ArchiveError(f"{image_dir!r} does not exist: is {path!r} the extracted abo-images-{variant}.tar?")
    locations, refused = {}, {}
    with _ImageFolder(image_dir) as folder:
        for relative_path in sorted({row.path for row in rows.values()}):
            try:
                size = folder.size(relative_path)
            except FileNotFoundError:
                continue  # reported per image as "missing_from_archive" by the build
            except _Refused:
                refused[relative_path] = PATH_OUTSIDE_IMAGES
                continue
            if size > MAX_IMAGE_FILE_BYTES:
                refused[relative_path] = FILE_TOO_LARGE
            else:
                locations[relative_path] = (None, size)
    store = ImageStore(root, False, variant, rows, {}, csv_sha256, refused)
    store.locations = {row.path: locations[row.path] for row in rows.values() if row.path in locations}  # CSV order
    return store


def _open_tar_store(path, variant, allow_truncated):
    prefix = f"images/{variant}/"
    locations, refused, csv_location = {}, {}, None
    files, cut = _tar_files(path, allow_truncated)
    for name, offset, size in files:
        name = name.removeprefix("./")
        if name.startswith(prefix):
            relative_path = name[len(prefix) :]
            locations.pop(relative_path, None), refused.pop(relative_path, None)  # the last copy counts, as in tar
            if offset is None:  # a link or a device: never followed, as in an extracted folder
                refused[relative_path] = PATH_OUTSIDE_IMAGES
            elif size > MAX_IMAGE_FILE_BYTES:
                refused[relative_path] = FILE_TOO_LARGE
            else:
                locations[relative_path] = (offset, size)
        elif name == IMAGES_CSV:
            if offset is None:
                raise ArchiveError(
                    f"images list {IMAGES_CSV!r} in {path!r} is a link or a device, not a file: "
                    f"give abo-images-{variant}.tar as downloaded"
                )
            csv_location = (offset, size)
    if csv_location is None:
        cut_note = f" ({cut.describe(path)})" if cut else ""
        raise ArchiveError(f"{path!r} has no {IMAGES_CSV} member{cut_note}: is it abo-images-{variant}.tar?")
    with open(path, "rb") as handle:
        rows, csv_sha256 = _parse_images_csv(_Section(handle, *csv_location), f"{IMAGES_CSV} in {path!r}")
    truncated = [f"{cut.describe(path)}: indexed the images before it"] if cut else []
    return ImageStore(path, True, variant, rows, locations, csv_sha256, refused, truncated)


def open_images(path, variant="small", allow_truncated=False):
    """Indexes the images of an extracted folder or of `abo-images-<variant>.tar`.

    Args:
      path: the extraction root (holding `images/`), or the `.tar` as downloaded.
      variant: "small" (256 px) or "original".
      allow_truncated: index a truncated tar up to where it stops (recorded in
        `store.truncated`) instead of raising; images.csv.gz must be whole.

    Returns:
      An `ImageStore`; paths of images.csv.gz that may not be read are in
      `store.refused` with the reason, not in `store.locations`.

    Raises:
      ArchiveError: missing, damaged or truncated inputs, more than the MAX_* limits.
    """
    if variant not in IMAGE_VARIANTS:
        raise UserInputError(f"image variant {variant!r} is not one of {IMAGE_VARIANTS}")
    _check_exists(path, "images")
    if os.path.isdir(path):
        return _open_folder_store(path, variant)
    return _open_tar_store(path, variant, allow_truncated)
