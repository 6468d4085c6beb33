"""Datasets over HTTP: POST /api/v1/datasets/ (multipart, streamed to disk), the list and
detail endpoints, and the staff page /staff/datasets/ (annotation/api_datasets.py,
annotation/uploads.py, annotation/staff_views.py)."""

from __future__ import annotations

import io
import re
import stat
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.test.client import FakePayload
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotation import uploads
from annotation.errors import ServiceError
from annotation.models import Dataset, Episode
from tests.annotation.test_datasets import N, arrays, write_hdf5, write_npz
from tests.factories import UserFactory

URL = "/api/v1/datasets/"
PAGE = "/staff/datasets/"
KEYS = {
    "id",
    "name",
    "source_format",
    "env_id",
    "observation_space",
    "action_space",
    "fields",
    "transition_count",
    "episode_count",
    "created_at",
}


@pytest.fixture
def root(settings, tmp_path):
    settings.DATASETS_ROOT = tmp_path / "datasets"
    # Django's own upload handlers would write here: none of them may run.
    settings.FILE_UPLOAD_TEMP_DIR = tmp_path / "django-tmp"
    settings.FILE_UPLOAD_TEMP_DIR.mkdir()
    return settings.DATASETS_ROOT


def as_user(user) -> APIClient:
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def staff_api(staff):
    return as_user(staff)


