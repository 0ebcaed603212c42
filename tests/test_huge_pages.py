"""The scripts' huge-page set-up: which GLIBC_TUNABLES it asks for, and that it can be turned off."""

import platform
import sys

import pytest

from runtime import huge_pages


@pytest.fixture
def glibc_2_36(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(platform, "libc_ver", lambda: ("glibc", "2.36"))


def test_tunable_is_added_to_what_the_user_set(glibc_2_36):
    assert huge_pages.tunables_with_huge_pages({}) == "glibc.malloc.hugetlb=1"
    assert huge_pages.tunables_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) == \
        "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"


def test_nothing_to_do_when_set_or_opted_out(glibc_2_36):
    assert huge_pages.tunables_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None
    assert huge_pages.tunables_with_huge_pages({"DREAMER_NO_HUGE_PAGES": "1"}) is None


def test_nothing_to_do_on_older_glibc(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda: ("glibc", "2.31"))
    assert huge_pages.tunables_with_huge_pages({}) is None
