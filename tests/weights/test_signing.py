"""Signed download URLs: bound to licensee, commit, file and time; constant-time checked."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import pytest

from releasegate.errors import Forbidden
from releasegate.weights import signing

KEY = signing.signing_key(b"server-secret")
NOW = datetime(2026, 1, 1, tzinfo=UTC)
EXP = int(NOW.timestamp()) + 3600
ARGS = {"model": "acme/atlas-8b", "commit": "c" * 40, "path": "dir/model.safetensors", "licensee": "prn_1"}


def _query() -> dict[str, str]:
    url = signing.signed_path(KEY, expires=EXP, **ARGS)
    assert urlsplit(url).path == "/weights/dl/acme/atlas-8b/" + "c" * 40 + "/dir/model.safetensors"
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def test_a_fresh_signature_verifies() -> None:
    q = _query()
    g = signing.verify(KEY, model=ARGS["model"], commit=ARGS["commit"], path=ARGS["path"], licensee=q["lic"],
                       expires=q["exp"], sig=q["sig"], now=NOW)
    assert g.licensee == "prn_1" and g.expires == EXP


@pytest.mark.parametrize("change", ["model", "commit", "path", "licensee", "exp", "sig", "key"])
def test_any_change_breaks_it(change: str) -> None:
    q = _query()
    kw = {**ARGS, "expires": q["exp"], "sig": q["sig"]}
    if change == "exp":
        kw["expires"] = str(EXP + 1)
    elif change == "sig":
        kw["sig"] = ("0" if q["sig"][0] != "0" else "1") + q["sig"][1:]
    elif change != "key":
        kw[change] = kw[change] + "x"
    key = signing.signing_key(b"other") if change == "key" else KEY
    with pytest.raises(Forbidden) as err:
        signing.verify(key, now=NOW, **kw)
    assert err.value.code == "signature_invalid"


def test_expired_and_incomplete_links() -> None:
    q = _query()
    with pytest.raises(Forbidden) as err:
        signing.verify(KEY, model=ARGS["model"], commit=ARGS["commit"], path=ARGS["path"], licensee=q["lic"],
                       expires=q["exp"], sig=q["sig"], now=datetime.fromtimestamp(EXP, UTC))
    assert err.value.code == "signature_expired"
    for missing in ("licensee", "expires", "sig"):
        kw = {"licensee": q["lic"], "expires": q["exp"], "sig": q["sig"], missing: None}
        with pytest.raises(Forbidden):
            signing.verify(KEY, model=ARGS["model"], commit=ARGS["commit"], path=ARGS["path"], now=NOW, **kw)
    with pytest.raises(Forbidden):
        signing.verify(KEY, model=ARGS["model"], commit=ARGS["commit"], path=ARGS["path"], licensee="prn_1",
                       expires="-5", sig=q["sig"], now=NOW)


def test_keys_are_domain_separated() -> None:
    assert signing.signing_key(b"s") != signing.fingerprint_secret(b"s")
