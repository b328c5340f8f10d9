"""
The GPU check's wheelhouse file (scripts/gpu_check.py ``pack`` / ``install``): the same bytes
for the same wheels whatever their timestamps and member order, and unpacked with tarfile and
zipfile alone into a site-packages layout.
"""
import tarfile
import zipfile

from helpers import load_script

gpu_check = load_script("gpu_check")

FILES = {
    "tiny/__init__.py": b"VALUE = 1\n",
    "tiny/tool.sh": b"#!/bin/sh\necho tiny\n",
    "tiny-1.0.data/purelib/tiny_extra.py": b"EXTRA = 2\n",
    "tiny-1.0.data/scripts/tiny-cli": b"#!/bin/sh\n",
    "tiny-1.0.dist-info/METADATA": b"Name: tiny\nVersion: 1.0\n",
}


def write_wheel(path, order, date_time):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        wheel.writestr(zipfile.ZipInfo("tiny/", date_time), b"")  # a directory entry
        for name in order:
            info = zipfile.ZipInfo(name, date_time)
            info.external_attr = (0o775 if name.endswith(".sh") else 0o664) << 16
            wheel.writestr(info, FILES[name], zipfile.ZIP_DEFLATED)


def packed(tmp_path, tag, order, date_time):
    wheels = tmp_path / f"wheels_{tag}"
    wheels.mkdir()
    write_wheel(wheels / "tiny-1.0-py3-none-any.whl", order, date_time)
    write_wheel(wheels / "other-2.0-py3-none-any.whl", sorted(order), date_time)
    archive = tmp_path / f"{tag}.tar.xz"
    assert gpu_check.pack(str(wheels), str(archive)) == 0
    return archive


def test_packing_the_same_wheels_again_gives_the_same_bytes(tmp_path):
    first = packed(tmp_path, "a", list(FILES), (2024, 5, 6, 7, 8, 10))
    second = packed(tmp_path, "b", list(reversed(FILES)), (2025, 1, 2, 3, 4, 6))
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["other-2.0-py3-none-any.whl",
                                             "tiny-1.0-py3-none-any.whl"]
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {
            (0, 0, 0, "", "", 0o644)}
        with zipfile.ZipFile(tar.extractfile(members[1])) as wheel:
            infos = wheel.infolist()
    assert [i.filename for i in infos] == sorted(FILES)  # no directory entries
    assert {i.compress_type for i in infos} == {zipfile.ZIP_STORED}
    assert {i.date_time for i in infos} == {gpu_check.ZIP_EPOCH}
    modes = {i.filename: i.external_attr >> 16 for i in infos}
    assert modes["tiny/tool.sh"] == 0o755 and modes["tiny/__init__.py"] == 0o644


def test_install_unpacks_the_archive_into_a_site_packages_layout(tmp_path, capsys):
    archive = packed(tmp_path, "a", list(FILES), (2024, 5, 6, 7, 8, 10))
    site = tmp_path / "site"
    assert gpu_check.install(str(archive), str(site)) == 0
    assert "unpacked 2 wheels" in capsys.readouterr().out
    assert (site / "tiny" / "__init__.py").read_bytes() == FILES["tiny/__init__.py"]
    assert (site / "tiny_extra.py").read_bytes() == FILES["tiny-1.0.data/purelib/tiny_extra.py"]
    assert not (site / "tiny-cli").exists() and not (site / "tiny-1.0.data").exists()
    assert (site / "tiny" / "tool.sh").stat().st_mode & 0o777 == 0o755
    assert (site / "tiny-1.0.dist-info" / "METADATA").exists()


def test_install_refuses_what_is_not_a_wheelhouse_archive(tmp_path, capsys):
    (tmp_path / "wheels").mkdir()
    assert gpu_check.install(str(tmp_path / "wheels"), str(tmp_path / "site")) == 1
    assert "is not a wheelhouse archive" in capsys.readouterr().out
    assert not (tmp_path / "site").exists()
