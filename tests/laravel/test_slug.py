"""``Str::slug`` here against Laravel's own, on names drawn from every script the table
knows (Latin, Greek, Cyrillic, punctuation, combining marks) and some it does not."""

from __future__ import annotations

import random

from gateway.shared.laravel.strings import slug
from tests.laravel.conftest import php_json

RANGES = (
    range(0x20, 0x7F),
    range(0xA0, 0x250),
    range(0x300, 0x370),
    range(0x370, 0x400),
    range(0x400, 0x500),
    range(0x1E00, 0x1F00),
    range(0x2000, 0x2070),
    range(0x2100, 0x2190),
    (0x05D0, 0x0627, 0x0915, 0x0E01, 0x1000, 0x10D0, 0x4E00, 0xFB01, 0x1F680),
)


def test_slug_matches_laravels_on_3000_random_names(php: str) -> None:
    rng = random.Random(8)
    names = [
        "".join(chr(rng.choice(rng.choice(RANGES))) for _ in range(rng.randrange(1, 16)))
        for _ in range(3000)
    ]
    expected = php_json(php, "slug.php", names, timeout=60)
    mismatches = [
        (name, (slug(name, "_"), slug(name)), tuple(want))
        for name, want in zip(names, expected, strict=True)
        if (slug(name, "_"), slug(name)) != tuple(want)
    ]
    assert mismatches == []


def test_the_table_is_the_one_dev_ascii_table_makes_from_laravels_source(php: str) -> None:
    from dev.ascii_table import kept, table
    from gateway.shared.laravel.ascii_table import ASCII

    assert kept(table()) == ASCII