def multipart(
    fields: dict[str, str], *, content: bytes | None, filename: bytes = b"data.bin"
) -> tuple[bytes, str]:
    """A multipart body built by hand, so the file name goes out exactly as given."""
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for key, value in fields.items():
        out.write(f"--{boundary}\r\n".encode())
        out.write(f'Content-Disposition: form-data; name="{key}"\r\n\r\n'.encode())
        out.write(value.encode() + b"\r\n")
    if content is not None:
        out.write(f"--{boundary}\r\n".encode())
        out.write(b'Content-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n')
        out.write(b"Content-Type: application/octet-stream\r\n\r\n")
        out.write(content + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def post(client, content: bytes | None, url: str = URL, filename: bytes = b"data.bin", **fields):
    body, content_type = multipart(fields, content=content, filename=filename)
    return client.generic("POST", url, body, content_type)


def npz_bytes(tmp_path: Path, data: dict | None = None) -> bytes:
    return write_npz(tmp_path / f"{uuid.uuid4().hex}.npz", data or arrays()).read_bytes()


def hdf5_bytes(tmp_path: Path, data: dict | None = None) -> bytes:
    return write_hdf5(tmp_path / f"{uuid.uuid4().hex}.h5", data or arrays()).read_bytes()


def assert_nothing_stored(root: Path, settings) -> None:
    assert not Dataset.objects.exists()
    assert not Episode.objects.exists()
    assert not root.exists() or list(root.iterdir()) == []
    assert list(Path(settings.FILE_UPLOAD_TEMP_DIR).iterdir()) == []


def assert_error(response, status: int, field: str) -> dict:
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["field"] == field and body["detail"]
    return body


@pytest.fixture
def bytes_read(monkeypatch):
    """How many bytes of the request body the server read, per request."""
    counts: list[int] = []
    original = FakePayload.read

    def read(self, *args, **kwargs):
        chunk = original(self, *args, **kwargs)
        counts.append(len(chunk))
        return chunk

    monkeypatch.setattr(FakePayload, "read", read)
    return counts


# --- Upload ---------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("fmt", ["npz", "d4rl"])
def test_staff_uploads_a_dataset(root, staff_api, tmp_path, fmt, settings):
    content = npz_bytes(tmp_path) if fmt == "npz" else hdf5_bytes(tmp_path)

    r = post(staff_api, content, format=fmt, name="hopper medium", env="hopper-medium-v2")

    assert r.status_code == 201, r.content
    body = r.json()
    assert set(body) == KEYS
    dataset = Dataset.objects.get()
    assert body["id"] == dataset.pk and body["name"] == "hopper medium"
    assert body["source_format"] == fmt and body["env_id"] == "hopper-medium-v2"
    assert body["transition_count"] == N and body["episode_count"] == 3
    assert body["observation_space"] == {"shape": [4], "dtype": "float32"}
    assert sorted(body["fields"]) == sorted(arrays())
    assert body["created_at"]
    assert Episode.objects.filter(dataset=dataset).count() == 3
    # The dataset's directory and nothing else: the upload's temporary file is gone.
    assert [p.name for p in root.iterdir()] == [dataset.directory]
    assert (dataset.path / "observations.npy").exists()
    assert dataset.directory not in r.content.decode() and str(root) not in r.content.decode()
    assert list(Path(settings.FILE_UPLOAD_TEMP_DIR).iterdir()) == []


@pytest.mark.django_db
def test_annotator_403_anonymous_401_nothing_stored(root, tmp_path, settings, bytes_read):
    content = npz_bytes(tmp_path)
    annotator = UserFactory(username="annotator")

    r = post(as_user(annotator), content, format="npz", name="x")
    assert r.status_code == 403 and r.json()["error"] == "permission_denied"
    r = post(APIClient(), content, format="npz", name="x")
    assert r.status_code == 401 and r.json()["error"] == "not_authenticated"
    # Refused before the body was read.
    assert sum(bytes_read) == 0
    assert as_user(annotator).get(URL).status_code == 403
    assert APIClient().get(URL).status_code == 401
    assert_nothing_stored(root, settings)


@pytest.mark.django_db
def test_staff_without_the_dataset_permissions_is_refused(root, tmp_path, settings):
    clerk = UserFactory(username="clerk", is_staff=True)
    client = as_user(clerk)
    assert client.get(URL).status_code == 403
    clerk.user_permissions.add(Permission.objects.get(codename="view_dataset"))
    client = as_user(UserFactory(username="clerk"))  # permissions are cached per instance
    assert client.get(URL).status_code == 200
    assert post(client, npz_bytes(tmp_path), format="npz", name="x").status_code == 403
    assert_nothing_stored(root, settings)


@pytest.mark.django_db
def test_session_annotator_refused_without_reading_the_body(root, tmp_path, bytes_read):
    """DRF's session CSRF check reads the form; for a user who may not import it is skipped,
    so the upload is refused unread."""
    annotator = UserFactory(username="annotator")
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(annotator)
    r = post(client, npz_bytes(tmp_path), format="npz", name="x")
    assert r.status_code == 403
    assert sum(bytes_read) == 0


@pytest.mark.django_db
def test_session_staff_needs_the_csrf_token(root, tmp_path, staff):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(staff)
    content = npz_bytes(tmp_path)
    r = post(client, content, format="npz", name="x")
    assert r.status_code == 403 and "CSRF" in r.json()["detail"]
    assert not Dataset.objects.exists()
    client.get(PAGE)  # sets the CSRF cookie
    token = client.cookies["csrftoken"].value
    body, content_type = multipart({"format": "npz", "name": "x"}, content=content)
    r = client.generic("POST", URL, body, content_type, HTTP_X_CSRFTOKEN=token)
    assert r.status_code == 201, r.content


def _truncated(tmp_path: Path) -> bytes:
    blob = npz_bytes(tmp_path, arrays(2000))
    return blob[: len(blob) * 2 // 3]


def _nan(tmp_path: Path) -> bytes:
    data = arrays()
    data["observations"][11, 2] = np.nan
    return hdf5_bytes(tmp_path, data)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("fmt", "build", "words"),
    [
        ("d4rl", lambda tmp: b"not an HDF5 file\n", ["hopper.h5", "not a readable HDF5 file"]),
        ("npz", _truncated, ["hopper.h5"]),
        ("d4rl", _nan, ["'observations'", "row 11"]),
    ],
    ids=["not-hdf5", "truncated", "nan"],
)
def test_bad_file_400_names_field_and_row(root, staff_api, tmp_path, settings, fmt, build, words):
    r = post(staff_api, build(tmp_path), filename=b"hopper.h5", format=fmt, name="bad")
    body = assert_error(r, 400, "file")
    for word in words:
        assert word in body["detail"]
    assert ".upload-" not in body["detail"]  # the temporary name is never shown
    assert_nothing_stored(root, settings)


@pytest.mark.django_db
def test_truncated_npz_is_refused(root, staff_api, tmp_path, settings):
    r = post(staff_api, _truncated(tmp_path), format="npz", name="cut")
    body = assert_error(r, 400, "file")
    assert "truncated" in body["detail"] or "not a readable" in body["detail"]
    assert_nothing_stored(root, settings)


@pytest.mark.django_db
def test_over_the_limit_413_and_the_body_is_not_read(
    root, staff_api, tmp_path, settings, bytes_read
):
    settings.DATASET_MAX_BYTES = 100_000
    r = post(staff_api, b"\0" * 1_000_000, format="npz", name="big")
    body = assert_error(r, 413, "file")
    assert body["error"] == "too_large" and "100000" in body["detail"]
    assert sum(bytes_read) == 0  # refused by its Content-Length alone
    assert_nothing_stored(root, settings)


@pytest.mark.django_db
def test_a_file_passing_the_limit_is_cut_off_as_it_streams(
    root, staff_api, tmp_path, settings, bytes_read, monkeypatch
):
    # As if the declared length did not give it away: the file part itself is counted.
    monkeypatch.setattr(uploads, "FORM_OVERHEAD_BYTES", 10**9)
    settings.DATASET_MAX_BYTES = 100_000
    size = 2_000_000
    r = post(staff_api, b"\1" * size, format="npz", name="big")
    body = assert_error(r, 413, "file")
    assert body["error"] == "too_large"
    # Stopped a chunk or so past the limit, far from the end of the body.
    assert (
        sum(bytes_read) < settings.DATASET_MAX_BYTES + 4 * uploads.DatasetUploadHandler.chunk_size
    )
    assert_nothing_stored(root, settings)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "filename",
    [
        b"../../etc/passwd",
        b"/etc/passwd",
        b"..",
        b"a\x00b.npz",
        b"..\\..\\windows\\x.npz",
        b"x" * 300 + b".npz",
    ],
    ids=["dotdot", "absolute", "dots", "nul", "backslash", "long"],
)
def test_client_file_names_never_reach_a_path(root, staff_api, tmp_path, settings, filename):
    content = npz_bytes(tmp_path)
    before = {p for p in tmp_path.rglob("*")}
    r = post(staff_api, content, filename=filename, format="npz", name="n")
    assert r.status_code in (201, 400), r.content
    created = {p for p in tmp_path.rglob("*")} - before
    for path in created:
        # Only the dataset's own directory and its field files; no name the client chose.
        assert path.is_relative_to(root), path
        assert "passwd" not in path.name and "x" * 20 not in path.name
    if r.status_code == 201:
        dataset = Dataset.objects.get()
        assert {p.parent for p in created if p.is_file()} == {dataset.path}
    else:  # a name Django drops ("..") means no file at all
        assert r.json()["field"] == "file"
        assert_nothing_stored(root, settings)


