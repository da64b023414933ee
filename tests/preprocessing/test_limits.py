"""Archive and download limits of the Beam job: zip bombs, lying headers, huge or slow downloads, checksums.

Every refusal must be exit 2 with one ``error:`` line, and leave nothing
behind: no partial download or extraction in the scratch folder, no
``--output-dir``.
"""

import hashlib
import http.server
import io
import os
import struct
import threading
import time
import zipfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from preprocessing import archive, fetch, task

ROOT = "tiny-imagenet-200"


def _zip_with(path, entries, compression=zipfile.ZIP_DEFLATED):
    """Writes ``{name: bytes or (size of zeros)}`` into a zip; big zero entries are streamed."""
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, content in entries.items():
            if isinstance(content, int):
                with zf.open(f"{ROOT}/{name}", "w", force_zip64=True) as f:
                    for _ in range(content >> 20):
                        f.write(bytes(1 << 20))
            else:
                zf.writestr(f"{ROOT}/{name}", content)
    return path


def _lie_about_size(path, name, declared):
    """Rewrites the uncompressed size of entry ``name`` in its local header and the central directory."""
    data = bytearray(path.read_bytes())
    encoded = f"{ROOT}/{name}".encode()
    patched = 0
    for signature, size_at, name_at in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
        pos = data.find(signature)
        while pos >= 0:
            if data[pos + name_at : pos + name_at + len(encoded)] == encoded:
                struct.pack_into("<I", data, pos + size_at, declared)
                patched += 1
            pos = data.find(signature, pos + 1)
    assert patched == 2
    path.write_bytes(bytes(data))


@pytest.fixture
def job(tmp_path, monkeypatch, capsys):
    """Runs the job with its scratch folder at a known place; returns (exit code, stderr, scratch, out)."""
    work = tmp_path / "work"
    out = tmp_path / "out"

    def make_work_dir():
        work.mkdir()
        return str(work)

    monkeypatch.setattr(fetch, "make_work_dir", make_work_dir)

    def run(*args):
        code = task.run(["--output-dir", str(out), *[str(a) for a in args]])
        return code, capsys.readouterr().err, work, out

    return run


def _refused(result, *words):
    code, err, work, out = result
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    for word in words:
        assert word in err, err
    assert not work.exists(), "the scratch folder (downloads, extractions) is removed"
    assert not out.exists(), "a refused source creates no --output-dir"


def test_zip_bomb_refused_before_extracting(tmp_path, job):
    # 64 MiB of zeros packs into about 64 KB: 1000:1, far beyond any JPEG or text file.
    bomb = _zip_with(tmp_path / "bomb.zip", {"wnids.txt": "n1\n", "zeros.bin": 64 << 20})
    assert bomb.stat().st_size < 1 << 20
    _refused(job("--raw-dir", bomb), "zeros.bin", "more than 100:1", "zip bomb")
    target = tmp_path / "extracted"
    with pytest.raises(archive.SourceError, match="zip bomb"):
        archive.safe_extract(str(bomb), str(target))
    assert not target.exists(), "checked from the central directory before anything is written"


def test_archive_larger_than_the_cap_refused_before_extracting(tmp_path, job):
    noise = os.urandom(1 << 20)  # Incompressible: the ratio check does not apply, the total cap does.
    entries = {"wnids.txt": "n1\n", "a.bin": noise, "b.bin": noise, "c.bin": noise}
    big = _zip_with(tmp_path / "big.zip", entries)
    _refused(
        job("--raw-dir", big, "--max-archive-bytes", "2MiB"),
        "archive too large",
        f"more than --max-archive-bytes {2 << 20}",
    )
    # Under the cap it extracts.
    found = fetch.resolve_raw_dir(str(big), str(tmp_path), archive.Limits(max_archive_bytes=4 << 20))
    assert sorted(os.listdir(found)) == ["a.bin", "b.bin", "c.bin", "wnids.txt"]


def test_entry_whose_header_understates_its_size_is_refused(tmp_path, job):
    # The headers say 100 kB (under the ratio threshold); the data inflates to 8 MiB.
    liar = _zip_with(tmp_path / "liar.zip", {"wnids.txt": "n1\n", "zeros.bin": 8 << 20})
    _lie_about_size(liar, "zeros.bin", 100_000)
    _refused(job("--raw-dir", liar), "not a readable zip archive", "zeros.bin")
    target = tmp_path / "extracted"
    with pytest.raises(archive.SourceError):
        archive.safe_extract(str(liar), str(target))
    assert not target.exists(), "a refused extraction is removed"


