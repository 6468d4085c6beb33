from pathlib import Path

import pytest
from rest_framework.test import APIClient

from feedback_app import process_cache
from feedback_app.preflight import check


def pytest_sessionstart(session):
    problems = check(require_servers=True)
    if problems:
        pytest.exit("Tests need PostgreSQL and Redis:\n" + "\n".join(problems), returncode=2)


@pytest.fixture
def api():
    return APIClient()


@pytest.fixture
def staff(db):
    from tests.factories import UserFactory

    # A superuser: owner of every campaign (annotation/permissions.py). The role checks
    # themselves are tested in tests/annotation/test_roles.py.
    return UserFactory(is_staff=True, is_superuser=True, username="staff")


@pytest.fixture
def campaign(db):
    from tests.factories import text_campaign

    return text_campaign(n_prompts=4, responses=3, k=2)


@pytest.fixture(scope="session", autouse=True)
def _static_root():
    from django.conf import settings

    Path(settings.STATIC_ROOT).mkdir(parents=True, exist_ok=True)  # whitenoise warns without it


@pytest.fixture(autouse=True)
def _plain_static_storage(settings):
    """Serve static files by their plain names, as the live server's static handler finds
    them; the hashed-manifest storage of production needs collectstatic first."""
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


@pytest.fixture(scope="session")
def webm_clip(tmp_path_factory):
    """A 4-second VP8 test-pattern clip, made with the ffmpeg that imageio-ffmpeg ships."""
    import subprocess

    import imageio_ffmpeg

    path = tmp_path_factory.mktemp("clips") / "pattern.webm"
    subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc=duration=4:size=160x120:rate=10",
            "-c:v",
            "libvpx",
            "-b:v",
            "100k",
            str(path),
        ],
        check=True,
        timeout=120,
    )
    return path.read_bytes()


@pytest.fixture(autouse=True)
def _file_roots(settings, tmp_path):
    """Every test's clips and datasets under its own temporary folder, never var/."""
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.DATASETS_ROOT = tmp_path / "datasets"


@pytest.fixture
def media_root(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture(scope="session")
def collected_static(tmp_path_factory):
    """collectstatic with the production (hashed manifest) storage, once per session."""
    import os
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("static")
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"],
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "STATIC_ROOT": str(root)},
        check=True,
        timeout=300,
    )
    return root


GUNICORN_APP_NAME = "feedback-test-gunicorn"  # marks its database sessions


@pytest.fixture
def gunicorn_factory(transactional_db, tmp_path, settings, media_root, collected_static):
    """Start gunicorn servers with DEBUG off and production static/media handling, on the test
    database: `start(prefix=[...])` runs the server under a wrapper command (e.g. Debian's
    `faketime`, for a host whose clock is off) and returns its base URL. Data written by the
    test is committed, so the servers see it. Every server is stopped at the end."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    import httpx
    from django.db import connection

    root = Path(__file__).resolve().parents[1]
    bindir = Path(sys.executable).parent
    started: list[tuple[subprocess.Popen, object]] = []

    def start(prefix: list[str] = ()) -> str:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        db = connection.settings_dict
        env = {
            **os.environ,
            "DATABASE_URL": f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:"
            f"{db['PORT'] or 5432}/{db['NAME']}?application_name={GUNICORN_APP_NAME}",
            "ENV_FILE": "/dev/null",
            "DEBUG": "false",
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "WEB_CONCURRENCY": "1",
            "GUNICORN_THREADS": "4",
            "GUNICORN_ACCESSLOG": "/dev/null",
            "STATIC_ROOT": str(collected_static),
            "MEDIA_ROOT": str(settings.MEDIA_ROOT),
            "DATASETS_ROOT": str(tmp_path / "datasets"),  # uploads never land in var/
            "SECRET_KEY": settings.SECRET_KEY,
        }
        log_path = tmp_path / f"gunicorn-{port}.log"
        log = open(log_path, "w")  # noqa: SIM115 - closed when the fixture ends
        proc = subprocess.Popen(
            [
                *prefix,
                str(bindir / "gunicorn"),
                "feedback_app.wsgi:application",
                "--config",
                "gunicorn.conf.py",
            ],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        started.append((proc, log))
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/healthz", timeout=2)
                return base
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.2)

    try:
        yield start
    finally:
        for proc, log in started:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
            log.close()


@pytest.fixture
def gunicorn_server(gunicorn_factory):
    """One gunicorn server (see gunicorn_factory); yields its base URL."""
    return gunicorn_factory()


@pytest.fixture(scope="session", autouse=True)
def _process_cache_listener(django_db_setup, django_db_blocker):
    """The per-process cache's listener connects to the test database: stop it before the
    database is dropped."""
    yield
    with django_db_blocker.unblock():
        process_cache.shutdown()
