"""The console's pages and actions at ``/ui``: server-rendered, readable without JavaScript.

Every action calls the same service as its API route, as the signed-in person (``Caller``), so it is
audited the same way; a permission the person lacks is refused and audited as denied, as on the API,
and the page does not offer the action in the first place (:meth:`Viewer.can`).
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from keybroker import __version__
from keybroker.api.deps import actor_of
from keybroker.api.services import Services
from keybroker.appraisal import trial
from keybroker.appraisal.decision import Decision
from keybroker.appraisal.input import appraisal_input
from keybroker.appraisal.policy import TransferPolicyBody
from keybroker.appraisal.registry import REGISTRY
from keybroker.audit import log as audit
from keybroker.audit.inputs import AppraisalInputs, RecordedAttempt
from keybroker.auth.caller import Caller
from keybroker.auth.oidc import Identity
from keybroker.auth.roles import BUILTIN
from keybroker.auth.tokens import Principal
from keybroker.errors import (
    BackendUnavailable,
    CollateralError,
    Conflict,
    Forbidden,
    InvalidInput,
    KeybrokerError,
    NotFound,
    Sealed,
    Unauthenticated,
)
from keybroker.keys.service import CertificateRequest, CreateKeyRequest
from keybroker.limits import client_key
from keybroker.resources.service import ResourceInfo, resource_path
from keybroker.store.models import AuditRecord, BearerToken, Key, TransferPolicy
from keybroker.tee.verifier import NO_REPORT_DATA, Verifier, evidence_readings
from keybroker.tee.x509 import pem_certificates_and_crls
from keybroker.ui import security
from keybroker.ui.forms import Form, StrictFormRoute, form_of
from keybroker.ui.sessions import PendingSignIn, Session, SessionStore

router = APIRouter(prefix="/ui", route_class=StrictFormRoute, include_in_schema=False)

_T = TypeVar("_T")
_UUID = re.compile(r"^[0-9a-fA-F-]{36}$")
_DEV_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
PAGE_SIZE = 50

_env = Environment(
    loader=PackageLoader("keybroker.ui", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _svc(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def _sessions(request: Request) -> SessionStore:
    store: SessionStore = request.app.state.console_sessions
    return store


# --- who is looking ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Viewer:
    session: Session
    principal: Principal
    csrf: str

    @property
    def actor(self) -> str:
        return actor_of(self.principal)

    def can(self, permission: str) -> bool:
        return self.principal.allows(permission)


class SignInNeeded(Unauthenticated):
    """No session (or it ended): GET pages send the browser to the sign-in page."""


def viewer(request: Request) -> Viewer:
    secret = request.cookies.get(security.SESSION_COOKIE)
    session = _sessions(request).get(secret)
    if session is None or secret is None:
        raise SignInNeeded("you are not signed in, or your session ended: sign in again")
    principal = Principal(
        subject=session.subject,
        permissions=frozenset(),
        roles=frozenset(session.roles),
        source=session.source,
        email=session.email,
    )
    return Viewer(session, _svc(request).roles.expand(principal), security.csrf_token(secret))


def _audit_failure(
    svc: Services, actor: str, action: str, exc: KeybrokerError, object_id: str | None
) -> None:
    outcome = "denied" if exc.status in (401, 403) else "failed"
    try:
        with svc.db.session() as s:
            audit.append(
                s, actor=actor, action=action, object_id=object_id, outcome=outcome, reason=exc.detail
            )
    except KeybrokerError:
        pass  # sealed or the chain alarm: the refusal itself stands


def act(
    request: Request,
    v: Viewer,
    action: str,
    permission: str,
    run: Callable[[Caller], _T],
    *,
    object_id: str | None = None,
) -> _T:
    """Run a service call as the viewer if they hold ``permission``; a refusal or failure is audited
    under ``action`` as the API's middleware audits a failed call."""
    svc = _svc(request)
    try:
        if not v.can(permission):
            raise Forbidden(f"you lack the permission {permission}", permission=permission)
        return run(Caller(v.actor))
    except KeybrokerError as exc:
        _audit_failure(svc, v.actor, action, exc, object_id)
        raise


# --- rendering ---------------------------------------------------------------------------------------


def _nav(v: Viewer | None) -> list[tuple[str, str]]:
    if v is None:
        return []
    items: list[tuple[str, str, tuple[str, ...]]] = [
        ("Keys", "/ui/keys", ("keys:search",)),
        ("Policies", "/ui/policies", ("key_transfer_policies:search", "resources:write")),
        ("Audit", "/ui/audit", ("audit:read",)),
        ("Attestation", "/ui/attestation", ("audit:read",)),
        ("Tokens", "/ui/tokens", ("tokens:search",)),
        ("Roles", "/ui/roles", ("roles:search",)),
        ("System", "/ui/system", ()),
    ]
    return [(label, href) for label, href, perms in items if not perms or any(v.can(p) for p in perms)]


def _ago(value: datetime | None, now: datetime | None = None) -> str:
    if value is None:
        return ""
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    delta = (now or datetime.now(UTC)) - value
    return _span(delta) + " ago" if delta >= timedelta(0) else "in " + _span(-delta)