@pytest.mark.django_db
def test_bad_file_with_a_hostile_name_echoes_it_safely(root, staff_api, tmp_path, settings):
    name = "é" * 150 + ".h5"
    r = post(staff_api, b"junk", filename=name.encode(), format="d4rl", name="n")
    body = assert_error(r, 400, "file")
    assert "é" * 50 in body["detail"] and "é" * 150 not in body["detail"]
    assert_nothing_stored(root, settings)


@pytest.mark.django_db
def test_duplicate_name_409(root, staff_api, tmp_path):
    content = npz_bytes(tmp_path)
    assert post(staff_api, content, format="npz", name="walker").status_code == 201
    r = post(staff_api, content, format="npz", name=" walker ")
    body = assert_error(r, 409, "name")
    assert body["error"] == "conflict"
    assert Dataset.objects.count() == 1
    assert len(list(root.iterdir())) == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("fields", "content", "field"),
    [
        ({"format": "npz"}, b"x", "name"),
        ({"format": "csv", "name": "n"}, b"x", "format"),
        ({"format": "npz", "name": "n"}, None, "file"),
        ({"format": "npz", "name": "n"}, b"", "file"),
        ({"format": "npz", "name": "n", "env": "a\x00b"}, b"x", "env"),
        ({"format": "npz", "name": "   "}, b"x", "name"),
    ],
    ids=["no-name", "bad-format", "no-file", "empty-file", "nul-env", "blank-name"],
)
def test_bad_form_400_names_the_field(root, staff_api, tmp_path, settings, fields, content, field):
    r = post(staff_api, content, **fields)
    assert_error(r, 400, field)
    assert_nothing_stored(root, settings)


