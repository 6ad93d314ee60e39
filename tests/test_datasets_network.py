"""Link-rot check of the dataset registry against the real servers. Runs only when asked for:

    SYNTHSHOT_NETWORK_TESTS=1 pytest tests/test_datasets_network.py

For every file with URLs, the first 1 kB is requested from each URL until one answers with the
file (not an HTML page) at the registry's size; one small file is downloaded in full and checked
against its pinned sha256.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request

import pytest

from synthshot.datasets.download import USER_AGENT, HttpOptions, fetch, looks_like_html
from synthshot.datasets.registry import dataset_names, load_source

pytestmark = pytest.mark.skipif(
    os.environ.get("SYNTHSHOT_NETWORK_TESTS") != "1",
    reason="touches the real dataset servers; set SYNTHSHOT_NETWORK_TESTS=1 to run",
)

FILES = [(name, spec) for name in dataset_names() for spec in load_source(name).files if spec.urls]


def _probe(url: str) -> tuple[int, int | None, bytes]:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Range": "bytes=0-1023"})
    with urllib.request.urlopen(request, timeout=60) as response:
        head = response.read(1024)
        match = re.match(r"bytes \d+-\d+/(\d+)", response.headers.get("Content-Range", ""))
        if match:
            total = int(match.group(1))
        else:
            length = response.headers.get("Content-Length")
            total = int(length) if length and response.status == 200 else None
        return response.status, total, head


@pytest.mark.parametrize("name,spec", FILES, ids=[f"{n}:{s.filename}" for n, s in FILES])
def test_a_url_serves_the_file(name, spec):
    failures = []
    for url in spec.urls:
        try:
            _, total, head = _probe(url)
        except (urllib.error.URLError, OSError) as exc:
            failures.append(f"{url}: {exc}")
            continue
        if looks_like_html(head):
            failures.append(f"{url}: HTML page")
        elif spec.size is not None and total is not None and total != spec.size:
            failures.append(f"{url}: {total} bytes, registry says {spec.size}")
        else:
            return
    pytest.fail(f"{name}/{spec.filename}: no URL serves the file: " + "; ".join(failures))


def test_small_file_downloads_with_its_pinned_hash(tmp_path):
    spec = load_source("oxford_flowers").file("labels")  # imagelabels.mat, 502 bytes
    got = fetch(spec, tmp_path, list(spec.urls), HttpOptions(progress=False), echo=lambda *a: None)
    assert got.verified == "sha256"
