from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime.preprocessing import ImageLimits, ImageTooLarge
from runtime.sources import SourceForbidden, folder_source, read_item


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Two class folders of one 64×48 PNG each."""
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (tmp_path / "pics" / name).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "pics" / name / "a.png")
    return tmp_path / "pics"


def test_an_item_reads_again_from_its_record_or_the_index_s_source(folder: Path):
    source = folder_source(folder)
    record = source.metadata(1)
    assert record == {"source": str(folder.resolve()), "path": "dog/a.png", "class": "dog"}
    again = read_item(record)
    assert again.size == (64, 48) and np.array_equal(np.asarray(again), np.asarray(source.read(1)))
    without = {k: v for k, v in record.items() if k != "source"}  # an index built before items recorded theirs
    assert np.array_equal(np.asarray(read_item(without, default_source=str(folder))), np.asarray(again))


def test_a_file_over_the_byte_limit_is_refused_naming_it(folder: Path):
    record = folder_source(folder).metadata(0)
    size = (folder / "cat" / "a.png").stat().st_size
    with pytest.raises(ImageTooLarge, match=rf"cat/a\.png: image is {size:,} bytes; the limit is 100 bytes"):
        read_item(record, ImageLimits(max_bytes=100))


def test_resize_decodes_a_large_file_small(tmp_path: Path):
    Image.new("RGB", (2000, 1000), "white").save(tmp_path / "big.png")
    record = {"source": str(tmp_path), "path": "big.png"}
    assert read_item(record).size == (2000, 1000)
    assert max(read_item(record, resize=64).size) < 1000  # about 2 × 64 on the shorter side, not the file's


def test_a_path_outside_the_roots_is_forbidden(folder: Path, tmp_path: Path):
    record = folder_source(folder).metadata(0)
    with pytest.raises(SourceForbidden):
        read_item(record, roots=[tmp_path / "elsewhere"])


def test_a_link_is_followed_within_the_roots_and_refused_out_of_them_with_where_it_points(folder: Path, tmp_path: Path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "b.png").write_bytes((folder / "cat" / "a.png").read_bytes())
    (folder / "cat" / "twin.png").symlink_to(folder / "dog" / "a.png")  # a duplicate inside the root: followed
    (folder / "cat" / "out.png").symlink_to(outside / "b.png")
    (folder / "more").symlink_to(outside, target_is_directory=True)
    roots = [folder]
    assert read_item({"source": str(folder), "path": "cat/twin.png"}, roots=roots).size == (64, 48)
    with pytest.raises(SourceForbidden) as raised:
        read_item({"source": str(folder), "path": "cat/out.png"}, roots=roots)
    assert (f"{folder}/cat/out.png is a symbolic link to {outside}/b.png (really {outside.resolve()}/b.png), outside "
            "the folders this server may read") in str(raised.value)
    assert "EMBEDSERVE_DATA_ROOTS" in str(raised.value)
    with pytest.raises(SourceForbidden, match=rf"more/b\.png lies in {folder}/more, a symbolic link to {outside}"):
        read_item({"source": str(folder), "path": "more/b.png"}, roots=roots)
    with pytest.raises(SourceForbidden, match="add its folder to EMBEDSERVE_DATA_ROOTS"):  # no link: just elsewhere
        read_item({"source": str(outside), "path": "b.png"}, roots=roots)


def test_a_folder_of_links_out_of_the_roots_is_refused_before_a_job_is_queued(folder: Path, tmp_path: Path):
    from runtime.sources import check_source

    links = tmp_path / "links"
    links.mkdir()
    for name in ("cat", "dog"):
        (links / f"{name}.png").symlink_to(folder / name / "a.png")  # every file points out of the root below
    with pytest.raises(SourceForbidden, match=r"links/(cat|dog)\.png is a symbolic link to .*pics/(cat|dog)/a\.png"):
        check_source(links, roots=[links])
    (links / "own.png").write_bytes((folder / "cat" / "a.png").read_bytes())  # one file of its own: the job may go on
    assert check_source(links, roots=[links]) == links.resolve()
    assert check_source(links) == links.resolve()  # no roots (the command line's user): links are followed


def test_a_folder_under_the_roots_does_not_list_files_reached_through_symlinks_out_of_them(folder: Path, tmp_path: Path):
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("L", (4, 4)).save(outside / "secret-payroll.png")
    (folder / "cat" / "linked.png").symlink_to(outside / "secret-payroll.png")
    (folder / "linked-folder").symlink_to(outside, target_is_directory=True)
    confined = folder_source(folder, roots=[folder])
    paths = [confined.metadata(i)["path"] for i in range(confined.count)]
    assert paths and not any("linked" in p or "secret" in p for p in paths)
    anywhere = folder_source(folder)  # the CLI's user, without roots, follows them
    assert anywhere.count == confined.count + 2


def test_a_source_path_with_a_nul_is_a_source_error(tmp_path: Path):
    from runtime.sources import SourceError, check_source

    with pytest.raises(SourceError, match="not a path"):
        check_source(f"{tmp_path}/a\x00b", [tmp_path])


def test_a_record_s_position_must_be_in_the_data_set(tmp_path: Path, write_idx):
    from runtime.sources import read_item

    (tmp_path / "fm").mkdir()
    write_idx(tmp_path / "fm" / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8))
    write_idx(tmp_path / "fm" / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8))
    record = {"source": "fashion-mnist:test", "position": 2}
    assert read_item(record, fashion_mnist_root=tmp_path / "fm").size == (28, 28)
    for position in (-1, 3):  # a record is an item's metadata, which a client may write
        with pytest.raises(IndexError):
            read_item({**record, "position": position}, fashion_mnist_root=tmp_path / "fm")
