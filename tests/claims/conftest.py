"""Fixtures for the tests of documented promises: the waiting room's in-process app with relaxed limits."""

from tests.waiting_room.conftest import qclient  # noqa: F401  (fixture)
