from pathlib import Path

from django.core.management import call_command
from django.test import Client


def test_it_serves_the_openapi_schema_with_the_registry_endpoints(db: None, client: Client) -> None:
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in (
        "/api/v1/members/register/",
        "/api/v1/members/heartbeat/",
        "/api/v1/members/deregister/",
        "/api/v1/members/",
        "/api/v1/members/{instance_id}/",
        "/api/v1/locations/",
        "/register",
        "/heartbeat",
        "/deregister",
        "/members",
    ):
        assert path in paths, path


def test_it_serves_the_browsable_docs_without_internet(db: None, client: Client) -> None:
    response = client.get("/api/docs/")
    assert response.status_code == 200
    assert b"swagger-ui" in response.content


def test_it_generates_the_schema_without_warnings(db: None, tmp_path: Path) -> None:
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))
    assert "/api/v1/members/register/" in (tmp_path / "schema.yaml").read_text()