def test_bytes_written_are_counted_against_the_declared_size():
    # Whatever the zip reader does, more bytes than the header declares stop the copy.
    info = zipfile.ZipInfo("tiny/zeros.bin")
    info.file_size = 10
    with pytest.raises(archive.SourceError, match="beyond its declared 10 bytes"):
        archive._copy_entry(io.BytesIO(bytes(11)), io.BytesIO(), info, 0, 1000)
    info.file_size = 100
    with pytest.raises(archive.SourceError, match="more than --max-archive-bytes 50"):
        archive._copy_entry(io.BytesIO(bytes(60)), io.BytesIO(), info, 0, 50)
    sink = io.BytesIO()
    assert archive._copy_entry(io.BytesIO(bytes(60)), sink, info, 5, 100) == 65 and len(sink.getvalue()) == 60


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves the misbehaving sources of these tests."""

    def log_message(self, *args):
        pass

    def _start(self, length=None):
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def do_GET(self):
        try:
            if self.path == "/huge.zip":  # Announces 50 GiB; the job must not start reading.
                self._start(50 << 30)
                self.wfile.write(b"PK\x03\x04")
            elif self.path == "/unannounced.zip":  # No Content-Length, then 3 MiB.
                self._start()
                for _ in range(48):
                    self.wfile.write(bytes(64 << 10))
            elif self.path == "/slow.zip":  # One byte every 50 ms: no read ever times out.
                self._start(1000)
                for _ in range(1000):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.05)
            else:
                self._start(len(self.server.payload))
                self.wfile.write(self.server.payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # The job hung up, as it should.


@pytest.fixture
def server(tmp_path):
    """A web server on 127.0.0.1; ``/sample.zip`` is a small valid archive. Yields (base URL, its bytes)."""
    payload = _zip_with(tmp_path / "served.zip", {"wnids.txt": "n1\n"}).read_bytes()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.payload = payload
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", payload
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_announced_download_larger_than_the_cap_is_refused_up_front(server, job):
    start = time.monotonic()
    _refused(job("--raw-dir", f"{server[0]}/huge.zip"), f"announces {50 << 30} bytes", "--max-download-bytes")
    assert time.monotonic() - start < 10


def test_download_counted_while_reading(server, job, tmp_path):
    url = f"{server[0]}/unannounced.zip"
    result = job("--raw-dir", url, "--max-download-bytes", "1MiB")
    _refused(result, f"more than --max-download-bytes {1 << 20}")
    target = tmp_path / "partial.zip"
    with pytest.raises(archive.SourceError, match="--max-download-bytes"):
        archive.download(url, str(target), archive.Limits(max_download_bytes=1 << 20))
    assert not target.exists(), "no partial download is left"


def test_slow_drip_stopped_by_the_total_timeout(server, job, tmp_path):
    url = f"{server[0]}/slow.zip"
    start = time.monotonic()
    _refused(job("--raw-dir", url, "--download-timeout", "1"), "not finished after --download-timeout 1 s")
    assert time.monotonic() - start < 10, "the whole download is timed, not each read"
    target = tmp_path / "partial.zip"
    with pytest.raises(archive.SourceError, match="--download-timeout"):
        archive.download(url, str(target), archive.Limits(download_timeout_s=0.5))
    assert not target.exists()


def test_checksum_verified_for_downloads_and_local_archives(server, job, tmp_path):
    base, payload = server
    right = hashlib.sha256(payload).hexdigest()
    wrong = "0" * 64
    _refused(job("--raw-dir", f"{base}/sample.zip", "--raw-sha256", wrong), f"SHA-256 is {right}", wrong)
    target = tmp_path / "download.zip"
    assert archive.download(f"{base}/sample.zip", str(target)) == right and target.read_bytes() == payload

    local = tmp_path / "sample.zip"
    local.write_bytes(payload)
    work = tmp_path / "scratch"
    work.mkdir()
    with pytest.raises(archive.SourceError, match=f"its SHA-256 is {right}, not --raw-sha256 {wrong}"):
        fetch.resolve_raw_dir(str(local), str(work), archive.Limits(sha256=wrong))
    assert os.listdir(work) == [], "nothing is extracted from an archive with another checksum"
    found = fetch.resolve_raw_dir(str(local), str(work), archive.Limits(sha256=right))
    assert os.listdir(found) == ["wnids.txt"]
    with pytest.raises(archive.SourceError, match="--raw-sha256 verifies an archive"):
        fetch.resolve_raw_dir(found, str(work), archive.Limits(sha256=right))


def test_bad_limit_flags_are_usage_errors(tmp_path, capsys):
    for flags, message in [
        (["--raw-sha256", "xyz"], "--raw-sha256 must be 64 hexadecimal digits, got 'xyz'"),
        (["--max-archive-bytes", "lots"], "argument --max-archive-bytes: expected a byte count"),
        (["--max-download-bytes", "0"], "--max-download-bytes must be >= 1, got 0"),
        (["--download-timeout", "0"], "--download-timeout must be > 0 seconds, got 0.0"),
    ]:
        code = task.run(["--raw-dir", str(tmp_path), "--output-dir", str(tmp_path / "o"), *flags])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
        assert message in err and "usage:" not in err, err


_UNITS = {
    "": 1,
    "B": 1,
    "kB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "KiB": 1 << 10,
    "MiB": 1 << 20,
    "GiB": 1 << 30,
}


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(sorted(_UNITS)), st.booleans())
def test_parse_size_reads_counts_with_units(number, unit, upper):
    text = f"{number}{unit.upper() if upper else unit}"
    assert archive.parse_size(text) == number * _UNITS[unit]


@given(st.text(max_size=12))
def test_parse_size_never_fails_other_than_with_value_error(text):
    try:
        value = archive.parse_size(text)
    except ValueError:
        return
    assert isinstance(value, int) and value >= 0


def test_parse_size_examples():
    assert archive.parse_size("1.5GiB") == 3 << 29 and archive.parse_size(" 4 gib ") == 4 << 30
    for bad in ("", "-1", "1e9", "4 bananas", "GiB", "1.2.3MB"):
        with pytest.raises(ValueError, match="expected a byte count"):
            archive.parse_size(bad)
