from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.harness import MAX_BODY, ServedApi, api_config, served_api


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ServedApi]:
    with served_api(api_config(tmp_path, max_body_bytes=MAX_BODY)) as served:
        yield served


@pytest.fixture
def admin(api: ServedApi) -> Iterator[httpx.Client]:
    with api.client() as client:
        yield client
