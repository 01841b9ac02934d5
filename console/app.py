"""The console's aiohttp routes: `make_app` for a console of its own, `mount` to add them to
another application (the stack's HTTP port)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from pathlib import Path

import jinja2
from aiohttp import web
from google.protobuf import timestamp_pb2
from mirror.v1 import gateway_pb2

from console.config import ConsoleConfig
from console.policyform import describe_trigger
from console.sessions import SessionStore
from console.throttle import SignInThrottle
from console.views import auth, connect, keys, mirrors, policies, registries
from console.views.policies import action_name, state_name, trigger_name
from console.web import CONSOLE, Console

HERE = Path(__file__).resolve().parent


def _when(ts: timestamp_pb2.Timestamp | None) -> str:
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        return ""
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _poll_when(poll: gateway_pb2.Poll) -> str:
    """When a poll ended, or since when it runs (the last poll may still be under way)."""
    if poll.end_time.seconds or poll.end_time.nanos:
        return _when(poll.end_time)
    return "running since " + _when(poll.start_time)


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["poll_when"] = _poll_when
    env.filters["bytes"] = _bytes
    env.filters["run_state"] = state_name
    env.filters["run_action"] = action_name
    env.filters["run_trigger"] = trigger_name
    env.filters["trigger"] = describe_trigger
    env.globals["now"] = lambda: datetime.now(UTC)
    return env


def mount(app: web.Application, cfg: ConsoleConfig) -> web.Application:
    """Add the console's pages at `/` to `app` (which may serve other paths of its own)."""
    console = Console(
        cfg=cfg,
        sessions=SessionStore(cfg.idle_timeout_s, cfg.max_age_s, cfg.max_sessions),
        templates=templates(),
        login_key=secrets.token_bytes(32),
        throttle=SignInThrottle(cfg.sign_in_attempts, cfg.sign_in_window_s),
    )
    app[CONSOLE] = console

    async def close_sessions(_: web.Application) -> None:
        await console.sessions.close()

    async def closing(_: web.Application) -> None:
        console.closing.set()

    app.on_shutdown.append(closing)
    app.on_cleanup.append(close_sessions)
    r = app.router
    r.add_get("/", auth.index)
    r.add_get("/login", auth.login_form)
    r.add_post("/login", auth.login)
    r.add_post("/logout", auth.logout)
    r.add_get("/registries", registries.list_registries)
    r.add_get("/registries/new", registries.new_registry)
    r.add_post("/registries", registries.create_registry)
    r.add_get("/registries/{name}", registries.show_registry)
    r.add_get("/registries/{name}/edit", registries.edit_registry)
    r.add_post("/registries/{name}", registries.update_registry)
    r.add_post("/registries/{name}/connect", registries.connect)
    r.add_get("/registries/{name}/delete", registries.confirm_delete)
    r.add_post("/registries/{name}/delete", registries.delete_registry)
    r.add_get("/repositories/{endpoint}", mirrors.open_repository)
    r.add_get("/repositories/{endpoint}/{repository:.+}", mirrors.repository)
    r.add_get("/mirrors/new", mirrors.new_mirror)
    r.add_post("/mirrors", mirrors.create_mirror)
    r.add_post("/mirrors/connect", mirrors.connect_new_mirror)
    r.add_get("/connect/{id}", connect.stream)
    r.add_post("/ui/rule", mirrors.check_rule)
    r.add_post("/ui/criteria", mirrors.build_rule)
    r.add_get("/ui/criteria/row", mirrors.criteria_row)
    r.add_post("/ui/tag-preview", mirrors.tag_preview)
    r.add_get("/policies", policies.list_policies)
    r.add_get("/policies/{id}", policies.show_policy)
    r.add_get("/policies/{id}/live", policies.live_runs)
    r.add_post("/policies/{id}/enable", policies.enable_policy)
    r.add_post("/policies/{id}/disable", policies.disable_policy)
    r.add_post("/policies/{id}/apply", policies.apply_policy)
    r.add_get("/policies/{id}/edit", policies.edit_policy)
    r.add_post("/policies/{id}/edit", policies.update_policy)
    r.add_get("/policies/{id}/delete", policies.confirm_delete)
    r.add_post("/policies/{id}/delete", policies.delete_policy)
    r.add_get("/keys", keys.list_keys)
    r.add_post("/keys", keys.create_key)
    r.add_post("/keys/{name}/delete", keys.delete_key)
    r.add_static("/static/", HERE / "static", append_version=False)
    return app


def make_app(cfg: ConsoleConfig) -> web.Application:
    """A console of its own (`python -m console`)."""
    # Bounded uploads: a CA certificate is the largest thing a form sends.
    return mount(web.Application(client_max_size=1 << 20), cfg)
