"""The API's docs pages work without internet: their scripts come from the installed
packages (GPU nodes are often offline). Checked in the HTML, and in a headless Chromium
that can reach nothing but loopback."""
from __future__ import annotations

import re

import pytest

from api.main import create_app
from tests.helpers import needs_chromium, render, served

LINK = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|(?:url)\s*:\s*["']([^"']+)["']""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_everything_from_the_api_itself(client, page):
    html = client.get(page).text
    assert not re.search(r"https?://", html), re.findall(r"https?://[^\s\"']+", html)
    links = [a or b for a, b in LINK.findall(html)]
    assert links, html
    for link in links:
        assert link.startswith("/"), link  # this host, nothing else
        response = client.get(link)
        assert response.status_code == 200 and len(response.content) > 0, link


@needs_chromium
def test_the_docs_page_renders_offline_in_a_real_browser(settings, sessions, database_url, tmp_path):
    if database_url.startswith("postgresql"):
        pytest.skip("rendered once: the page does not depend on the database")
    with served(create_app(settings, sessions)) as base:
        dom = render(f"{base}/docs", screenshot=tmp_path / "docs.png")
    # Swagger UI ran (its script came from the API) and drew every operation.
    assert 'class="swagger-ui' in dom and "crossfold" in dom
    for path in ("/jobs", "/jobs/{job_id}", "/jobs/{job_id}/cancel", "/healthz"):
        assert f'data-path="{path}"' in dom, path
    assert (tmp_path / "docs.png").stat().st_size > 10_000
