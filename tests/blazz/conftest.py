"""blazz's own PHP code needs PHP with Debian's Laravel (the fixture of tests/laravel)."""

from tests.laravel.conftest import php

__all__ = ["php"]