@pytest.mark.django_db
def test_json_body_is_415(root, staff_api):
    r = staff_api.post(URL, {"format": "npz", "name": "n"}, format="json")
    assert r.status_code == 415


@pytest.mark.django_db
def test_chunked_upload_is_411(root, staff_api, tmp_path, settings):
    body, content_type = multipart({"format": "npz", "name": "n"}, content=b"x")
    r = staff_api.generic(
        "POST", URL, body, content_type, CONTENT_LENGTH="", HTTP_TRANSFER_ENCODING="chunked"
    )
    assert_error(r, 411, "body")
    assert_nothing_stored(root, settings)


@pytest.mark.django_db
def test_large_upload_passes_while_other_endpoints_keep_their_limit(
    root, staff_api, tmp_path, settings
):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 4096
    data = arrays(3000)
    content = npz_bytes(tmp_path, data)
    assert len(content) > 40 * settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    assert post(staff_api, content, format="npz", name="large").status_code == 201
    big = {"name": "c", "slug": "c", "instructions": "x" * 10_000}
    r = staff_api.post("/api/v1/campaigns/", big, format="json")
    assert r.status_code == 413 and r.json()["error"] == "too_large"


# --- List and detail --------------------------------------------------------------------


@pytest.mark.django_db
def test_list_pages_newest_first_and_detail_summarises_episodes(root, staff_api, tmp_path):
    content = npz_bytes(tmp_path)
    first = post(staff_api, content, format="npz", name="first").json()
    second = post(staff_api, content, format="npz", name="second", env="hopper-v4").json()
    Episode.objects.filter(dataset_id=first["id"], index__in=[0, 2]).update(policy="expert")

    page = staff_api.get(URL, {"limit": 1}).json()
    assert [d["id"] for d in page["results"]] == [second["id"]]
    assert set(page["results"][0]) == KEYS
    assert page["results"][0] == second
    rest = staff_api.get(page["next"]).json()
    assert [d["id"] for d in rest["results"]] == [first["id"]]
    assert staff_api.get(rest["next"]).json() == {"results": [], "next": None}
    assert [d["id"] for d in staff_api.get(URL).json()["results"]] == [second["id"], first["id"]]
    assert_error(staff_api.get(URL, {"limit": 0}), 400, "limit")

    detail = staff_api.get(f"{URL}{first['id']}/").json()
    assert set(detail) == KEYS | {"episodes"}
    # Episodes of 7, 10 and 6 rows: terminated, timed out, cut off by the end of the file.
    assert detail["episodes"] == {
        "count": 3,
        "terminated": 1,
        "truncated": 2,
        "length_min": 6,
        "length_median": 7,
        "length_max": 10,
        "policies": [{"policy": "expert", "episodes": 2}],
    }
    text = str(staff_api.get(f"{URL}{first['id']}/").content)
    assert str(root) not in text and Dataset.objects.get(pk=first["id"]).directory not in text
    assert_error(staff_api.get(f"{URL}999999/"), 404, "dataset_id")
    assert staff_api.get(f"{URL}{'9' * 30}/").status_code == 404


