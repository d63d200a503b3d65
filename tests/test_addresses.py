"""Which strings are one email address, and the one form accounts are keyed by."""

from __future__ import annotations

import pytest

from quart_chat.addresses import normalize_domain, normalize_email


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (" Ada@Example.COM ", "ada@example.com"),
        ("A@Example.com", "a@example.com"),
        ("a.b+tag@sub.example.org", "a.b+tag@sub.example.org"),
        ("ada@bücher.example", "ada@xn--bcher-kva.example"),
        ("ada@BÜCHER.example", "ada@xn--bcher-kva.example"),
        ("ada@XN--BCHER-KVA.example", "ada@xn--bcher-kva.example"),
        ("bob@corp.test", "bob@corp.test"),
    ],
)
def test_addresses_are_normalised(raw: str, expected: str) -> None:
    assert normalize_email(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "ada",
        "ada@example",
        "ada@@example.com",
        "a da@example.com",
        "ada@example.com\r\nBcc: eve@example.com",
        "x" * 250 + "@example.com",
        "x" * 65 + "@example.com",  # local part over 64
        "ada@" + "a" * 64 + ".example",  # label over 63
        # Header syntax that a mail library reads as some other recipient.
        "<attacker@evil.test>",
        "Victim <attacker@evil.test>",
        "attacker(x)@evil.test",
        "attacker@evil.test(x)",
        "g:attacker@evil.test;",
        "attacker,victim@example.com",
        "attacker@evil.test,victim@example.com",
        "victim<attacker>@allowed.test",
        "@route.example:attacker@evil.test",
        '"attacker@evil.test"@example.com',
        "attacker@[127.0.0.1]",
        "attacker@evil.test\x00",
        # Lone surrogates, which JSON can carry but nothing can encode.
        "\ud800@example.com",
        "ada@exa\udc00mple.com",
        "ada\ud83d@example.com",
        # Local parts that need SMTPUTF8; special-use domains.
        "ädä@example.com",
        "ada@localhost",
        "ada@printer.local",
        "ada@x.invalid",
    ],
)
def test_anything_but_one_plain_address_is_refused(raw: str) -> None:
    assert normalize_email(raw) is None


def test_domains_normalise_like_addresses() -> None:
    assert normalize_domain(" Bücher.Example ") == "xn--bcher-kva.example"
    assert normalize_domain("corp.test") == "corp.test"
    assert normalize_domain("not a domain") is None
    assert normalize_domain("evil.test>") is None
