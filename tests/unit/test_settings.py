"""Database settings: a TCP host or the directory of a local Unix socket, secrets quoted."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from pydantic import SecretStr

from shared.settings import ServiceSettings


def test_a_host_name_gives_a_tcp_url_with_the_password_quoted() -> None:
    settings = ServiceSettings(
        database_host="db.internal", database_port=5433, database_password=SecretStr("p@ss/w:rd"), database_name="x"
    )
    url = urlsplit(settings.database_dsn)

    assert (url.hostname, url.port, url.path) == ("db.internal", 5433, "/x")
    assert url.password == "p%40ss%2Fw%3Ard"  # quoted: the URL stays parseable
    assert settings.database_url.startswith("postgresql+asyncpg://")


def test_a_directory_as_host_gives_the_unix_socket_there_on_the_same_port() -> None:
    settings = ServiceSettings(database_host="/var/run/postgresql", database_port=55434, database_name="cycle_close")
    url = urlsplit(settings.database_dsn)

    assert url.hostname is None and url.path == "/cycle_close"
    assert parse_qs(url.query) == {"host": ["/var/run/postgresql"], "port": ["55434"]}
