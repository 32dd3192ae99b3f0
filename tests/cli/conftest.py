from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.harness import ServedApi, api_config, served_api


@pytest.fixture(autouse=True)
def _no_ambient_cwboot_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CWBOOT_URL", "CWBOOT_TOKEN", "CWBOOT_CONFIG"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ServedApi]:
    with served_api(api_config(tmp_path)) as served:
        yield served
