"""The demo release: the bundled example plan, deployers in different tiers, keys, a first promotion."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from releasegate.plan.loader import load_plan_file
from releasegate.services import applications, deployers, keys, plans, principals, rollouts
from releasegate.services.context import Actor, ServiceContext

RELEASE_MANAGER = Actor(name="demo:alice@acme.example", role="admin", email="alice@acme.example")
REVIEWER = Actor(name="demo:rita@acme.example", role="reviewer", email="rita@acme.example")

DEMO_DEPLOYERS = (
    # name, e-mail, use cases, tier, waitlisted
    ("acme-internal", "ml-platform@acme.example", ["customer-support", "code-assistant"], "internal", False),
    ("bluebank", "ai@bluebank.example", ["customer-support"], "trusted-partner", False),
    ("redteam-co", "lead@redteam.example", ["security-research"], "trusted-partner", False),
    ("shopco", "dev@shopco.example", ["customer-support"], "public", True),
)


def example_plan_path() -> Path:
    return Path(str(resources.files("releasegate") / "examples" / "atlas" / "plan.yaml"))


def setup_demo(ctx: ServiceContext, *, base_url: str) -> dict[str, Any]:
    """Populate an empty store with the demo release; returns what to show a newcomer."""
    admin = principals.bootstrap_admin(ctx, email="alice@acme.example")
    admin_token = admin["token"] if admin else "(exists already)"
    path = example_plan_path()
    loaded = load_plan_file(path)
    applied = plans.apply(ctx, RELEASE_MANAGER, loaded)
    model = loaded.plan.model
    issued: list[dict[str, str]] = []
    for name, email, use_cases, tier, waitlisted in DEMO_DEPLOYERS:
        d = deployers.create(ctx, REVIEWER, name=name, contact_email=email)
        a = applications.submit(ctx, Actor(name=email, role="deployer", deployer_id=d["id"]), deployer=d["id"], model=model,
                                use_cases=use_cases, description=f"{name} demo application")
        applications.approve(ctx, REVIEWER, a["id"], tier=tier, waitlist=waitlisted, reason="demo vetting")
        k = keys.issue(ctx, REVIEWER, deployer=d["id"], model=model, use_case=use_cases[0], name="demo")
        issued.append({"deployer": name, "use_case": use_cases[0], "key": k["key"], "id": k["id"]})
    newco = deployers.create(ctx, REVIEWER, name="newco", contact_email="founder@newco.example")
    applications.submit(ctx, Actor(name="founder@newco.example", role="deployer", deployer_id=newco["id"]), deployer=newco["id"],
                        model=model, use_cases=["code-assistant"], description="Coding help inside our IDE plugin")
    rollouts.transition(ctx, RELEASE_MANAGER, model, "v1", "promote", reason="start the internal stage")
    rollouts.transition(ctx, RELEASE_MANAGER, model, "v2", "promote", reason="canary internally beside v1")
    status = [r for r in rollouts.status(ctx, RELEASE_MANAGER, model) if "version" in r]
    creds = {"admin_token": admin_token, "keys": issued}
    creds_path = ctx.settings.data_dir.parent / "credentials.json"
    creds_path.touch(mode=0o600)
    creds_path.write_text(json.dumps(creds, indent=2))
    return {
        "model": model, "revision": applied.revision, "plan_path": str(path), "status": status,
        "deployers": deployers.list_all(ctx, REVIEWER), "admin_token": admin_token, "keys": issued, "base_url": base_url,
        "extra_lines": gateway_lines(base_url, model, issued),
    }


MOCK_UPSTREAM_PORT = 8001  # where the example plan's versions are served


def gateway_lines(base_url: str, model: str, issued: list[dict[str, str]]) -> list[str]:
    """How to call the gateway with a demo key: an ``openai`` snippet and a curl line."""
    key = next((k["key"] for k in issued if k["deployer"] == "acme-internal"), issued[0]["key"] if issued else "rgk_…")
    refused = next((k for k in issued if k["deployer"] == "bluebank"), None)
    lines = [
        "",
        f"Gateway (OpenAI-compatible): {base_url}/v1   (answers come from the MOCK model server on "
        f"127.0.0.1:{MOCK_UPSTREAM_PORT}: an echo, not a model)",
        "  python - <<'EOF'",
        "  from openai import OpenAI",
        f"  client = OpenAI(base_url='{base_url}/v1', api_key='{key}')",
        f"  r = client.chat.completions.create(model='{model}', messages=[{{'role': 'user', 'content': 'hello'}}])",
        "  print(r.choices[0].message.content)",
        "  EOF",
        f"  curl -s {base_url}/v1/chat/completions -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' "
        f"-d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"hello\"}}]}}'",
    ]
    if refused is not None:
        lines.append("  # bluebank is not in the 'internal' stage yet: the same call with its key is refused (403 not_in_audience)")
    return lines


DEMO_UPSTREAM_KEY_ENV = "ATLAS_UPSTREAM_KEY"


def start_mock_upstream(port: int = MOCK_UPSTREAM_PORT) -> Any:
    """Run the MOCK model server in a background thread (a ServerThread; ``.stop()`` it), or None if the port is taken.

    The mock requires the upstream key the example plan names (``ATLAS_UPSTREAM_KEY``, set to a
    demo value when unset), so every answer shows that the gateway injected it.
    """
    import os

    from releasegate.mockupstream import create_mock_upstream
    from releasegate.testing.server import ServerThread

    api_key = os.environ.setdefault(DEMO_UPSTREAM_KEY_ENV, "demo-upstream-key")
    server = ServerThread(create_mock_upstream(name="releasegate-demo-MOCK", api_key=api_key), "127.0.0.1", port)
    try:
        server.start()
    except OSError:
        return None
    return server