@pytest.mark.django_db
def test_detail_of_an_even_number_of_episodes_has_the_middle_mean(root, staff_api, tmp_path):
    data = arrays()
    data["timeouts"][-1] = True  # rows 17-22 now end with a timeout: still 3 episodes
    data["terminals"][2] = True  # 0-2, 3-6, 7-16, 17-22: lengths 3, 4, 10, 6
    dataset = post(staff_api, npz_bytes(tmp_path, data), format="npz", name="even").json()
    summary = staff_api.get(f"{URL}{dataset['id']}/").json()["episodes"]
    assert summary["count"] == 4 and summary["length_median"] == 5.0
    assert summary["policies"] == []


# --- Staff page -------------------------------------------------------------------------


def _page_post(client, content, filename=b"hopper.npz", **fields):
    body, content_type = multipart(fields, content=content, filename=filename)
    return client.generic("POST", PAGE, body, content_type)


@pytest.mark.django_db
def test_page_lists_and_uploads_with_csrf(root, staff, tmp_path, settings):
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff)
    page = client.get(PAGE)
    assert page.status_code == 200 and b"No dataset imported yet" in page.content
    assert (
        b'enctype="multipart/form-data"' in page.content
        and b"<script" not in page.content[page.content.index(b"<main>") :]
    )
    token = client.cookies["csrftoken"].value
    content = npz_bytes(tmp_path)

    refused = _page_post(client, content, format="npz", name="hopper")
    assert refused.status_code == 403 and not Dataset.objects.exists()  # no CSRF token
    assert list(root.iterdir()) == []

    r = _page_post(
        client, content, csrfmiddlewaretoken=token, format="npz", name="hopper", env="hopper-v4"
    )
    assert r.status_code == 302 and r["Location"] == PAGE
    listed = client.get(PAGE)
    text = listed.content.decode()
    assert "Imported hopper: 23 transitions, 3 episodes." in text
    assert re.search(r"<td>hopper</td><td>NumPy .npz</td><td>hopper-v4</td>\s*<td>23</td>", text)
    assert Dataset.objects.get().name == "hopper"
    assert "Imported hopper" not in client.get(PAGE).content.decode()  # the notice shows once


@pytest.mark.django_db
def test_page_shows_the_field_and_row_of_a_bad_file(root, staff, client, tmp_path, settings):
    client.force_login(staff)
    r = _page_post(client, _nan(tmp_path), filename=b"hop.h5", format="d4rl", name="bad", env="e")
    assert r.status_code == 400
    text = r.content.decode()
    assert "<strong>file</strong>" in text and "&#x27;observations&#x27;" in text
    assert "row 11" in text
    assert 'value="bad"' in text and 'value="e"' in text  # the form keeps what was typed
    assert_nothing_stored(root, settings)

    r = _page_post(client, None, format="npz", name="bad")
    assert r.status_code == 400 and "No file was submitted" in r.content.decode()

    Dataset.objects.all().delete()
    ok = _page_post(client, npz_bytes(tmp_path), format="npz", name="taken")
    assert ok.status_code == 302
    r = _page_post(client, npz_bytes(tmp_path), format="npz", name="taken")
    assert r.status_code == 409 and "exists already" in r.content.decode()


@pytest.mark.django_db
def test_page_refuses_a_file_over_the_limit(root, staff, client, settings, bytes_read):
    client.force_login(staff)
    settings.DATASET_MAX_BYTES = 10_000
    r = _page_post(client, b"\0" * 200_000, format="npz", name="big")
    assert r.status_code == 413 and "DATASET_MAX_BYTES" in r.content.decode()
    assert sum(bytes_read) == 0
    assert_nothing_stored(root, settings)


