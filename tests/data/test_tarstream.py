"""The sequential tar reader against archives written by tarfile and by webdataset."""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest

from ft_dist.data.tarstream import iter_members


def make_tar(members: dict[str, bytes], fmt: int = tarfile.USTAR_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        folder = tarfile.TarInfo("a_dir")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)  # not a regular file: skipped
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


LONG = "deep/" * 30 + "000000001.jpg"  # > 100 characters: needs an extension header


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_reads_every_format_like_tarfile(fmt: int) -> None:
    members = {"000000000.jpg": b"x" * 1000, "000000000.cls": b"3", "e.txt": b""}
    if fmt != tarfile.USTAR_FORMAT:
        members[LONG] = b"y" * 513
    data = make_tar(members, fmt)
    assert list(iter_members(io.BytesIO(data))) == list(members.items())


def test_webdataset_writer_output() -> None:
    import webdataset as wds

    buffer = io.BytesIO()
    with wds.TarWriter(buffer, encoder=False) as writer:
        writer.write({"__key__": "k1", "png": b"abc", "cls": b"1"})
    names = [name for name, _ in iter_members(io.BytesIO(buffer.getvalue()))]
    assert names == ["k1.cls", "k1.png"]


def test_truncation_checksum_and_compression_errors() -> None:
    data = make_tar({"a.jpg": b"z" * 2000})
    with pytest.raises(tarfile.ReadError, match="unexpected end of data"):
        list(iter_members(io.BytesIO(data[:1500])))
    corrupted = bytearray(data)
    corrupted[512 + 3] ^= 0x20  # inside the "a.jpg" header's name
    with pytest.raises(tarfile.ReadError, match="checksum"):
        list(iter_members(io.BytesIO(bytes(corrupted))))
    with pytest.raises(tarfile.ReadError, match="compressed tar"):
        list(iter_members(io.BytesIO(gzip.compress(data))))
