"""Laravel's ``Str::slug``, as the app derives its Redis prefix from ``APP_NAME``."""

from __future__ import annotations

import pytest

from gateway.shared.laravel.strings import ascii_en, slug

# App name, Str::slug($name, '_'), Str::slug($name): what Laravel 8.83 (Debian's
# php-laravel-framework, voku/portable-ascii 2.0.1) answers. Non-ASCII names are escaped.
LARAVEL = [
    ("Laravel", "laravel", "laravel"),
    ("Acme.io", "acmeio", "acmeio"),
    ("Caf\u00e9 \u00dcnion", "cafe_union", "cafe-union"),
    ("Joe's Pizza", "joes_pizza", "joes-pizza"),
    ("Tom & Jerry", "tom_jerry", "tom-jerry"),
    ("support@acme", "support_at_acme", "support-at-acme"),
    ("Foo-Bar_Baz", "foo_bar_baz", "foo-bar-baz"),
    ("  padded name  ", "padded_name", "padded-name"),
    ("WhatsApp Gateway", "whatsapp_gateway", "whatsapp-gateway"),
    ("\u00c4rger \u00d6l \u00dcbel \u00df", "arger_ol_ubel_ss", "arger-ol-ubel-ss"),
    ("na\u00efve fa\u00e7ade", "naive_facade", "naive-facade"),
    ("Cr\u00e8me br\u00fbl\u00e9e", "creme_brulee", "creme-brulee"),
    ("\u00d8RSTED", "orsted", "orsted"),
    ("\u00c6ther", "aether", "aether"),
    ("\u0141\u00f3d\u017a", "lodz", "lodz"),
    ("\u0130stanbul", "istanbul", "istanbul"),
    ("Stra\u00dfe", "strasse", "strasse"),
    ("\u6771\u4eac", "", ""),
    ("\u041c\u043e\u0441\u043a\u0432\u0430", "moskva", "moskva"),
    ("\u0395\u03bb\u03bb\u03ac\u03b4\u03b1", "ellada", "ellada"),
    ("a--b__c", "a_b_c", "a-b-c"),
    ("-lead-and-trail_", "lead_and_trail", "lead-and-trail"),
    ("__init__", "init", "init"),
    ("v2.0 (beta)", "v20_beta", "v20-beta"),
    ("x@y@z", "x_at_y_at_z", "x-at-y-at-z"),
    ("@start", "at_start", "at-start"),
    ("100% Pure", "100_pure", "100-pure"),
    ("Dollar $ign", "dollar_ign", "dollar-ign"),
    ("\u00c9moji \ud83d\ude80 app", "emoji_app", "emoji-app"),
    ("tab\there", "tab_here", "tab-here"),
    ("new\nline", "new_line", "new-line"),
    ("my_app-name", "my_app_name", "my-app-name"),
    ("CAPS LOCK", "caps_lock", "caps-lock"),
    ("1.2.3", "123", "123"),
    ("", "", ""),
    ("   ", "", ""),
    ("\u2014dash\u2014", "dash", "dash"),
    ("\u201cquoted\u201d", "quoted", "quoted"),
    ("\ufb01nance", "finance", "finance"),
    ("\u216b kings", "kings", "kings"),
    ("\u00bd price", "price", "price"),
    ("\u00f1and\u00fa", "nandu", "nandu"),
    ("\u00c7a va", "ca_va", "ca-va"),
    ("Vi\u1ec7t Nam", "viet_nam", "viet-nam"),
    ("Dvo\u0159\u00e1k", "dvorak", "dvorak"),
    ("Krak\u00f3w", "krakow", "krakow"),
]


@pytest.mark.parametrize(("name", "underscore", "dash"), LARAVEL)
def test_slug_is_laravels(name: str, underscore: str, dash: str) -> None:
    assert (slug(name, "_"), slug(name)) == (underscore, dash)


def test_ascii_replaces_sequences_before_single_characters() -> None:
    assert ascii_en("\u0391\u03a5") == "AU"  # Greek alpha-upsilon, one sequence
    assert ascii_en("a\u0391b\u03a5c") == "aAbYc"  # apart: one character each
    assert ascii_en("x\x00\x7fy\tz\n\rw") == "xy z w"
