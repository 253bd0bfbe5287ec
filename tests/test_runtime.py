import platform

import pytest

from kshot.runtime import keep_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_malloc_settings_are_applied_on_glibc():
    assert keep_freed_memory() is True


def test_malloc_settings_can_be_left_alone(monkeypatch):
    monkeypatch.setenv("KSHOT_MALLOC", "system")
    assert keep_freed_memory() is False