@pytest.mark.django_db
def test_page_is_for_staff_only(root, client, tmp_path, settings, bytes_read):
    r = client.get(PAGE)
    assert r.status_code == 302 and r["Location"].startswith("/accounts/login/")
    annotator = UserFactory(username="annotator")
    client.force_login(annotator)
    assert client.get(PAGE).status_code == 403
    assert _page_post(client, npz_bytes(tmp_path), format="npz", name="x").status_code == 403
    assert sum(bytes_read) == 0
    assert "/staff/datasets/" not in client.get("/").content.decode()
    assert_nothing_stored(root, settings)


@pytest.mark.django_db
def test_home_links_the_page_for_staff(staff, client):
    client.force_login(staff)
    assert 'href="/staff/datasets/"' in client.get("/").content.decode()


def test_upload_formats_are_ones_dataset_io_reads():
    from annotation import dataset_io
    from annotation.serializers import DATASET_UPLOAD_FORMATS

    assert {value for value, _ in DATASET_UPLOAD_FORMATS} <= set(dataset_io.FORMATS)


# --- Minari: a .zip of the dataset's directory -------------------------------------------


def _zip(entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for info, data in entries:
            archive.writestr(info, data)
    return out.getvalue()


def _link(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


MINARI_ZIP = [
    ("hopper-v0/data/metadata.json", b"{}"),
    ("hopper-v0/data/main_data.hdf5", b"\0" * 1000),
]


@pytest.mark.parametrize(
    ("entries", "words"),
    [
        ([("/etc/cron.d/x", b"x")], "absolute path"),
        ([("../../escape.txt", b"x")], "'..'"),
        ([("data/../../escape.txt", b"x")], "'..'"),
        ([_link("data/metadata.json", "/etc/passwd")], "symbolic link"),
        ([("a\\..\\b", b"x")], "backslash"),
        ([("data/big.bin", b"\0" * 50_000)], "once uncompressed"),
        ([("data/x", b"1"), ("data/x", b"2")], "twice"),
    ],
    ids=["absolute", "dotdot", "inner-dotdot", "symlink", "backslash", "bomb", "duplicate"],
)
@pytest.mark.filterwarnings("ignore:Duplicate name")  # the duplicate case, written on purpose
def test_zip_extraction_refuses_hostile_archives(tmp_path, entries, words):
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip(entries))
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(ServiceError) as caught:
        uploads.zip_extract_safely(archive=archive, dest=dest, max_bytes=10_000)
    assert words in caught.value.message and caught.value.field == "file"
    assert not (tmp_path / "escape.txt").exists() and not Path("/etc/cron.d/x").exists()
    assert not any(p.is_symlink() for p in dest.rglob("*"))


def test_zip_extraction_counts_the_bytes_written_not_only_the_declared_ones(tmp_path, monkeypatch):
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip([("data/big.bin", b"\0" * 50_000)]))
    dest = tmp_path / "out"
    dest.mkdir()
    original = zipfile.ZipFile.infolist

    def lying(self):  # an archive whose directory understates the sizes
        infos = original(self)
        for info in infos:
            info.file_size = 1
        return infos

    monkeypatch.setattr(zipfile.ZipFile, "infolist", lying)
    with pytest.raises(ServiceError, match="once uncompressed|damaged"):
        uploads.zip_extract_safely(archive=archive, dest=dest, max_bytes=10_000)


def test_minari_zip_extracted_finds_the_dataset_and_cleans_up(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip(MINARI_ZIP))
    root = tmp_path / "datasets"
    with uploads.minari_zip_extracted(archive=archive, directory=root, max_bytes=10**6) as found:
        assert (found / "metadata.json").is_file() and found.name == "data"
        assert found.is_relative_to(root)
    assert list(root.iterdir()) == []
    archive.write_bytes(_zip([("readme.txt", b"x")]))
    with (
        pytest.raises(ServiceError, match="no Minari dataset"),
        uploads.minari_zip_extracted(archive=archive, directory=root, max_bytes=10**6),
    ):
        pass
    assert list(root.iterdir()) == []


