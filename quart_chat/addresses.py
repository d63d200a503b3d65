"""Email addresses: which strings are one, and the single form accounts are keyed by.

A login code may go only to the address that owns the account, so the address
a person types must be exactly one mailbox, with none of the header syntax
(display names, comments, groups, source routes, lists) that a mail library
would happily turn into some other recipient. `email-validator` judges the
syntax (RFC 5321/5322, IDNA 2008 domains, length limits); no DNS is asked.

The normal form, used as the account key, in the allowlists and as the SMTP
envelope recipient, is the whole address in ASCII and lower case:

- the domain in lower case, internationalised domains in their ASCII (`xn--`)
  form, so `ada@bücher.example` and `ada@xn--bcher-kva.example` are one account;
- the local part lower-cased too. RFC 5321 lets a server treat `Ada` and `ada`
  as two mailboxes, but no mainstream one does and people expect one account
  for both. Mail is then sent to the lower-cased address, so the code still
  goes to the mailbox that owns the account. Dots and `+tags` are kept: what
  they mean is up to each provider;
- local parts with non-ASCII characters are refused: they need SMTPUTF8 from
  every relay on the way and have no agreed lower case;
- quoted local parts, IP-literal domains and domains without a dot are
  refused, and so are the special-use names `localhost`, `.local`, `.invalid`,
  `.onion` and `.arpa`. `.test` (RFC 6761) is accepted: local mail catchers
  and tests use it, and mail to it goes nowhere else.
"""

from __future__ import annotations

from email_validator import EmailNotValidError, validate_email

MAX_EMAIL_LENGTH = 254  # RFC 5321 path limit, also enforced by email-validator
# RFC 5321 4.5.3.1.1; email-validator checks it only in its strict mode, which
# would also refuse addresses people really have.
MAX_LOCAL_PART_LENGTH = 64


def normalize_email(raw: str) -> str | None:
    """The normal form of `raw` (surrounding whitespace ignored), or None if it is not
    exactly one acceptable address."""
    candidate = raw.strip()
    # Lone surrogates (possible in JSON strings) cannot be encoded, so no mail
    # server, header or Redis key could carry them.
    if len(candidate) > MAX_EMAIL_LENGTH or not _encodable(candidate):
        return None
    try:
        valid = validate_email(
            candidate,
            check_deliverability=False,
            allow_smtputf8=False,
            allow_quoted_local=False,
            allow_domain_literal=False,
            allow_display_name=False,
            # Accepts `.test` domains only; DNS checks are off regardless.
            test_environment=True,
        )
    except EmailNotValidError:
        return None
    assert valid.ascii_email is not None  # always set when SMTPUTF8 is refused
    if len(valid.ascii_email.partition("@")[0]) > MAX_LOCAL_PART_LENGTH:
        return None
    return valid.ascii_email.lower()


def normalize_domain(raw: str) -> str | None:
    """A domain in the form `normalize_email` gives the part after the `@`, or None."""
    address = normalize_email(f"postmaster@{raw.strip()}")
    return None if address is None else address.partition("@")[2]


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
