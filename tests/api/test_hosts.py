"""Loopback is not a login: with authentication off, only requests that name this
machine in their Host header are answered (a DNS-rebinding page names its own domain)."""
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from tests.helpers import small_job


@pytest.mark.parametrize("host", ["rebind.attacker.example", "rebind.attacker.example:8000",
                                  "10.0.0.7:8000", "localhost.attacker.example"])
def test_with_authentication_off_a_foreign_host_is_refused_and_stores_nothing(client, host):
    answer = client.post("/jobs", json=small_job(), headers={"host": host})
    assert answer.status_code == 400 and "host" in answer.text.lower()
    assert client.get("/jobs", headers={"host": host}).status_code == 400
    assert client.get("/jobs", headers={"host": "127.0.0.1:8000"}).json()["total"] == 0


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "[::1]:8000", "127.0.0.1"])
def test_with_authentication_off_loopback_names_are_answered(client, host):
    assert client.get("/jobs", headers={"host": host}).status_code == 200


def test_a_name_the_administrator_allows_is_answered(settings, sessions):
    allowed = settings.model_copy(update={"allowed_hosts": "crossfold.internal, gpu-box"})
    with TestClient(create_app(allowed, sessions)) as client:
        assert client.get("/jobs", headers={"host": "gpu-box:8000"}).status_code == 200
        assert client.get("/jobs", headers={"host": "other-box:8000"}).status_code == 400


def test_with_authentication_on_any_host_reaches_the_key_check(settings, sessions):
    """Behind a proxy the Host is the proxy's name; the key is what lets a caller in."""
    secured = settings.model_copy(update={"auth_required": True})
    with TestClient(create_app(secured, sessions)) as client:
        assert client.get("/jobs", headers={"host": "crossfold.example.com"}).status_code == 401
