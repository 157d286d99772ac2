"""The ABO reader on hostile and broken downloads: each class is refused in one line, counted, or bounded.

The inputs are crafted by tests/hostile.py on top of the generated sample.
Bombs run the real command in a fresh process, its peak memory sampled by tests/measure.py.
"""

import collections
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import time

import pytest

from abo_tf import build_records
from abo_tf.records import archive
from abo_tf.records import build as records_build
from abo_tf.reports import data_report
from abo_tf.testing import measure
from tests import hostile
from tests.conftest import build_options

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RSS_BUDGET_BYTES = 1.5 * 2**30  # no input under 10 MB may take a command past this
BUILD_ARGS = ["--image-selection", "all", "--min-examples-per-class", "3", "--workers", "1", "--no-progress"]


@contextlib.contextmanager
def _deadline(seconds):
    """Fails instead of hanging: a FIFO opened without care blocks forever."""

    def expire(signal_number, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _snapshot(folder, leave_out=()):
    """(path, kind, size, mtime) of everything under `folder`, links not followed."""
    entries = set()
    for parent, folders, files in os.walk(folder):
        folders[:] = [name for name in folders if os.path.join(parent, name) not in leave_out]
        for name in folders + files:
            info = os.lstat(os.path.join(parent, name))
            entries.add((os.path.join(parent, name), info.st_mode, info.st_size, info.st_mtime_ns))
    return entries


def _cli(capsys, listings, images, output, *extra):
    code = build_records.main(
        ["--listings", listings, "--images", images, "--output", str(output), *BUILD_ARGS, *extra]
    )
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


@pytest.fixture
def folder_copy(abo_folder_sample, tmp_path):
    """A copy of the extracted sample (hard links) that a test may craft."""
    return hostile.copy_folder_sample(abo_folder_sample["root"], tmp_path / "abo")


# --- line splitting -------------------------------------------------------------


def _naive_lines(data, max_line_bytes):
    """What `_split_lines` must yield, computed the obvious way on the whole input."""
    lines = data.split(b"\n")
    return [
        (number, None if len(line) > max_line_bytes else line + b"\n" * (number < len(lines)))
        for number, line in enumerate(lines, start=1)
        if line.strip(b" \t\r\x0b\x0c")
    ]


@pytest.mark.parametrize("seed", range(3))
def test_line_splitter_agrees_with_a_naive_one_whatever_the_chunks(seed):
    rng = random.Random(seed)
    for _ in range(3000):
        data = bytes(rng.choice(b"ab{} \t\r\n\n") for _ in range(rng.randint(0, 80)))
        cuts = sorted(rng.sample(range(len(data) + 1), min(len(data) + 1, rng.randint(0, 8))))
        chunks = [data[start:end] for start, end in zip([0, *cuts], [*cuts, len(data)]) if end > start]
        limit = rng.randint(1, 16)
        assert list(archive._split_lines(iter(chunks), limit)) == _naive_lines(data, limit), (data, chunks, limit)


# --- folder mode: paths of images.csv.gz ------------------------------------------


@pytest.mark.parametrize("kind", hostile.ESCAPE_KINDS)
def test_images_csv_path_leaving_the_images_folder_is_refused(folder_copy, abo_folder_sample, tmp_path, kind):
    _, planted = hostile.plant_escaping_paths(folder_copy, str(tmp_path / "outside"), [kind])
    (image_id,) = planted
    with _deadline(30):
        store = archive.open_images(folder_copy)
    clean = archive.open_images(abo_folder_sample["root"])
    crafted_path = store.rows[image_id].path
    assert store.refused == {crafted_path: archive.PATH_OUTSIDE_IMAGES}
    assert set(clean.locations) - set(store.locations) == {clean.rows[image_id].path}
    assert {path: clean.locations[path] for path in store.locations} == store.locations


def test_file_swapped_for_a_link_after_indexing_is_not_followed(folder_copy, tmp_path):
    store = archive.open_images(folder_copy)
    path = min(store.locations)
    secret = hostile.write_secret(str(tmp_path / "outside"), b"\xff\xd8\xff")
    victim = os.path.join(folder_copy, "images", "small", path)
    os.remove(victim)
    os.symlink(secret, victim)
    reader = store.without_index()
    with pytest.raises(archive.ArchiveError, match="changed while the build was running"):
        list(reader.read_many([(path, store.locations[path])]))


def test_build_counts_refused_paths_and_malformed_lines_and_reads_nothing_outside(
    folder_copy, abo_folder_sample, tmp_path, capsys
):
    secret, planted = hostile.plant_escaping_paths(folder_copy, str(tmp_path / "outside"))
    lines, reasons = zip(*hostile.MALFORMED_LISTINGS.values())
    sources = hostile.append_listing_lines(folder_copy, lines)
    output = tmp_path / "records"
    before = _snapshot(tmp_path, leave_out={str(output)})
    with _deadline(300):
        code, out, error = _cli(capsys, folder_copy, folder_copy, output)
    assert code == 0, error
    assert _snapshot(tmp_path, leave_out={str(output)}) == before
    manifest = json.loads((output / "manifest.json").read_text())
    truth, images, listings = abo_folder_sample["truth"], manifest["images"], manifest["listings"]
    assert images["dropped"][archive.PATH_OUTSIDE_IMAGES] == len(planted) == len(hostile.ESCAPE_KINDS)
    assert images["kept"] + sum(images["dropped"].values()) == images["referenced"]
    assert listings["kept"] + sum(listings["dropped"].values()) == listings["read"] == truth["num_lines"] + len(lines)
    assert listings["dropped"]["malformed_json"] == len(truth["malformed_lines"]) + len(lines)
    assert set(sources) <= set(listings["malformed_lines"])
    expected_reasons = collections.Counter(reasons)
    expected_reasons["invalid_json"] += len(truth["malformed_lines"])
    assert listings["malformed_reasons"] == dict(expected_reasons)
    assert f"{archive.PATH_OUTSIDE_IMAGES} {len(planted)}" in out and "by reason: bad_domain_name 1" in out
    shard_bytes = b"".join(path.read_bytes() for path in output.glob("*.tfrecord-*"))
    assert shard_bytes and hostile.SECRET_MARKER not in shard_bytes
    with open(secret, "rb") as handle:
        assert hostile.SECRET_MARKER in handle.read()


@pytest.mark.parametrize(
    "kind, expected",
    [("fifo", "is not a regular file"), ("link_to_dev_zero", "is a link"), ("link_to_a_copy_outside", "is a link")],
)
@pytest.mark.parametrize("which", ["listings file", "images list"])
def test_listings_or_images_csv_that_is_no_regular_file_is_refused(
    folder_copy, tmp_path, capsys, kind, expected, which
):
    path = hostile.listings_file(folder_copy)
    if which == "images list":
        path = os.path.join(folder_copy, archive.IMAGES_CSV)
    outside = tmp_path / "outside"
    shutil.copy(path, outside)
    os.remove(path)
    if kind == "fifo":
        os.mkfifo(path)
    else:
        os.symlink("/dev/zero" if kind == "link_to_dev_zero" else outside, path)
    with _deadline(30):
        code, _, error = _cli(capsys, folder_copy, folder_copy, tmp_path / "records")
    assert code == 2 and len(error.splitlines()) == 1
    assert f"{which} {path!r} {expected}" in error


# --- listings: malformed lines ----------------------------------------------------


@pytest.mark.parametrize("kind", sorted(hostile.MALFORMED_LISTINGS))
def test_malformed_listing_line_is_counted_by_build_and_analyze_readers(folder_copy, abo_folder_sample, kind):
    line, reason = hostile.MALFORMED_LISTINGS[kind]
    (source,) = hostile.append_listing_lines(folder_copy, [line])
    truth = abo_folder_sample["truth"]
    report = archive.ListingsReport()
    listings = list(archive.read_listings(folder_copy, report))
    assert len(listings) == truth["num_listings"] and report.lines_read == truth["num_lines"] + 1
    assert source in report.malformed_lines and len(report.malformed_lines) == len(truth["malformed_lines"]) + 1
    assert report.malformed_reasons[reason] == 1 + (reason == "invalid_json") * len(truth["malformed_lines"])
    tally = data_report.read_tally(folder_copy, progress=False)
    assert tally.report.malformed_lines == report.malformed_lines and len(tally.listings) == truth["num_listings"]


# --- truncated and oversized tars -------------------------------------------------


def _cut_listings(at):
    def craft(abo, folder):
        listings = abo["listings"]
        _, header_offset, data_offset, size = hostile.tar_members(listings)[8]
        cut = {
            "inside a header": header_offset + 100,
            "at a member boundary": header_offset,
            "mid-member": data_offset + size // 2,
        }[at]
        return hostile.cut_file(listings, os.path.join(folder, "listings.tar"), cut), abo["images"]

    return craft


def _cut_images(csv_first):
    def craft(abo, folder):
        images = abo["images"]
        if csv_first:
            images = hostile.with_csv_first(images, os.path.join(folder, "csv_first.tar"))
        members = hostile.tar_members(images)
        _, _, data_offset, size = members[len(members) // 2]
        return abo["listings"], hostile.cut_file(images, os.path.join(folder, "images.tar"), data_offset + size // 2)

    return craft


def _declared_size(which, size):
    def craft(abo, folder):
        source = abo[which]
        members = hostile.tar_members(source)
        name = members[len(members) // 2][0]
        crafted = hostile.with_declared_size(source, os.path.join(folder, f"{which}.tar"), name, size)
        return (crafted, abo["images"]) if which == "listings" else (abo["listings"], crafted)

    return craft


def _garbage_header(abo, folder):
    images = abo["images"]
    _, header_offset, _, _ = hostile.tar_members(images)[10]
    with open(images, "rb") as handle:
        data = bytearray(handle.read())
    data[header_offset : header_offset + 512] = random.Random(0).randbytes(512)
    crafted = os.path.join(folder, "garbage.tar")
    with open(crafted, "wb") as handle:
        handle.write(data)
    return abo["listings"], crafted


def _short_file(content):
    """A file shorter than one tar header given as the images tar: a text file, or an empty one."""

    def craft(abo, folder):
        crafted = os.path.join(folder, "short.tar")
        with open(crafted, "wb") as handle:
            handle.write(content)
        return abo["listings"], crafted

    return craft


TRUNCATED = "is truncated at byte {size}"
NOT_A_TAR = "is {size} bytes, shorter than one tar header: not a tar archive"
TAR_CASES = {
    "listings cut inside a header": (_cut_listings("inside a header"), TRUNCATED),
    "listings cut at a member boundary": (_cut_listings("at a member boundary"), TRUNCATED),
    "listings cut mid-member": (_cut_listings("mid-member"), TRUNCATED),
    "images cut mid-member": (_cut_images(csv_first=False), TRUNCATED),
    "images with images.csv.gz first, then cut": (_cut_images(csv_first=True), TRUNCATED),
    "listings member declaring 8 GB": (_declared_size("listings", 8 * 2**30 - 1), TRUNCATED),
    "images member declaring 8 GB": (_declared_size("images", 8 * 2**30 - 1), TRUNCATED),
    "images member declaring 2**62 (base-256)": (_declared_size("images", 2**62), TRUNCATED),
    "images member declaring a negative size": (_declared_size("images", -4096), "is damaged"),
    "images with a garbage header": (_garbage_header, "is damaged at byte"),
    # Both once read "truncated at byte 6 / 0": a cut download, when most likely no tar was given at all.
    "a text file as the images tar": (_short_file(b"hello\n"), NOT_A_TAR),
    "an empty file as the images tar": (_short_file(b""), NOT_A_TAR),
}


@pytest.mark.parametrize("case", sorted(TAR_CASES))
def test_truncated_or_damaged_tar_is_a_one_line_error(abo_sample, tmp_path, capsys, case):
    craft, expected = TAR_CASES[case]
    listings, images = craft(abo_sample, str(tmp_path))
    crafted = listings if listings != abo_sample["listings"] else images
    code, _, error = _cli(capsys, listings, images, tmp_path / "records")
    assert code == 2 and len(error.splitlines()) == 1, error
    assert expected.format(size=os.path.getsize(crafted)) in error, error
    assert not (tmp_path / "records").exists()


def test_allow_truncated_reads_up_to_the_cut_and_says_so(abo_sample, tmp_path):
    listings, _ = _cut_listings("mid-member")(abo_sample, str(tmp_path))
    _, images = _cut_images(csv_first=True)(abo_sample, str(tmp_path))
    options = build_options({"listings": listings, "images": images}, tmp_path / "records", allow_truncated=True)
    manifest = records_build.build(options)
    for kind, path in (("listings", listings), ("images", images)):
        (cut,) = manifest["inputs"][kind]["truncated"]
        assert f"is truncated at byte {os.path.getsize(path)}" in cut
    truth, read = abo_sample["truth"], manifest["listings"]
    assert 0 < read["read"] < truth["num_lines"]
    assert read["kept"] + sum(read["dropped"].values()) == read["read"]
    images_ = manifest["images"]
    assert images_["kept"] + sum(images_["dropped"].values()) == images_["referenced"]
    assert images_["dropped"]["missing_from_archive"] > len(truth["missing_from_archive"])
    assert records_build.format_summary(manifest).count("WARNING: partial read") == 2


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo"])
@pytest.mark.parametrize("which", ["listings file", "images list"])
def test_tar_member_that_is_no_regular_file_is_refused_by_name(abo_sample, tmp_path, capsys, kind, which):
    listings, images = abo_sample["listings"], abo_sample["images"]
    if which == "listings file":
        name = next(member for member, *_ in hostile.tar_members(listings) if member.endswith(".json.gz"))
        listings = crafted = hostile.with_link(listings, tmp_path / "crafted.tar", name, kind)
    else:
        name = archive.IMAGES_CSV
        images = crafted = hostile.with_link(images, tmp_path / "crafted.tar", name, kind)
    with _deadline(60):
        code, _, error = _cli(capsys, listings, images, tmp_path / "records")
    assert code == 2 and len(error.splitlines()) == 1, error
    assert f"{which} {name!r} in {crafted!r} is a link or a device" in error
    assert not (tmp_path / "records").exists()


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo"])
def test_image_member_that_is_no_regular_file_is_refused_and_counted(abo_sample, tmp_path, kind):
    clean = archive.open_images(abo_sample["images"])
    path = min(clean.locations)
    crafted = hostile.with_link(abo_sample["images"], tmp_path / "crafted.tar", f"images/small/{path}", kind)
    store = archive.open_images(crafted)
    assert store.refused == {path: archive.PATH_OUTSIDE_IMAGES}
    assert set(store.locations) == set(clean.locations) - {path}


# --- limits -----------------------------------------------------------------------


@pytest.mark.parametrize("source", ["tar", "folder"])
def test_image_file_over_the_size_limit_is_refused_unread(abo_sample, abo_folder_sample, monkeypatch, source):
    path = abo_sample["images"] if source == "tar" else abo_folder_sample["root"]
    sizes = {relative: size for relative, (_, size) in archive.open_images(path).locations.items()}
    limit = sorted(sizes.values())[len(sizes) // 2]
    monkeypatch.setattr(archive, "MAX_IMAGE_FILE_BYTES", limit)
    store = archive.open_images(path)
    assert store.refused == {relative: archive.FILE_TOO_LARGE for relative, size in sizes.items() if size > limit}
    assert set(store.locations) == {relative for relative, size in sizes.items() if size <= limit}


LIMITS = {
    "images.csv.gz rows": ("MAX_IMAGES_CSV_ROWS", 10, "images", "has more than 10 rows"),
    "images.csv.gz line": ("MAX_IMAGES_CSV_LINE_BYTES", 30, "images", "line 2 is longer than 30 bytes"),
    "images.csv.gz bytes": ("MAX_IMAGES_CSV_BYTES", 1000, "images", "decompresses to more than 1000 bytes"),
    "listing lines": ("MAX_LISTING_LINES", 50, "listings", "the listings hold more than 50 lines"),
    "listings file bytes": ("MAX_LISTINGS_FILE_BYTES", 1000, "listings", "decompresses to more than 1000 bytes"),
}


@pytest.mark.parametrize("limit", sorted(LIMITS))
def test_reader_limits_are_one_line_errors(abo_sample, monkeypatch, limit):
    constant, value, reader, expected = LIMITS[limit]
    monkeypatch.setattr(archive, constant, value)
    with pytest.raises(archive.ArchiveError, match=expected) as caught:
        if reader == "images":
            archive.open_images(abo_sample["images"])
        else:
            list(archive.read_listings(abo_sample["listings"]))
    assert len(str(caught.value).splitlines()) == 1


def test_unknown_keys_are_counted_by_name_up_to_a_limit(abo_sample, monkeypatch):
    monkeypatch.setattr(archive, "MAX_UNKNOWN_KEYS", 0)
    report = archive.ListingsReport()
    list(archive.read_listings(abo_sample["listings"], report))
    assert list(report.unknown_keys) == [archive.UNKNOWN_KEYS_OVERFLOW]


# --- bombs: a fresh process, its peak memory measured -----------------------------


def _run_build_measured(tmp_path, listings, images, timeout=600):
    """Runs the build command in a fresh process: (exit code, stderr, peak RSS in bytes, output folder)."""
    output = tmp_path / "records"
    command = [
        sys.executable,
        "-m",
        "abo_tf.build_records",
        "--listings",
        listings,
        "--images",
        images,
        "--output",
        str(output),
        *BUILD_ARGS,
    ]
    environment = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    code, _, stderr, peak = measure.run_measured(command, timeout=timeout, env=environment, cwd=REPO)
    return code, stderr, peak, output


@pytest.mark.slow
def test_images_csv_gzip_bomb_is_refused_within_the_memory_budget(folder_copy, tmp_path):
    bomb = hostile.images_csv_bomb(folder_copy, 600 * hostile.MiB)
    assert os.path.getsize(bomb) < 2**20
    code, stderr, peak, _ = _run_build_measured(tmp_path, folder_copy, folder_copy)
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and "Traceback" not in stderr
    assert len(errors) == 1 and f"decompresses to more than {archive.MAX_IMAGES_CSV_BYTES} bytes" in errors[0]
    assert peak < RSS_BUDGET_BYTES, peak


@pytest.mark.slow
def test_over_long_listing_line_is_counted_within_the_memory_budget(folder_copy, tmp_path):
    source = hostile.append_long_listing_line(folder_copy, 800 * hostile.MiB)
    assert os.path.getsize(hostile.listings_file(folder_copy)) < 2**20
    code, stderr, peak, output = _run_build_measured(tmp_path, folder_copy, folder_copy)
    assert code == 0, stderr
    listings = json.loads((output / "manifest.json").read_text())["listings"]
    assert source in listings["malformed_lines"] and listings["malformed_reasons"]["line_too_long"] == 1
    assert peak < RSS_BUDGET_BYTES, peak


@pytest.mark.slow
def test_blank_line_bomb_is_skipped_cheaply_and_keeps_line_numbers(folder_copy, abo_folder_sample):
    source = hostile.append_blank_lines(folder_copy, 300 * hostile.MiB)
    assert os.path.getsize(hostile.listings_file(folder_copy)) < 2**20
    report = archive.ListingsReport()
    start = time.process_time()
    sources = [source for _, source in archive.read_listing_records(folder_copy, report)]
    cpu_seconds = time.process_time() - start
    assert source in sources
    assert report.lines_read == abo_folder_sample["truth"]["num_lines"] + 1
    assert cpu_seconds < 15, cpu_seconds  # line by line, 300 MB of newlines took 44 s
