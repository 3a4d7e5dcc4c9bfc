from pathlib import Path

from train.checkpoint.manifest import MANIFEST, build_manifest, verify_manifest, write_manifest


def _folder(tmp_path: Path) -> Path:
    (tmp_path / "a.pt").write_bytes(b"x" * 1000)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.pt").write_bytes(b"y" * 10)
    write_manifest(tmp_path, build_manifest(tmp_path, exclude={MANIFEST}))
    return tmp_path


def test_intact_folder_verifies(tmp_path):
    assert verify_manifest(_folder(tmp_path)) == []


def test_truncated_flipped_and_missing_files_are_named(tmp_path):
    folder = _folder(tmp_path)
    (folder / "a.pt").write_bytes(b"x" * 999)
    assert verify_manifest(folder) == [f"{folder / 'a.pt'}: 999 bytes, manifest says 1000 (truncated?)"]
    (folder / "a.pt").write_bytes(b"x" * 998 + b"zx")
    assert verify_manifest(folder) == [f"{folder / 'a.pt'}: sha256 differs from the manifest (corrupted)"]
    (folder / "sub" / "b.pt").unlink()
    assert f"{folder / 'sub' / 'b.pt'}: missing" in verify_manifest(folder)


def test_missing_manifest_is_a_problem(tmp_path):
    assert verify_manifest(tmp_path) == [f"{tmp_path / MANIFEST}: missing"]
