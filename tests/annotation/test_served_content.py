"""Nothing we serve runs script: stored files are typed by their content, never their name;
what is not a playable video downloads, sandboxed; every page carries a script-only-from-self
Content-Security-Policy."""

import pytest
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile

from annotation.clip_check import video_type
from annotation.models import Campaign, Item
from tests.factories import CampaignFactory, UserFactory

SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" onload="document.title=\'pwned\'">'
    b"<script>console.log('pwned')</script></svg>"
)
HTML = b"<!doctype html><title>x</title><script>document.title='pwned'</script>"
WEBM_HEAD = bytes.fromhex("1a45dfa3 9f 4286 81 01 42f7 81 01 42f2 81 04 42f3 81 08 4282 84") + (
    b"webm\x42\x87\x81\x02\x42\x85\x81\x02"
)
MP4_HEAD = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41"
OGG_HEAD = b"OggS\x00\x02" + b"\x00" * 20


def hostile_clip(member, suffix, body):
    """What the admin stored before uploads were checked: the bytes under the upload's own
    extension, set on an item of a trajectory campaign the member belongs to."""
    campaign = CampaignFactory(kind=Campaign.Kind.TRAJECTORY)
    campaign.members.add(member)
    item = Item(campaign=campaign, dataset="d", episode="e", start=0, length=1)
    item.clip.save(f"clip{suffix}", ContentFile(body), save=True)
    assert item.clip.name.endswith(suffix)
    return item


def assert_inert_download(response):
    assert response["Content-Type"] == "application/octet-stream"
    assert response["Content-Disposition"].startswith("attachment")
    assert "sandbox" in response["Content-Security-Policy"]
    assert response["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    ("suffix", "body"),
    [(".svg", SVG), (".html", HTML), (".webm", HTML)],
    ids=["svg", "html", "html-named-webm"],
)
@pytest.mark.django_db
def test_a_stored_non_video_is_an_inert_download(client, media_root, staff, suffix, body):
    member = UserFactory()
    item = hostile_clip(member, suffix, body)
    for user in (member, staff):
        client.force_login(user)
        response = client.get(item.clip_url)
        assert response.status_code == 200
        assert_inert_download(response)
        assert b"".join(response.streaming_content) == body


@pytest.mark.django_db
def test_the_accel_redirect_answer_is_typed_by_content_too(client, media_root, settings):
    member = UserFactory()
    item = hostile_clip(member, ".svg", SVG)
    settings.MEDIA_ACCEL_REDIRECT_PREFIX = "/protected-media/"
    client.force_login(member)
    response = client.get(item.clip_url)
    assert response["X-Accel-Redirect"] == f"/protected-media/{item.clip.name}"
    assert_inert_download(response)


@pytest.mark.parametrize(
    ("head", "expected", "suffix"),
    [
        (WEBM_HEAD, "video/webm", ".svg"),
        (MP4_HEAD, "video/mp4", ".html"),
        (OGG_HEAD, "video/ogg", ""),
    ],
    ids=["webm", "mp4", "ogg"],
)
@pytest.mark.django_db
def test_a_video_is_typed_by_its_content_not_its_name(client, media_root, head, expected, suffix):
    member = UserFactory()
    item = hostile_clip(member, suffix, head + b"\x00" * 100)
    client.force_login(member)
    response = client.get(item.clip_url, HTTP_RANGE="bytes=0-9")
    assert response.status_code == 206 and response["Content-Type"] == expected
    assert "Content-Disposition" not in response
    assert response["X-Content-Type-Options"] == "nosniff"


def test_sniffing(webm_clip):
    assert video_type(webm_clip[:64]) == "video/webm"
    assert video_type(WEBM_HEAD) == "video/webm"
    assert video_type(WEBM_HEAD.replace(b"webm", b"wxyz")) is None  # EBML, but not a video
    assert video_type(MP4_HEAD) == "video/mp4"
    assert video_type(MP4_HEAD.replace(b"isom", b"avif", 1)) is None  # an image, in ISO-BMFF
    assert video_type(OGG_HEAD) == "video/ogg"
    for other in (SVG, HTML, b"", b"\x1a\x45\xdf\xa3", b"GIF89a", b"%PDF-1.7"):
        assert video_type(other) is None


@pytest.mark.django_db
def test_the_clip_validator_refuses_what_is_not_a_video(webm_clip, media_root):
    campaign = CampaignFactory(kind=Campaign.Kind.TRAJECTORY)
    item = Item(campaign=campaign, clip=SimpleUploadedFile("clip.svg", SVG))
    with pytest.raises(Exception) as refused:
        item.full_clean()
    assert "clip" in refused.value.message_dict
    item = Item(campaign=campaign, clip=SimpleUploadedFile("clip.webm", webm_clip))
    item.full_clean()
    item.save()
    assert item.clip.read() == webm_clip  # the check left the file readable from the start


@pytest.mark.django_db
def test_the_admin_refuses_a_non_video_clip_with_a_clear_error(client, media_root, webm_clip):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    campaign = CampaignFactory(kind=Campaign.Kind.TRAJECTORY)
    form = {"campaign": campaign.pk, "metadata": "{}", "dataset": "d", "episode": "e"}
    response = client.post(
        "/admin/annotation/item/add/", {**form, "clip": SimpleUploadedFile("clip.svg", SVG)}
    )
    assert response.status_code == 200 and not Item.objects.exists()
    assert "not a video" in response.content.decode()
    response = client.post(
        "/admin/annotation/item/add/", {**form, "clip": SimpleUploadedFile("c.webm", webm_clip)}
    )
    assert response.status_code == 302
    assert Item.objects.get().clip.read() == webm_clip


PAGE_POLICY = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "object-src": "'none'",
    "frame-ancestors": "'none'",
    "base-uri": "'self'",
}


def directives(header):
    return {
        part.split()[0]: " ".join(part.split()[1:]) for part in header.split(";") if part.strip()
    }


@pytest.mark.django_db
def test_every_page_has_a_content_security_policy(client, campaign):
    member, staff = UserFactory(), UserFactory(is_staff=True, is_superuser=True)
    campaign.members.add(member)
    assert client.get("/accounts/login/")["Content-Security-Policy"]
    for user, urls in (
        (member, ["/", f"/c/{campaign.slug}/"]),
        (staff, ["/admin/", "/admin/annotation/item/", "/api/v1/campaigns/"]),
    ):
        client.force_login(user)
        for url in urls:
            response = client.get(url)
            assert response.status_code == 200, url
            policy = directives(response["Content-Security-Policy"])
            assert policy.items() >= PAGE_POLICY.items(), url


@pytest.mark.django_db
def test_the_api_docs_page_gets_its_own_policy(client, staff):
    client.force_login(staff)
    response = client.get("/api/docs/")
    assert response.status_code == 200
    policy = directives(response["Content-Security-Policy"])
    # drf-spectacular's page inlines its start-up script; nothing from other origins, still
    assert "'self'" in policy["script-src"] and "http" not in response["Content-Security-Policy"]
    assert policy["object-src"] == "'none'" and policy["frame-ancestors"] == "'none'"
