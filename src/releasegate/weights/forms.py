"""The access-request form: validate submitted values against the plan's declared fields, and vet them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from releasegate.errors import InvalidInput
from releasegate.plan.schema import FormField, WeightsPolicy

_ISO_TEXT = """
AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ
CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO
FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE
JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO
MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW
PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM
TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW
"""
ISO_COUNTRIES = frozenset(_ISO_TEXT.split())

_TRUE = frozenset({"true", "yes", "1", "on", "y"})
_FALSE = frozenset({"false", "no", "0", "off", "n", ""})
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MAX_TEXT = 500
MAX_DECLARED_USE = 4000
ORGANISATION_FIELDS = ("organisation", "organization", "company", "affiliation")


def _one(f: FormField, raw: Any) -> tuple[Any, str | None]:
    """(clean value, problem) for one submitted value."""
    if f.type == "checkbox":
        if isinstance(raw, bool):
            value = raw
        elif isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
            value = raw.strip().lower() in _TRUE
        else:
            return None, "must be true or false"
        if f.required and not value:
            return value, "must be ticked (true)"
        return value, None
    if not isinstance(raw, str):
        return None, "must be text"
    text = raw.strip()
    if not text:
        return None, "is required" if f.required else None
    if f.type == "text":
        return text, None if len(text) <= MAX_TEXT else f"is longer than {MAX_TEXT} characters"
    if f.type == "select":
        options = f.options or []
        return text, None if text in options else f"must be one of: {', '.join(options)}"
    if f.type == "country":
        code = text.upper()
        return code, None if code in ISO_COUNTRIES else "must be an ISO 3166-1 alpha-2 country code such as DE or US"
    if f.type == "date":
        if not _DATE_RE.match(text):
            return text, "must be a date written YYYY-MM-DD"
        try:
            date.fromisoformat(text)
        except ValueError:
            return text, "is not a real calendar date"
        return text, None
    return None, f"has unknown type {f.type}"  # pragma: no cover - the schema forbids it


def validate_fields(form: list[FormField], submitted: dict[str, Any], declared_use: str) -> tuple[dict[str, Any], str]:
    """Clean values for every declared field, and the declared use; InvalidInput naming every problem."""
    problems: list[dict[str, str]] = []
    by_name = {f.name: f for f in form}
    for name in submitted:
        if name not in by_name:
            allowed = ", ".join(by_name) or "none"
            problems.append({"field": name, "message": f"is not a field of this form (fields: {allowed})"})
    clean: dict[str, Any] = {}
    for f in form:
        if f.name not in submitted or submitted[f.name] is None:
            if f.required:
                problems.append({"field": f.name, "message": "is required"})
            continue
        value, problem = _one(f, submitted[f.name])
        if problem:
            problems.append({"field": f.name, "message": problem})
        elif value is not None:
            clean[f.name] = value
    use = (declared_use or "").strip()
    if not use:
        problems.append({"field": "declared_use", "message": "is required: say what you will use the weights for"})
    elif len(use) > MAX_DECLARED_USE:
        problems.append({"field": "declared_use", "message": f"is longer than {MAX_DECLARED_USE} characters"})
    if problems:
        raise InvalidInput("the access request is not valid: " + "; ".join(f"{p['field']} {p['message']}" for p in problems),
                           code="invalid_request_form", details={"problems": problems})
    return clean, use


def organisation_of(fields: dict[str, Any]) -> str | None:
    for name in ORGANISATION_FIELDS:
        value = fields.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def country_of(form: list[FormField], fields: dict[str, Any]) -> str | None:
    for f in form:
        if f.type == "country" and isinstance(fields.get(f.name), str):
            return str(fields[f.name])
    return None


def domain_matches(email: str | None, allowed: list[str]) -> str | None:
    """The allowlist entry ``email``'s domain matches: ``.edu`` is a suffix, ``x.org`` is x.org or a subdomain."""
    if not email or "@" not in email:
        return None
    domain = email.rsplit("@", 1)[1].lower().rstrip(".")
    for entry in allowed:
        e = entry.lower().strip()
        if not e:
            continue
        if e.startswith("."):
            if domain.endswith(e):
                return entry
        elif domain == e or domain.endswith("." + e):
            return entry
    return None


@dataclass
class Vetting:
    """The outcome of the automatic rules and why: ``approved``, ``pending`` (review queue) or ``rejected``."""

    outcome: str
    checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        return [c["detail"] for c in self.checks if not c["passed"]]

    def to_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "checks": self.checks}


def vet(policy: WeightsPolicy, *, email: str | None, country: str | None, organisation_tier: str | None,
        previously_revoked: bool) -> Vetting:
    """Apply the plan's vetting rules. Auto-approval needs an identity rule to match (e-mail domain or an
    organisation admitted as a deployer in a listed tier) and the country not to be blocked."""
    v = Vetting(outcome=policy.vetting.otherwise if policy.vetting.otherwise == "reject" else "pending")
    auto = policy.vetting.auto_approve
    if previously_revoked:
        v.checks.append({"rule": "history", "passed": False, "detail": "an earlier grant was revoked, so a reviewer decides"})
        v.outcome = "pending"
        return v
    if auto is None:
        v.checks.append({"rule": "auto_approve", "passed": False, "detail": "the plan approves no request automatically"})
        return v
    v.checks.append({"rule": "required_fields", "passed": True, "detail": "every required field is present and valid"})
    identity = False
    if auto.email_domains:
        hit = domain_matches(email, auto.email_domains)
        identity |= hit is not None
        v.checks.append({"rule": "email_domains", "passed": hit is not None,
                         "detail": f"e-mail domain matches {hit}" if hit else f"e-mail {email or '(none)'} is not in an approved domain"})
    if auto.admitted_tiers:
        ok = organisation_tier is not None and organisation_tier in auto.admitted_tiers
        identity |= ok
        v.checks.append({"rule": "admitted_tiers", "passed": ok,
                         "detail": f"organisation is an admitted deployer in tier {organisation_tier}" if ok
                         else f"organisation is not an admitted deployer in {', '.join(auto.admitted_tiers)}"})
    if not auto.email_domains and not auto.admitted_tiers:
        v.checks.append({"rule": "identity", "passed": False, "detail": "no identity rule (email_domains, admitted_tiers) is configured"})
    country_ok = True
    if auto.countries_not:
        country_ok = country is not None and country not in {c.upper() for c in auto.countries_not}
        v.checks.append({"rule": "countries_not", "passed": country_ok,
                         "detail": f"country {country} is not blocked" if country_ok
                         else f"country {country or '(not given)'} is not approved automatically"})
    if identity and country_ok:
        v.outcome = "approved"
    return v
