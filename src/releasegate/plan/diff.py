"""What changes between two release plans, in words a release manager can review before applying.

Stages are matched by name (not position), gate criteria and halt rules by what they are
about (``eval:cyber-uplift/accuracy``, ``flag_rate:moderation``), so a reordered or inserted
item shows as one change rather than a cascade.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from releasegate.plan.schema import Plan
from releasegate.plan.validate import audience_reductions, join_path, stage_by_name

ChangeKind = Literal["added", "removed", "changed"]

# Top-level plan fields holding named entries, compared entry by entry.
_NAMED = ("versions", "aliases", "use_cases", "tiers", "roles", "terms", "detectors")


@dataclass(frozen=True)
class Change:
    """One difference: ``path`` uses the names of things (``stages[internal].limits.rpm``)."""

    kind: ChangeKind
    path: str
    old: Any = None
    new: Any = None

    def render(self) -> str:
        if self.kind == "added":
            return f"added {self.path}" + ("" if isinstance(self.new, dict | list) else f": {_fmt(self.new)}")
        if self.kind == "removed":
            return f"removed {self.path}"
        return f"changed {self.path}: {_fmt(self.old)} -> {_fmt(self.new)}"


@dataclass(frozen=True)
class PlanDiff:
    changes: list[Change] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.changes

    def render(self) -> list[str]:
        """One line per change, in plan order."""
        return [change.render() for change in self.changes]


def _fmt(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, str):
        return value if value else "''"
    return repr(value) if not isinstance(value, dict) else "{...}"


def _item_key(item: dict[str, Any]) -> str:
    """A stable name for a gate criterion or halt rule: its kind plus what it is about."""
    kind = next(iter(item))
    spec = item[kind] or {}
    if kind == "eval":
        about = f"{spec.get('suite')}/{spec.get('metric')}"
        if spec.get("version", "this") != "this":
            about += f"@{spec['version']}"
        return f"{kind}:{about}"
    if kind == "flag_rate":
        return f"{kind}:{spec.get('detector')}"
    return kind


def _keyed(items: list[Any], key_of: Any) -> dict[str, Any]:
    """Items by key; a repeated key gets ``#2``, ``#3``... in order of appearance."""
    out: dict[str, Any] = {}
    for item in items:
        key = base = key_of(item)
        n = 1
        while key in out:
            n += 1
            key = f"{base}#{n}"
        out[key] = item
    return out


def _compare(path: str, old: Any, new: Any, out: list[Change]) -> None:
    """Append the differences between two JSON-like values, descending into mappings."""
    if old == new:
        return
    if old is None and isinstance(new, dict):
        out.append(Change("added", path, None, new))
        return
    if new is None and isinstance(old, dict):
        out.append(Change("removed", path, old, None))
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key in old:
            if key not in new:
                out.append(Change("removed", join_path(path, str(key)), old[key], None))
        for key in new:
            child = join_path(path, str(key))
            if key not in old:
                out.append(Change("added", child, None, new[key]))
            else:
                _compare(child, old[key], new[key], out)
        return
    out.append(Change("changed", path, old, new))


def _compare_items(path: str, old: list[Any], new: list[Any], out: list[Change]) -> None:
    old_k, new_k = _keyed(old, _item_key), _keyed(new, _item_key)
    for key in old_k:
        if key not in new_k:
            out.append(Change("removed", f"{path}[{key}]", old_k[key], None))
    for key, item in new_k.items():
        if key not in old_k:
            out.append(Change("added", f"{path}[{key}]", None, item))
        else:
            kind = next(iter(item))
            _compare(f"{path}[{key}]", old_k[key][kind], item[kind], out)


def _compare_stage(path: str, old: dict[str, Any], new: dict[str, Any], out: list[Change]) -> None:
    for name in new:
        if name in ("gate", "halt_on"):
            _compare_items(f"{path}.{name}", old.get(name, []), new[name], out)
        elif name == "weights" and old.get(name) and new[name]:
            weights_old, weights_new = dict(old[name]), dict(new[name])
            form_old = _keyed(weights_old.pop("form", []), lambda f: f["name"])
            form_new = _keyed(weights_new.pop("form", []), lambda f: f["name"])
            _compare(f"{path}.weights", weights_old, weights_new, out)
            _compare(f"{path}.weights.form", form_old, form_new, out)
        else:
            _compare(f"{path}.{name}", old.get(name), new[name], out)


def diff_plans(old: Plan | None, new: Plan) -> PlanDiff:
    """Every change from ``old`` to ``new``; with no ``old``, everything in ``new`` is added."""
    before = old.model_dump(mode="json") if old is not None else {}
    after = new.model_dump(mode="json")
    out: list[Change] = []
    for name in ("model", "description"):
        if old is None:
            out.append(Change("added", name, None, after[name]))
        else:
            _compare(name, before[name], after[name], out)
    for name in _NAMED:
        _compare(name, before.get(name, {}), after[name], out)

    old_stages = {s["name"]: s for s in before.get("stages", [])}
    new_stages = {s["name"]: s for s in after["stages"]}
    for name, stage in old_stages.items():
        if name not in new_stages:
            out.append(Change("removed", f"stages[{name}]", stage, None))
    for name, stage in new_stages.items():
        if name not in old_stages:
            out.append(Change("added", f"stages[{name}]", None, stage))
        else:
            _compare_stage(f"stages[{name}]", old_stages[name], stage, out)
    kept_old = [n for n in old_stages if n in new_stages]
    kept_new = [n for n in new_stages if n in old_stages]
    if kept_old != kept_new:
        out.append(Change("changed", "stages (order)", kept_old, kept_new))
    return PlanDiff(out)


def live_stage_impact(old: Plan, new: Plan, live_stage_name: str) -> list[str]:
    """Why applying ``new`` would remove the live stage or cut its current audience (empty: safe)."""
    before = stage_by_name(old, live_stage_name)
    after = stage_by_name(new, live_stage_name)
    if after is None:
        return [f"stage '{live_stage_name}' is live and the new plan removes it"]
    if before is None:
        return []
    reasons = [
        f"live stage '{live_stage_name}': {reason}"
        for reason in audience_reductions(before.audience, after.audience, cap_added=True)
    ]
    reasons += [
        f"live stage '{live_stage_name}': channel '{channel}' closed"
        for channel in before.channels
        if channel not in after.channels
    ]
    return reasons


__all__ = ["Change", "ChangeKind", "PlanDiff", "diff_plans", "live_stage_impact"]
