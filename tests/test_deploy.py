"""Deployment configuration: the compose file, the Procfile, .env.example and the
production settings."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip() and not line.startswith("#"))


def compose_config() -> dict:
    """The file as docker-compose itself resolves it (anchors, merges, interpolation)."""
    result = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        env={**os.environ, "SECRET_KEY": "x" * 50},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_file_validates_and_mirrors_the_procfile():
    config = compose_config()
    services = config["services"]
    assert {"db", "redis", "web", "worker", "worker-training", "worker-media", "beat"} <= set(
        services
    )
    for name, command in procfile().items():
        assert name in services, f"Procfile process {name} has no compose service"
        got = services[name]["command"]
        got = " ".join(got) if isinstance(got, list) else got
        assert got == command, f"{name}: compose runs {got!r}, Procfile {command!r}"
    # Everything else is a stock image, not a process of ours.
    assert set(services) - set(procfile()) == {"db", "redis", "proxy"}
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert "/healthz" in " ".join(services["web"]["healthcheck"]["test"])
    assert {"pgdata", "media"} <= set(config["volumes"])
    assert any("pgdata" in str(v) for v in services["db"]["volumes"])
    for name in ("web", "worker", "worker-training", "worker-media", "beat"):
        env = services[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgres://") and env["REDIS_URL"].startswith(
            "redis://"
        )
        assert any("media" in str(v) for v in services[name]["volumes"])
    assert (
        "capabilities: [gpu]" in (ROOT / "docker-compose.yml").read_text()
    )  # commented reservation


def test_compose_publishes_only_the_buffering_proxy():
    services = compose_config()["services"]
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"proxy"}, published
    proxy = services["proxy"]
    assert proxy["image"].startswith("nginx:")
    assert [int(p["target"]) for p in proxy["ports"]] == [80]
    mounts = [str(v) for v in proxy["volumes"]]
    assert any("deploy/nginx.conf" in v and "/etc/nginx/conf.d/default.conf" in v for v in mounts)
    assert any("media" in v and "/app/var/media" in v for v in mounts)
    assert services["web"]["environment"]["THROTTLE_TRUSTED_PROXY_HEADER"] == "HTTP_X_REAL_IP"
    assert int(services["web"]["environment"]["GUNICORN_HEADER_TIMEOUT"]) > 0


def test_nginx_config_parses_and_sets_the_slow_client_limits(tmp_path):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(nginx).exists(), "nginx is missing: `make test` installs Debian's nginx-light"
    conf = (ROOT / "deploy/nginx.conf").read_text()
    directives: dict[str, str] = {}
    for name, value in re.findall(r"^\s*(\w+)\s+([^;{]*?)\s*;", conf, re.M):
        directives.setdefault(name, value)  # the server-wide one, before any location's
    assert directives["client_header_timeout"] and directives["client_body_timeout"]
    assert directives["proxy_request_buffering"] == "on"
    from django.conf import settings

    assert directives["client_max_body_size"] == f"{settings.DATA_UPLOAD_MAX_MEMORY_SIZE >> 20}m"
    assert "X-Real-IP $remote_addr" in conf and "X-Forwarded-Proto $scheme" in conf
    assert re.search(r"location /protected-media/ \{\s*internal;", conf)
    # The image's http context, cut down: conf.d/default.conf is included inside http {}.
    main = tmp_path / "nginx.conf"
    main.write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{ access_log off; include {ROOT}/deploy/nginx.conf; }}\n"
    )
    result = subprocess.run(
        [
            nginx,
            "-t",
            "-q",
            "-p",
            str(tmp_path),
            "-e",
            str(tmp_path / "error.log"),
            "-c",
            str(main),
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr


def test_compose_refuses_to_start_without_a_secret_key():
    env = {k: v for k, v in os.environ.items() if k != "SECRET_KEY"}
    result = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode != 0 and "SECRET_KEY" in result.stderr


def test_env_example_documents_every_setting():
    names = set(
        re.findall(
            r'env(?:\.\w+)?\(\s*"([A-Z_]+)"', (ROOT / "feedback_app/settings.py").read_text()
        )
    )
    names |= set(
        re.findall(
            r"os\.environ(?:\.get\(|\[)\"([A-Z_]+)\"", (ROOT / "gunicorn.conf.py").read_text()
        )
    )
    documented = set(re.findall(r"^#? ?([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert names and names <= documented, f"undocumented: {sorted(names - documented)}"


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


PRODUCTION = {
    "DEBUG": "false",
    "SECRET_KEY": "k8Jq2-vX9mNw4Lr7TzPa1Yc5Hs3Fd6Gb0Ue8Wi2Ko4Qn7Rt1Mv5Xz9Ly3Bj6Cp0Dh",
    "ALLOWED_HOSTS": "feedback.example.org",
    "CSRF_TRUSTED_ORIGINS": "https://feedback.example.org",
    "HTTPS": "true",
    "TRUST_X_FORWARDED_PROTO": "true",
    "SECURE_HSTS_PRELOAD": "true",  # an operator's choice (hard to undo); check --deploy asks for it
}


def test_check_deploy_is_clean_with_production_settings():
    env = {**os.environ, **PRODUCTION}
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_flags_an_insecure_setup():
    env = {**os.environ, **PRODUCTION, "HTTPS": "false", "SECRET_KEY": "short"}
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode != 0
    for warning in (
        "security.W004",
        "security.W008",
        "security.W009",
        "security.W012",
        "security.W016",
    ):
        assert warning in result.stderr + result.stdout


def test_secret_key_is_generated_once_and_kept_private(tmp_path):
    from feedback_app.embedded import secret_key_from

    path = tmp_path / "var" / "secret_key"
    key = secret_key_from(path)
    assert len(key) >= 50 and secret_key_from(path) == key
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["secret_key"]  # no temporary file left
