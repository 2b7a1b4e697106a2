"""Secrets never printed: every URL the pipeline shows is masked by parsing it, whatever
form the drivers accept (user info, query parameters, an unencoded @ in a password), and
a driver's error quoting the URL is scrubbed too."""

from __future__ import annotations

import pytest

from pipeline.database import masked, scrubbed

SECRET = "s3cr3t"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg://pipe:s3cr3t@127.0.0.1:5432/db", "postgresql+psycopg://pipe:***@127.0.0.1:5432/db"),
        ("postgresql://pipe:s3cr3t@/db?host=/var/run/postgresql", "postgresql://pipe:***@/db?host=/var/run/postgresql"),
        ("postgresql://pipe@127.0.0.1/db?password=s3cr3t&sslmode=require", "postgresql://pipe@127.0.0.1/db?password=***&sslmode=require"),
        ("redis://:s3cr3t@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("redis://user:s3cr3t@127.0.0.1:6379/0", "redis://user:***@127.0.0.1:6379/0"),
        ("redis://127.0.0.1:6379/0?password=s3cr3t", "redis://127.0.0.1:6379/0?password=***"),
        ("rediss://:s3cr3t@redis.example:6380/0?ssl_cert_reqs=required", "rediss://:***@redis.example:6380/0?ssl_cert_reqs=required"),
        ("redis://:abc@s3cr3t@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("redis://:p%40s3cr3t@127.0.0.1/0", "redis://:***@127.0.0.1/0"),
        ("redis+socket://:s3cr3t@/tmp/redis.sock?virtual_host=0", "redis+socket://:***@/tmp/redis.sock?virtual_host=0"),
        ("redis+socket:///tmp/redis.sock?password=s3cr3t", "redis+socket:///tmp/redis.sock?password=***"),
        ("postgresql://pipe:s3cr3t@h/db?sslpassword=s3cr3t", "postgresql://pipe:***@h/db?sslpassword=***"),
        ("sqlite:////srv/pipeline/pipeline.db", "sqlite:////srv/pipeline/pipeline.db"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ],
)  # fmt: skip
def test_every_form_of_url_is_shown_without_its_secret(url: str, shown: str) -> None:
    assert masked(url) == shown
    assert SECRET not in masked(url)


def test_a_drivers_error_quoting_the_url_or_its_password_is_scrubbed() -> None:
    url = "redis://:abc@s3cr3t@127.0.0.1:6379/0"
    error = f"Error connecting to {url}: password abc@s3cr3t refused"
    assert SECRET not in scrubbed(error, url)
    assert "redis://:***@127.0.0.1:6379/0" in scrubbed(error, url)
