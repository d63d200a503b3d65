"""Whether the worker agrees to permessage-deflate: Hypercorn has no setting for it."""

from __future__ import annotations

from hypercorn.protocol import ws_stream
from wsproto.extensions import PerMessageDeflate


class _DeclinedDeflate(PerMessageDeflate):
    """permessage-deflate that is never agreed to: the socket runs uncompressed."""

    def accept(self, offer: str) -> None:
        return None


def use_permessage_deflate(enabled: bool) -> None:
    """Agree to permessage-deflate when clients offer it (browsers always do), or not.

    Hypercorn always agrees and has no setting for it (pgjones/hypercorn#307):
    its handshake builds a `PerMessageDeflate` by this module-level name, which
    is swapped here for the whole worker process. tests/test_multiworker.py
    checks both ways against a real server, so a Hypercorn that stops looking
    the name up fails there.
    """
    extension = PerMessageDeflate if enabled else _DeclinedDeflate
    ws_stream.PerMessageDeflate = extension  # type: ignore[attr-defined]
