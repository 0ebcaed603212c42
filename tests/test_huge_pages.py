"""The scripts' huge-page set-up: which GLIBC_TUNABLES it asks for, and that it can be turned off."""

import platform

import pytest

import huge_pages


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or platform.libc_ver()[1] < "2.35", reason="needs glibc 2.35+")
def test_tunable_is_added_to_what_the_user_set():
    assert huge_pages.tunables_with_huge_pages({}) == "glibc.malloc.hugetlb=1"
    assert huge_pages.tunables_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) == \
        "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"


def test_nothing_to_do_when_set_or_opted_out():
    assert huge_pages.tunables_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None
    assert huge_pages.tunables_with_huge_pages({"DREAMER_NO_HUGE_PAGES": "1"}) is None