def _span(delta: timedelta) -> str:
    """A duration in its two largest units: ``3d 4h``, ``2h 5m``, ``4m 10s``, ``9s``."""
    days, rest = divmod(int(delta.total_seconds()), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {seconds}s"
    return f"{seconds}s"


def _when(value: datetime | None) -> str:
    if value is None:
        return ""
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


_env.filters["ago"] = _ago
_env.filters["when"] = _when
_env.filters["pretty"] = lambda value: json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def page(
    request: Request, template: str, v: Viewer | None, status: int = 200, **context: Any
) -> HTMLResponse:
    svc = _svc(request)
    body = _env.get_template(template).render(
        v=v,
        nav=_nav(v),
        here=request.url.path,
        dev=svc.settings.dev,
        sealed=svc.barrier.sealed,
        version=__version__,
        **context,
    )
    return HTMLResponse(body, status_code=status)


def render_error(request: Request, exc: KeybrokerError) -> HTMLResponse:
    if isinstance(exc, Unauthenticated) and request.method == "GET":
        return RedirectResponse("/ui/login", status_code=303)  # type: ignore[return-value]
    try:
        v: Viewer | None = viewer(request)
    except (KeybrokerError, SQLAlchemyError):  # signed out, or the database is away (the error itself)
        v = None
    return page(request, "error.html", v, status=exc.status, title=exc.title, detail=exc.detail)


def _see(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


# --- sign-in ----------------------------------------------------------------------------------------


def _loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _dev_login_allowed(request: Request) -> bool:
    """The dev login: only under --dev, and only to a browser on this machine."""
    return _svc(request).settings.dev and _loopback(request)


@router.get("/login")
def login_page(request: Request) -> Response:
    svc = _svc(request)
    login_secret = request.cookies.get(security.LOGIN_COOKIE) or security.new_secret()
    response = page(
        request,
        "login.html",
        None,
        oidc=svc.oidc is not None,
        issuer=svc.oidc.issuer if svc.oidc is not None else None,
        dev_login=_dev_login_allowed(request),
        builtin_roles=list(BUILTIN),
        csrf=security.csrf_token(login_secret),
    )
    security.set_login_cookie(response, login_secret)
    return response


def _redirect_uri(request: Request, svc: Services) -> str:
    assert svc.oidc is not None
    return svc.oidc.conf.redirect_uri or f"{request.url.scheme}://{request.url.netloc}/ui/auth/callback"


@router.get("/auth/oidc")
def oidc_start(request: Request) -> Response:
    """Start an OpenID sign-in: state, nonce and PKCE verifier kept for this browser, then off to
    the provider."""
    svc = _svc(request)
    if svc.oidc is None:
        raise NotFound("no OpenID provider is configured ([oidc] in the configuration)")
    login_secret = security.new_secret()
    pending = PendingSignIn(
        state=secrets.token_urlsafe(32),
        nonce=secrets.token_urlsafe(32),
        code_verifier=secrets.token_urlsafe(64),
    )
    url = svc.oidc.authorization_url(
        redirect_uri=_redirect_uri(request, svc),
        state=pending.state,
        nonce=pending.nonce,
        code_verifier=pending.code_verifier,
    )
    _sessions(request).begin(login_secret, pending)
    response = _see(url)
    security.set_login_cookie(response, login_secret)
    return response


def _signed_in(request: Request, secret: str) -> Response:
    """A page that moves on to the console by itself (a same-site navigation, so the SameSite=Strict
    session cookie is sent: a redirect chain that began at the provider would not send it)."""
    response = page(request, "signed_in.html", None)
    security.set_session_cookie(response, secret)
    security.clear_login_cookie(response)
    return response


@router.get("/auth/callback")
def oidc_callback(
    request: Request,
    code: str | None = None,
    state: str | None = None,
    error: str | None = None,
    error_description: str | None = None,
    iss: str | None = None,
) -> Response:
    svc = _svc(request)
    if svc.oidc is None:
        raise NotFound("no OpenID provider is configured")
    client = client_key(request.client.host if request.client else None)
    try:
        pending = _sessions(request).take_pending(request.cookies.get(security.LOGIN_COOKIE), state)
        if iss is not None and iss != svc.oidc.issuer:  # RFC 9207: the response came from another issuer
            raise Unauthenticated(f"the sign-in response names another issuer ({iss[:128]!r})")
        if error is not None:
            raise Unauthenticated(
                f"the OpenID provider refused the sign-in: {error[:64]}"
                + (f" ({error_description[:256]})" if error_description else "")
            )
        if not code:
            raise Unauthenticated("the OpenID provider sent no authorization code")
        identity = svc.oidc.exchange(
            code=code,
            redirect_uri=_redirect_uri(request, svc),
            code_verifier=pending.code_verifier,
            nonce=pending.nonce,
        )
    except KeybrokerError as exc:
        _audit_failure(svc, "anonymous", "console.login", exc, None)
        response = page(
            request, "error.html", None, status=exc.status, title="Sign-in failed", detail=exc.detail
        )
        security.clear_login_cookie(response)
        return response
    return _signed_in(request, _sessions(request).create("oidc", identity, client=client))


@router.post("/auth/dev")
def dev_login(request: Request) -> Response:
    """The dev login (``--dev``, a browser on this machine): a name and the roles to try."""
    if not _dev_login_allowed(request):
        raise Forbidden("the dev login is only for a browser on this machine, under keybroker serve --dev")
    form = form_of(request).only({"name", "roles"}, lists={"roles"})
    name = form.get("name") or "dev"
    if not _DEV_NAME.match(name):
        raise InvalidInput("name: 1 to 64 characters of A-Z a-z 0-9 _ . @ -", field="name")
    roles = form.many("roles")
    unknown = _svc(request).roles.unknown(roles)
    if unknown:
        raise InvalidInput(f"no role {unknown[0]!r}", field="roles")
    client = client_key(request.client.host if request.client else None)
    identity = Identity(subject=name, email=None, name=name, roles=tuple(sorted(set(roles))))
    secret = _sessions(request).create("dev", identity, client=client)
    response = _see("/ui/")
    security.set_session_cookie(response, secret)
    security.clear_login_cookie(response)
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    form_of(request).only(set())
    _sessions(request).end(request.cookies.get(security.SESSION_COOKIE))
    response = _see("/ui/login")
    security.clear_session_cookie(response)
    return response


@router.get("/")
def home(request: Request) -> Response:
    v = viewer(request)
    if _svc(request).barrier.sealed or not v.can("keys:search"):
        return _see("/ui/system")
    return _see("/ui/keys")


# --- static files -----------------------------------------------------------------------------------

_STATIC = {"htmx.min.js": "text/javascript", "console.css": "text/css", "console.js": "text/javascript"}


@router.get("/static/{name}")
def static(name: str) -> Response:
    media = _STATIC.get(name)
    if media is None:
        raise NotFound(f"no static file {name!r}")
    from importlib.resources import files

    data = files("keybroker.ui").joinpath("static", name).read_bytes()
    return Response(data, media_type=media, headers={"Cache-Control": "public, max-age=3600"})


# --- keys ----------------------------------------------------------------------------------------------


def _policies(request: Request, v: Viewer) -> list[TransferPolicy]:
    if not v.can("key_transfer_policies:search"):
        return []
    return act(request, v, "policy.search", "key_transfer_policies:search", _svc(request).keys.list_policies)


@router.get("/keys")
def keys_page(request: Request, algorithm: str | None = None, policy: str | None = None) -> Response:
    v = viewer(request)
    svc = _svc(request)
    algorithm = (algorithm or "").upper() or None
    if algorithm not in (None, "AES", "RSA", "EC"):
        raise InvalidInput("algorithm: AES, RSA or EC", field="algorithm")
    policy = policy or None
    if policy is not None and not _UUID.match(policy):
        raise InvalidInput("policy: a policy id", field="policy")
    rows = act(
        request,
        v,
        "key.search",
        "keys:search",
        lambda c: svc.keys.list_keys(c, {"algorithm": algorithm, "transfer_policy_id": policy}),
    )
    return page(
        request,
        "keys.html",
        v,
        keys=rows,
        algorithm=algorithm or "",
        policy=policy or "",
        policies=_policies(request, v),
    )


@router.get("/keys/new")
def key_new_page(request: Request) -> Response:
    v = viewer(request)
    if not (v.can("keys:create") or v.can("keys:register")):
        raise Forbidden("you lack the permissions keys:create and keys:register")
    return page(request, "key_new.html", v, policies=_policies(request, v), error=None, form={})


def _int_field(form: Form, name: str) -> int | None:
    value = form.get(name)
    if value is None:
        return None
    if not value.isdigit() or len(value) > 6:
        raise InvalidInput(f"{name}: a whole number", field=name)
    return int(value)


@router.post("/keys")
def key_create(request: Request) -> Response:
    v = viewer(request)
    svc = _svc(request)
    form = form_of(request).only(
        {
            "mode",
            "algorithm",
            "key_length",
            "curve_type",
            "key_string",
            "kmip_key_id",
            "label",
            "usage",
            "transfer_policy_id",
        }
    )
    mode = form.get("mode") or "generate"
    if mode not in ("generate", "import", "register"):
        raise InvalidInput("mode: generate, import or register", field="mode")
    try:
        req = CreateKeyRequest(
            algorithm=form.get("algorithm") or "",
            key_length=_int_field(form, "key_length"),
            curve_type=form.get("curve_type"),
            key_string=form.get("key_string") if mode == "import" else None,
            kmip_key_id=form.get("kmip_key_id") if mode == "register" else None,
            label=form.get("label"),
            usage=form.get("usage"),
            transfer_policy_id=form.get("transfer_policy_id"),
        )
        if mode == "import" and not req.key_string:
            raise InvalidInput("key_string: paste the key (PEM, or base64 for AES)", field="key_string")
        if mode == "register" and not req.kmip_key_id:
            raise InvalidInput("kmip_key_id: the key's id in the external key manager", field="kmip_key_id")
        needed = "keys:create" if mode == "generate" else "keys:register"
        row = act(request, v, "key.create", needed, lambda c: svc.keys.create_key(c, req))
    except (InvalidInput, NotFound) as exc:
        shown = {
            k: form.raw(k)
            for k in (
                "mode",
                "algorithm",
                "key_length",
                "curve_type",
                "kmip_key_id",
                "label",
                "usage",
                "transfer_policy_id",
            )
        }
        return page(
            request,
            "key_new.html",
            v,
            status=exc.status,
            policies=_policies(request, v),
            error=exc.detail,
            form=shown,
        )
    return _see(f"/ui/keys/{row.id}")


def _transfers(request: Request, v: Viewer, key_id: str) -> list[AuditRecord] | None:
    if not v.can("audit:read"):
        return None
    with _svc(request).db.session() as s:
        q = (
            select(AuditRecord)
            .where(AuditRecord.action == "key.transfer", AuditRecord.object_id == key_id)
            .order_by(AuditRecord.seq.desc())
            .limit(PAGE_SIZE)
        )
        return list(s.scalars(q))


@router.get("/keys/{key_id}")
def key_page(request: Request, key_id: str) -> Response:
    v = viewer(request)
    svc = _svc(request)
    row = act(
        request, v, "key.retrieve", "keys:retrieve", lambda c: svc.keys.get_key(c, key_id), object_id=key_id
    )
    cert_pem = None
    with svc.db.session() as s:
        from keybroker.store.models import Certificate

        crow = s.get(Certificate, row.id)
    if crow is not None:
        cert_pem = svc.keys.certificate_chain_pem(crow)
    return page(
        request,
        "key.html",
        v,
        key=row,
        certificate=crow,
        certificate_pem=cert_pem,
        transfers=_transfers(request, v, row.id),
        error=None,
    )


@router.get("/keys/{key_id}/delete")
def key_delete_page(request: Request, key_id: str) -> Response:
    v = viewer(request)
    svc = _svc(request)
    if not v.can("keys:delete"):
        raise Forbidden("you lack the permission keys:delete", permission="keys:delete")
    row = act(
        request, v, "key.retrieve", "keys:retrieve", lambda c: svc.keys.get_key(c, key_id), object_id=key_id
    )
    return page(request, "key_delete.html", v, key=row)


@router.post("/keys/{key_id}/delete")
def key_delete(request: Request, key_id: str) -> Response:
    v = viewer(request)
    svc = _svc(request)
    form = form_of(request).only({"confirm"})
    if form.get("confirm") != key_id:
        raise InvalidInput("type the key's id to confirm the deletion", field="confirm")
    act(request, v, "key.delete", "keys:delete", lambda c: svc.keys.delete_key(c, key_id), object_id=key_id)
    return _see("/ui/keys")


@router.post("/keys/{key_id}/certificate")
def key_certify(request: Request, key_id: str) -> Response:
    v = viewer(request)
    svc = _svc(request)
    form = form_of(request).only({"common_name", "sans", "validity_days", "self_signed"})
    sans = [s for s in re.split(r"[\s,]+", form.raw("sans")) if s]
    req = CertificateRequest(
        common_name=form.get("common_name") or "",
        sans=sans,
        validity_days=_int_field(form, "validity_days") or 365,
        self_signed=form.get("self_signed") == "on",
    )
    act(
        request,
        v,
        "key.certify",
        "keys:certify",
        lambda c: svc.keys.certify(c, key_id, req),
        object_id=key_id,
    )
    return _see(f"/ui/keys/{key_id}")


# --- policies -------------------------------------------------------------------------------------------

POLICY_TEMPLATE = {
    "attestation_type": ["TDX"],
    "tdx": {
        "attributes": {
            "mrsignerseam": ["0" * 96],
            "mrseam": ["<96 hex characters: the TDX module's measurement>"],
            "seamsvn": 0,
            "mrtd": ["<96 hex characters: the TD's measurement>"],
            "enforce_tcb_upto_date": True,
        }
    },
}


def _parse_policy(text: str) -> TransferPolicyBody:
    """The editor's text, read by the API's strict JSON reader and the API's model."""
    return trial.parse_secl(text)


@router.get("/policies")
def policies_page(request: Request) -> Response:
    """Key-transfer policies (SecL), and the ``/kbs/v0`` resources' policies (default, SecL or Rego)
    for those who may set them."""
    v = viewer(request)
    svc = _svc(request)
    if not (v.can("key_transfer_policies:search") or v.can(RESOURCES_WRITE)):
        act(request, v, "policy.search", "key_transfer_policies:search", svc.keys.list_policies)
    rows = (
        act(request, v, "policy.search", "key_transfer_policies:search", svc.keys.list_policies)
        if v.can("key_transfer_policies:search")
        else None
    )
    resources = svc.kbs_v0.resources() if v.can(RESOURCES_WRITE) else None
    return page(request, "policies.html", v, policies=rows, resources=resources)


@router.get("/policies/new")
def policy_new_page(request: Request) -> Response:
    v = viewer(request)
    if not v.can("key_transfer_policies:create"):
        raise Forbidden("you lack the permission key_transfer_policies:create")
    return page(
        request, "policy_edit.html", v, policy=None, text=json.dumps(POLICY_TEMPLATE, indent=2), errors=[]
    )


@router.post("/policies")
def policy_create(request: Request) -> Response:
    v = viewer(request)
    svc = _svc(request)
    text = form_of(request).only({"policy"}).raw("policy")
    try:  # the permission first, then the text: a refusal of either audited once, by act
        row = act(
            request,
            v,
            "policy.create",
            "key_transfer_policies:create",
            lambda c: svc.keys.create_policy(c, _parse_policy(text)),
        )
    except InvalidInput as exc:
        return page(
            request,
            "policy_edit.html",
            v,
            status=400,
            policy=None,
            text=text,
            errors=exc.extra.get("errors") or [exc.detail],
        )
    return _see(f"/ui/policies/{row.id}")


@router.get("/policies/{policy_id}")
def policy_page(request: Request, policy_id: str) -> Response:
    v = viewer(request)
    svc = _svc(request)
    row = act(
        request,
        v,
        "policy.retrieve",
        "key_transfer_policies:retrieve",
        lambda c: svc.keys.get_policy(c, policy_id),
        object_id=policy_id,
    )
    with svc.db.session() as s:
        bound = list(s.scalars(select(Key.id).where(Key.transfer_policy_id == row.id)))
    return page(
        request,
        "policy_edit.html",
        v,
        policy=row,
        text=json.dumps(row.body, indent=2),
        errors=[],
        bound=bound,
    )


@router.post("/policies/{policy_id}")
def policy_update(request: Request, policy_id: str) -> Response:
    v = viewer(request)
    svc = _svc(request)
    text = form_of(request).only({"policy"}).raw("policy")
    try:  # the permission first, then the text: a refusal of either audited once, by act
        act(
            request,
            v,
            "policy.update",
            "key_transfer_policies:update",
            lambda c: svc.keys.update_policy(c, policy_id, _parse_policy(text)),
            object_id=policy_id,
        )
    except InvalidInput as exc:
        row = svc.keys.get_policy(Caller(v.actor), policy_id)
        return page(
            request,
            "policy_edit.html",
            v,
            status=400,
            policy=row,
            text=text,
            errors=exc.extra.get("errors") or [exc.detail],
            bound=[],
        )
    return _see(f"/ui/policies/{policy_id}")


@router.post("/policies/{policy_id}/delete")
def policy_delete(request: Request, policy_id: str) -> Response:
    v = viewer(request)
    svc = _svc(request)
    form_of(request).only(set())
    act(
        request,
        v,
        "policy.delete",
        "key_transfer_policies:delete",
        lambda c: svc.keys.delete_policy(c, policy_id),
        object_id=policy_id,
    )
    return _see("/ui/policies")


_UNIX_SECONDS = re.compile(r"\d{1,12}(\.\d+)?")
#: What the evidence field takes, for its messages.
_EVIDENCE_FORMS = (
    "a DCAP quote or an SEV-SNP report as hex or base64, or JSON: keybroker's TPM evidence document "
    "or Trustee's Azure vTPM evidence"
)


def _tee_choice(value: str | None) -> str | None:
    """The TEE chosen (``--tee``), or None: recognised from the evidence."""
    if value is None:
        return None
    if value.lower() not in REGISTRY.names:
        raise InvalidInput(
            f"tee: one of {', '.join(REGISTRY.names)}, or none to recognise it from the evidence", field="tee"
        )
    return value.lower()


def _read_evidence(verifier: Verifier, text: str, tee: str | None) -> tuple[str, bytes]:
    """(TEE, evidence) of evidence pasted as ``keybroker policy test --quote`` reads a file: as
    given (JSON), or hex or base64 (line breaks inside allowed), the one reading a registered TEE's
    verifier recognises; ``tee``: it must be that TEE's."""
    data = text.strip().encode("utf-8", errors="surrogatepass")
    if not data:
        raise InvalidInput(f"evidence: paste the evidence, {_EVIDENCE_FORMS}", field="quote")
    compact = b"".join(data.split())
    found = verifier.detect([data, *evidence_readings(compact)[1:]])
    if found is None:
        raise InvalidInput(
            f"evidence: not {REGISTRY.listing()} evidence; paste {_EVIDENCE_FORMS}", field="quote"
        )
    if tee is not None and found[0] != tee:
        raise InvalidInput(
            f"tee {tee}: the evidence is {found[0].upper()} evidence, not {tee.upper()}", field="tee"
        )
    return found


def _read_endorsements(verifier: Verifier, tee: str, text: str) -> object | None:
    """The endorsements given with the evidence (``--collateral``, ``--cert``), None for the
    server's own: JSON in the TEE's form (DCAP's QuoteCollateralV3, ``{"certificates", "crls"}`` or
    ``{"cert_chain"}``), or for an SEV-SNP report its certificates and CRLs as PEM."""
    data = text.strip()
    if not data:
        return None
    if data.startswith("-----BEGIN"):
        if tee != "snp":
            raise InvalidInput(
                f"endorsements: PEM certificates are for SEV-SNP reports (the VCEK or VLEK and its "
                f"chain); {tee.upper()} evidence takes JSON",
                field="endorsements",
            )
        try:
            certificates, crls = pem_certificates_and_crls(data.encode("ascii", errors="replace"))
        except ValueError as exc:
            raise InvalidInput(f"endorsements: {exc}", field="endorsements") from None
        data = json.dumps({"certificates": certificates, "crls": crls})
    try:
        return verifier.plugin(tee).endorsements(data)
    except CollateralError as exc:
        raise InvalidInput(f"endorsements: {exc.detail}", field="endorsements") from None


def _verification_time(value: str | None) -> datetime | None:
    """``at`` (``--at``): ISO 8601 with a timezone or UNIX seconds; None: now."""
    if value is None:
        return None
    if _UNIX_SECONDS.fullmatch(value):
        return datetime.fromtimestamp(float(value), UTC)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"at: {value[:40]!r} is neither ISO 8601 nor UNIX seconds", field="at") from None
    if parsed.tzinfo is None:
        raise InvalidInput(f"at: {value[:40]!r} has no timezone; add Z or an offset", field="at")
    return parsed.astimezone(UTC)


REGO_TEMPLATE = """package keybroker

import rego.v1

default allow := false

mrtds := ["<96 hex characters: the TD's measurement>"]

allow if {
    input.tee == "tdx"
    input.claims.mr_td in mrtds
    not input.claims.debug
    not input.sim
}

reasons contains {
    "check": "mrtd",
    "message": sprintf("mrtd %s is not allowed", [input.claims.mr_td]),
    "expected": mrtds,
} if not input.claims.mr_td in mrtds
"""


def _language(value: str | None) -> trial.Language:
    if value in (None, "", "secl"):
        return "secl"
    if value == "rego":
        return "rego"
    raise InvalidInput("language: secl or rego", field="language")


def _may_test(v: Viewer) -> None:
    if not v.can("key_transfer_policies:retrieve"):
        raise Forbidden(
            "you lack the permission key_transfer_policies:retrieve",
            permission="key_transfer_policies:retrieve",
        )


def _policy_test_page(
    request: Request,
    v: Viewer,
    *,
    language: trial.Language,
    text: str,
    status: int = 200,
    evidence: str = "quote",
    quote: str = "",
    tee: str = "",
    endorsements: str = "",
    at: str = "",
    client_permissions: str = "",
    attempt: int | None = None,
    tested: RecordedAttempt | None = None,
    document: Mapping[str, Any] | None = None,
    decision: Decision | None = None,
    errors: Sequence[str] = (),
    evidence_error: str | None = None,
) -> HTMLResponse:
    attempts: list[RecordedAttempt] = []
    if v.can("audit:read"):
        with _svc(request).db.session() as s:
            attempts = AppraisalInputs.recent(s, limit=PAGE_SIZE)
    return page(
        request,
        "policy_test.html",
        v,
        status=status,
        languages=trial.LANGUAGES,
        language=language,
        text=text,
        evidence=evidence,
        quote=quote,
        tees=REGISTRY.names,
        tee=tee,
        endorsements=endorsements,
        at=at,
        client_permissions=client_permissions,
        attempts=attempts,
        attempt=attempt,
        tested=tested,
        document=document,
        decision=decision,
        errors=list(errors),
        evidence_error=evidence_error,
    )


def _attempt_seq(value: str | None) -> int:
    if value is None or not value.isdigit() or len(value) > 18:
        raise InvalidInput("attempt: choose a recent attempt (an audit record number)", field="attempt")
    return int(value)


@router.get("/policy-test")
def policy_test_page(
    request: Request,
    policy: str | None = None,
    resource: str | None = None,
    language: str | None = None,
    attempt: str | None = None,
) -> Response:
    """The form, empty or with a stored policy in it: a key-transfer policy (``policy``) or a
    resource's Rego policy (``resource``); ``attempt``: a recent attempt chosen as the evidence."""
    v = viewer(request)
    svc = _svc(request)
    _may_test(v)
    lang = _language(language)
    text = REGO_TEMPLATE if lang == "rego" else json.dumps(POLICY_TEMPLATE, indent=2)
    if policy is not None:
        row = act(
            request,
            v,
            "policy.retrieve",
            "key_transfer_policies:retrieve",
            lambda c: svc.keys.get_policy(c, policy),
            object_id=policy,
        )
        lang, text = "secl", json.dumps(row.body, indent=2)
    elif resource is not None:
        res = _resource(request, v, resource)
        if res.policy is None or "rego" not in res.policy:
            raise InvalidInput(f"resource {res.path} has no Rego policy", field="resource")
        lang, text = "rego", str(res.policy["rego"])
    seq = None
    if attempt is not None:
        _may_read_attempts(v)
        seq = _attempt_seq(attempt)
    return _policy_test_page(
        request, v, language=lang, text=text, evidence="attempt" if seq else "quote", attempt=seq
    )


def _may_read_attempts(v: Viewer) -> None:
    """Attempts' input documents come with their audit records: audit:read."""
    if not v.can("audit:read"):
        raise Forbidden(
            "testing on a recorded attempt needs the permission audit:read", permission="audit:read"
        )


@router.post("/policy-test")
def policy_test(request: Request) -> Response:
    """As ``keybroker policy test`` (the same ``appraisal.trial``), on evidence of any registered TEE
    verified now (or ``at``) as this server verifies it (its trust roots, collateral and KDS caches,
    enrolled TPM AKs read only, else as given; with the endorsements given, if any), or on the
    appraisal input a recent attempt was decided on (as its audit record names it). Every reason is
    shown; nothing is stored."""
    v = viewer(request)
    svc = _svc(request)
    _may_test(v)
    form = form_of(request).only(
        {
            "language",
            "policy",
            "evidence",
            "quote",
            "tee",
            "endorsements",
            "at",
            "client_permissions",
            "attempt",
        }
    )
    lang = _language(form.get("language"))
    evidence = form.get("evidence") or "quote"
    text, quote_text, perms_text = form.raw("policy"), form.raw("quote"), form.raw("client_permissions")
    shown: dict[str, Any] = {"language": lang, "text": text, "evidence": evidence}
    shown |= {"quote": quote_text, "client_permissions": perms_text, "tee": form.get("tee") or ""}
    shown |= {"endorsements": form.raw("endorsements"), "at": form.get("at") or ""}
    if evidence not in ("quote", "attempt"):
        raise InvalidInput("evidence: quote or attempt", field="evidence")
    try:
        policy = trial.load_policy(text, language=lang, policy_id="console")
    except InvalidInput as exc:
        return _policy_test_page(
            request, v, status=400, errors=exc.extra.get("errors") or [exc.detail], **shown
        )
    if evidence == "attempt":
        _may_read_attempts(v)
        seq = _attempt_seq(form.get("attempt"))
        try:
            with svc.db.session() as s:
                tested = AppraisalInputs.recorded(s, seq)
        except (NotFound, Conflict) as exc:
            return _policy_test_page(request, v, status=exc.status, attempt=seq, errors=[exc.detail], **shown)
        return _policy_test_page(
            request,
            v,
            attempt=seq,
            tested=tested,
            document=tested.document,
            decision=policy.evaluate(tested.document),
            **shown,
        )
    try:
        chosen, when = _tee_choice(form.get("tee")), _verification_time(form.get("at"))
        tee, raw = _read_evidence(svc.dry_run, quote_text, chosen)
        endorsements = _read_endorsements(svc.dry_run, tee, form.raw("endorsements"))
    except InvalidInput as exc:
        return _policy_test_page(
            request, v, status=400, errors=exc.extra.get("errors") or [exc.detail], **shown
        )
    try:
        verified = svc.dry_run.verify(tee, raw, NO_REPORT_DATA, at=when, endorsements=endorsements)
    except KeybrokerError as exc:  # evidence refused, collateral missing: the verdict, not a page error
        why = f"{tee.upper()} evidence rejected ({exc.extra.get('check', exc.title)}): {exc.detail}"
        return _policy_test_page(request, v, evidence_error=why, **shown)
    perms = [p.strip() for p in perms_text.split(",") if p.strip()] if perms_text.strip() else None
    doc = appraisal_input(verified, client_permissions=perms)
    return _policy_test_page(request, v, document=doc, decision=policy.evaluate(doc), **shown)


# --- /kbs/v0 resource policies (Rego) -------------------------------------------------------------------

RESOURCES_WRITE = "resources:write"
_POLICY_KINDS = ("default", "transfer_policy", "rego")


def _resource(request: Request, v: Viewer, path: str, *, action: str | None = None) -> ResourceInfo:
    """A resource by its path (``repository/type/tag``), for those who may set its policy; with
    ``action``, a refusal is audited under it."""
    svc = _svc(request)

    def look_up(_: Caller) -> ResourceInfo:
        parts = path.split("/")
        if len(parts) != 3:
            raise InvalidInput("resource: repository/type/tag", field="resource")
        return svc.kbs_v0.resource(resource_path(*parts))

    if action is not None:
        return act(request, v, action, RESOURCES_WRITE, look_up, object_id=path[:256])
    if not v.can(RESOURCES_WRITE):
        raise Forbidden(f"you lack the permission {RESOURCES_WRITE}", permission=RESOURCES_WRITE)
    return look_up(Caller(v.actor))


def _policy_kind(policy: dict[str, Any] | None) -> str:
    if policy is None:
        return "default"
    return "transfer_policy" if "transfer_policy_id" in policy else "rego"


def _resource_page(
    request: Request,
    v: Viewer,
    res: ResourceInfo,
    *,
    status: int = 200,
    kind: str | None = None,
    rego_text: str | None = None,
    transfer_policy_id: str | None = None,
    errors: Sequence[str] = (),
    notice: str | None = None,
) -> HTMLResponse:
    policy = res.policy or {}
    return page(
        request,
        "resource_policy.html",
        v,
        status=status,
        res=res,
        kind=kind or _policy_kind(res.policy),
        rego=rego_text if rego_text is not None else str(policy.get("rego") or REGO_TEMPLATE),
        transfer_policy_id=transfer_policy_id or str(policy.get("transfer_policy_id") or ""),
        policies=_policies(request, v),
        errors=list(errors),
        notice=notice,
    )


@router.get("/resources/{repository}/{rtype}/{tag}")
def resource_policy_page(
    request: Request, repository: str, rtype: str, tag: str, saved: int | None = None
) -> Response:
    v = viewer(request)
    res = _resource(request, v, f"{repository}/{rtype}/{tag}")
    return _resource_page(request, v, res, notice="saved" if saved else None)


def _resource_policy(form: Form) -> dict[str, Any] | None:
    """The form's choice as ``/kbs/v0/resource-policy`` takes it (exactly one of them)."""
    kind = form.get("kind")
    if kind == "default":
        return None
    if kind == "transfer_policy":
        policy_id = form.get("transfer_policy_id")
        if policy_id is None or not _UUID.match(policy_id):
            raise InvalidInput("transfer_policy_id: choose a key-transfer policy", field="transfer_policy_id")
        return {"transfer_policy_id": policy_id}
    if kind == "rego":
        return {"rego": form.raw("rego")}
    raise InvalidInput(f"kind: one of {', '.join(_POLICY_KINDS)}", field="kind")


@router.post("/resources/{repository}/{rtype}/{tag}")
def resource_policy_set(request: Request, repository: str, rtype: str, tag: str) -> Response:
    """As ``POST /kbs/v0/resource-policy/...``: the default policy, a key-transfer policy, or a Rego
    module, compiled and checked by the same service (a syntax error names its line and column)."""
    v = viewer(request)
    svc = _svc(request)
    res = _resource(request, v, f"{repository}/{rtype}/{tag}", action="resource.policy")
    form = form_of(request).only({"kind", "transfer_policy_id", "rego"})
    try:
        try:
            policy = _resource_policy(form)
        except InvalidInput as exc:
            _audit_failure(svc, v.actor, "resource.policy", exc, res.path)
            raise
        act(
            request,
            v,
            "resource.policy",
            RESOURCES_WRITE,
            lambda c: svc.kbs_v0.set_policy(res.path, policy, c.actor),
            object_id=res.path,
        )
    except InvalidInput as exc:  # audited (act audits what the service refuses)
        kind = form.get("kind")
        return _resource_page(
            request,
            v,
            res,
            status=400,
            kind=kind if kind in _POLICY_KINDS else None,
            rego_text=form.raw("rego"),
            transfer_policy_id=form.get("transfer_policy_id"),
            errors=exc.extra.get("errors") or [exc.detail],
        )
    return _see(f"/ui/resources/{res.path}?saved=1")


# --- audit ------------------------------------------------------------------------------------------------

_OUTCOMES = ("success", "denied", "failed")


def _parse_time(name: str, value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{name}: a date and time like 2025-01-31T12:00", field=name) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@router.get("/audit")
def audit_page(
    request: Request,
    actor: str | None = None,
    action: str | None = None,
    object_id: str | None = None,
    outcome: str | None = None,
    since: str | None = None,
    until: str | None = None,
    before: int | None = None,
) -> Response:
    v = viewer(request)
    svc = _svc(request)
    if not v.can("audit:read"):
        exc = Forbidden("you lack the permission audit:read", permission="audit:read")
        _audit_failure(svc, v.actor, "audit.read", exc, None)
        raise exc
    if outcome and outcome not in _OUTCOMES:
        raise InvalidInput("outcome: success, denied or failed", field="outcome")
    if action and action not in audit.ACTIONS:
        raise InvalidInput(f"action: one of {', '.join(sorted(audit.ACTIONS))}", field="action")
    start, end = _parse_time("since", since), _parse_time("until", until)
    q = select(AuditRecord)
    if actor:
        q = q.where(AuditRecord.actor.contains(actor[:256], autoescape=True))
    if action:
        q = q.where(AuditRecord.action == action)
    if object_id:
        q = q.where(AuditRecord.object_id == object_id[:256])
    if outcome:
        q = q.where(AuditRecord.outcome == outcome)
    if start:
        q = q.where(AuditRecord.time >= start)
    if end:
        q = q.where(AuditRecord.time <= end)
    if before is not None:
        q = q.where(AuditRecord.seq < max(0, min(before, 2**62)))
    with svc.db.session() as s:
        records = list(s.scalars(q.order_by(AuditRecord.seq.desc()).limit(PAGE_SIZE)))
        head = s.scalar(select(func.max(AuditRecord.seq))) or 0
        kept = AppraisalInputs.kept(s, [r.seq for r in records])
    guard = svc.checkpointer.guard
    filters = {
        "actor": actor or "",
        "action": action or "",
        "object_id": object_id or "",
        "outcome": outcome or "",
        "since": since or "",
        "until": until or "",
    }
    older = records[-1].seq if len(records) == PAGE_SIZE else None
    return page(
        request,
        "audit.html",
        v,
        records=records,
        filters=filters,
        actions=sorted(audit.ACTIONS),
        outcomes=_OUTCOMES,
        alarm=guard.alarm,
        checkpoint=svc.checkpointer.latest,
        head=head,
        anchor=guard.anchor,
        older=older,
        chain=None,
        kept=kept,
    )


@router.get("/audit/verify")
def audit_verify_page(request: Request) -> Response:
    """The whole chain checked against this replica's checkpoints, as ``keybroker audit verify``."""
    from keybroker.audit.checkpoint import CHECKPOINT_FILE, CheckpointError, CheckpointFile

    v = viewer(request)
    svc = _svc(request)
    if not v.can("audit:read"):
        raise Forbidden("you lack the permission audit:read", permission="audit:read")
    problem = None
    try:
        found = CheckpointFile(svc.settings.data_dir / CHECKPOINT_FILE).read_all(
            svc.checkpointer.signer.public_key
        )
        anchors = audit.Anchors(
            found,
            datetime.now(UTC),
            timedelta(seconds=svc.settings.audit.checkpoint_interval_seconds) + audit.CHECKPOINT_SLACK,
        )
        with svc.db.session() as s:
            chain = audit.verify_chain(s, anchors)
    except CheckpointError as exc:
        chain, problem = None, f"the checkpoint file does not verify: {exc}"
    return page(request, "audit_verify.html", v, chain=chain, problem=problem)


# --- system -----------------------------------------------------------------------------------------------------


def _system(
    request: Request, v: Viewer, status: int = 200, error: str | None = None, notice: str | None = None
) -> HTMLResponse:
    svc = _svc(request)
    st = svc.barrier.status()
    try:
        svc.keystore.health()
        health: str | None = None
    except (BackendUnavailable, Sealed) as exc:
        health = exc.detail
    with svc.db.session() as s:
        counts = {
            "keys": s.scalar(select(func.count()).select_from(Key)) or 0,
            "policies": s.scalar(select(func.count()).select_from(TransferPolicy)) or 0,
            "tokens on record": s.scalar(select(func.count()).select_from(BearerToken)) or 0,
            "audit records": s.scalar(select(func.max(AuditRecord.seq))) or 0,
        }
    return page(
        request,
        "system.html",
        v,
        status=status,
        st=st,
        keystore=svc.settings.keystore.type,
        health=health,
        counts=counts,
        checkpoint=svc.checkpointer.latest,
        alarm=svc.checkpointer.guard.alarm,
        error=error,
        notice=notice,
    )


@router.get("/system")
def system_page(request: Request) -> Response:
    return _system(request, viewer(request))


@router.post("/system/unseal")
def unseal(request: Request) -> Response:
    """One unseal share, or a reset, through the same service (limits, audit) as /sys/v1/unseal."""
    v = viewer(request)
    svc = _svc(request)
    form = form_of(request).only({"share", "reset"})
    client = client_key(request.client.host if request.client else None)
    try:
        if form.get("reset"):
            svc.unseal.reset(client)
            return _system(request, v, notice="the unseal attempt was reset")
        share = form.get("share")
        if share is None:
            raise InvalidInput("share: one unseal share (base64)", field="share")
        st = svc.unseal.submit(share, client)
    except InvalidInput as exc:
        return _system(request, v, status=400, error=exc.detail)
    return _system(
        request, v, notice="unsealed" if not st.sealed else f"share accepted: {st.progress}/{st.threshold}"
    )


@router.post("/system/seal")
def seal(request: Request) -> Response:
    v = viewer(request)
    svc = _svc(request)
    form_of(request).only(set())

    def run(c: Caller) -> None:
        try:
            with svc.db.session() as s:
                audit.append(s, actor=c.actor, action="sys.seal", outcome="success")
        finally:
            svc.barrier.seal()

    act(request, v, "sys.seal", "sys:seal", run)
    return _see("/ui/system")