@pytest.fixture
def minari_upload(monkeypatch):
    """`minari` offered by the upload form (whether or not dataset_io reads it yet), with the
    import replaced by a stand-in that records the directory it was given."""
    from annotation import services
    from annotation.serializers import DatasetUploadInSerializer

    field = DatasetUploadInSerializer._declared_fields["format"]
    # Each serializer deep-copies its declared fields from their constructor's arguments.
    monkeypatch.setitem(field._kwargs, "choices", [*field.choices, "minari"])
    seen: list[Path] = []

    def fake_import(*, path, source_format, name, env_id=""):
        seen.append(Path(path))
        assert (Path(path) / "metadata.json").is_file()
        raise ServiceError("field 'observations' has a NaN at row 3.", field="file")

    monkeypatch.setattr(services, "dataset_import", fake_import)
    return seen


@pytest.mark.django_db
def test_minari_zip_upload_is_extracted_then_removed(root, staff_api, settings, minari_upload):
    r = post(staff_api, _zip(MINARI_ZIP), filename=b"hopper.zip", format="minari", name="m")
    assert_error(r, 400, "file")
    assert len(minari_upload) == 1 and minari_upload[0].is_relative_to(root)
    assert_nothing_stored(root, settings)

    hostile = _zip([*MINARI_ZIP, ("../../escape.txt", b"x")])
    r = post(staff_api, hostile, filename=b"hopper.zip", format="minari", name="m")
    assert "'..'" in assert_error(r, 400, "file")["detail"]
    assert len(minari_upload) == 1  # refused before the import
    assert_nothing_stored(root, settings)


def test_upload_through_gunicorn(gunicorn_server, tmp_path, staff):
    """The real server path: gunicorn's input stream, read a chunk at a time into the
    temporary file; the server's DATASETS_ROOT is the fixture's tmp_path/datasets."""
    import httpx

    token, _ = Token.objects.get_or_create(user=staff)
    content = npz_bytes(tmp_path, arrays(20_000))
    r = httpx.post(
        f"{gunicorn_server}{URL}",
        headers={"Authorization": f"Token {token.key}"},
        data={"format": "npz", "name": "served", "env": "hopper-v4"},
        files={"file": ("../../served.npz", content, "application/octet-stream")},
        timeout=60,
    )
    assert r.status_code == 201, r.text
    assert r.json()["transition_count"] == 20_000
    dataset = Dataset.objects.get()
    assert [p.name for p in (tmp_path / "datasets").iterdir()] == [dataset.directory]
    assert not (tmp_path.parent / "served.npz").exists()


@pytest.mark.django_db
def test_a_minari_dataset_uploads_as_a_zip_of_its_directory(
    staff_api, root, settings, tmp_path, monkeypatch
):
    """End to end: minari's own writer, zipped as a user would, uploaded, imported."""
    from tests.annotation.test_minari import LENGTHS, episodes, write_minari

    directory = write_minari(tmp_path / "minari", episodes(), monkeypatch=monkeypatch)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as out:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                out.write(path, path.relative_to(directory.parent))
    response = post(
        staff_api, archive.getvalue(), filename=b"tiny.zip", format="minari", name="tiny"
    )
    assert response.status_code == 201, response.content[:500]
    body = response.json()
    assert body["source_format"] == "minari" and body["env_id"] == "Pendulum-v1"
    assert body["transition_count"] == sum(LENGTHS) and body["episode_count"] == len(LENGTHS)
    # Only the dataset's own directory is left under DATASETS_ROOT: the archive and what was
    # extracted from it are gone.
    assert [p.name for p in root.iterdir()] == [Dataset.objects.get().directory]
