"""Dashboard sessions and CSRF protection, for the same JOBS_API_TOKEN the API takes.

The cookie never holds the token. It holds `{sid}.{expiry}.{mac}`: a random session id, an expiry
(unix seconds) and an HMAC-SHA256 of both under a key derived from the token, so a session cannot
be forged or extended without the token, and rotating the token logs every session out. Sessions
are stateless (nothing is stored in Redis or Postgres): logging out clears the cookie, and a copied
cookie stays valid until it expires, hence the short lifetime.

Every POST needs the session's CSRF token, an HMAC of the session id under the same key (so it
changes with each login and needs no storage), in a hidden form field, and, when the browser sends
`Origin` (or else `Referer`), one of this site's origins. The cookie is `SameSite=Lax` rather than
Strict on purpose: a link from an alert or a chat message then opens the job page directly instead
of the login form, and Lax still withholds the cookie from cross-site POSTs, which the two checks
above refuse anyway. All comparisons are constant time; nothing here logs a token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Form, Request

from .deps import SettingsDep

COOKIE = "jq_dashboard"
COOKIE_PATH = "/dashboard"  # where the dashboard is below the app's root (or the router's prefix)
SESSION_TTL_S = 12 * 3600  # a working day; a stolen cookie is worth no more than this
_KEY_LABEL = b"jobqueue dashboard session key v1"


class LoginRequired(Exception):
    """No valid session: the dashboard answers with a redirect to the login form."""


class CsrfRefused(Exception):
    """A POST without the session's CSRF token, or from another site: the dashboard answers 403."""


@dataclass(frozen=True)
class Session:
    sid: str
    csrf: str


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _key(token: str) -> bytes:
    # A key of its own rather than the token itself: the MACs below never reuse the API secret
    # directly, and each use gets its own label.
    return hmac.new(token.encode(), _KEY_LABEL, hashlib.sha256).digest()


def _mac(token: str, purpose: str, value: str) -> str:
    return _b64(hmac.new(_key(token), f"{purpose}|{value}".encode(), hashlib.sha256).digest())


def issue_session(token: str, now: float | None = None) -> str:
    """A fresh cookie value for a successful login."""
    expires = int((time.time() if now is None else now) + SESSION_TTL_S)
    body = f"{secrets.token_urlsafe(18)}.{expires}"
    return f"{body}.{_mac(token, 'session', body)}"


def verify_session(value: str | None, token: str | None, now: float | None = None) -> Session | None:
    """The session a cookie value proves, or None (unsigned, signed by another token, expired)."""
    if not value or not token:
        return None  # an unset JOBS_API_TOKEN locks the dashboard, as it locks the API
    sid, _, rest = value.partition(".")
    expires, _, mac = rest.partition(".")
    if not sid or not expires.isdigit() or not mac:
        return None
    if not hmac.compare_digest(mac.encode(), _mac(token, "session", f"{sid}.{expires}").encode()):
        return None
    if int(expires) <= (time.time() if now is None else now):
        return None
    return Session(sid=sid, csrf=_mac(token, "csrf", sid))


def is_https(request: Request) -> bool:
    """Whether the browser reached us over TLS. Vercel and most proxies terminate TLS and say so in
    X-Forwarded-Proto; trusting it only decides the cookie's Secure flag, which is harmless to
    set when wrong (the browser then keeps the cookie off plain http)."""
    proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or proto == "https"


def _origin(url: str) -> str | None:
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def allowed_origins(request: Request, public_url: str | None) -> set[str]:
    host = request.headers.get("host", "").lower()
    allowed = {f"{request.url.scheme}://{host}", f"https://{host}"}  # https: behind a TLS proxy
    forwarded = request.headers.get("x-forwarded-host", "").split(",")[0].strip().lower()
    if forwarded:
        allowed.add(f"https://{forwarded}")
    if public_url and (o := _origin(public_url)):
        allowed.add(o)
    return allowed


def same_origin(request: Request, public_url: str | None) -> bool:
    """False when Origin (or, failing that, Referer) names another site. A request with neither
    passes here: older browsers and privacy settings drop both, and the CSRF token still holds."""
    origin = request.headers.get("origin")
    if origin is not None:
        # "null" comes from sandboxed frames, data: URLs and cross-origin redirects: never ours.
        return origin.lower() in allowed_origins(request, public_url)
    referer = request.headers.get("referer")
    if referer:
        return _origin(referer) in allowed_origins(request, public_url)
    return True


def base_path(request: Request) -> str:
    """The dashboard's URL path as the browser sees it: the ASGI root path (a proxy's prefix, or
    the prefix a mounted router was included under: web/mount.py adds it) plus "/dashboard".
    Links, redirects, the cookie's path and asset URLs are all built from it."""
    return str(request.scope.get("root_path", "")).rstrip("/") + COOKIE_PATH


def safe_next(target: str | None, base: str = COOKIE_PATH) -> str:
    """Where to go after login: a dashboard path only, never another host (no open redirect)."""
    if not target or "\\" in target or any(ord(c) < 32 for c in target):
        return base
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not (parts.path == base or parts.path.startswith(base + "/")):
        return base
    return target


async def require_session(request: Request, settings: SettingsDep) -> Session:
    session = verify_session(request.cookies.get(COOKIE), settings.api_token)
    if session is None:
        raise LoginRequired()
    return session


SessionDep = Annotated[Session, Depends(require_session)]


async def require_csrf(
    request: Request, settings: SettingsDep, session: SessionDep, csrf: Annotated[str, Form(max_length=200)] = ""
) -> Session:
    """For every state-changing POST: the session, its CSRF token, and this site as the origin."""
    if not same_origin(request, settings.public_url):
        raise CsrfRefused("the request came from another site")
    if not csrf or not hmac.compare_digest(csrf.encode(), session.csrf.encode()):
        raise CsrfRefused("the form's security token is missing or stale; reload the page and try again")
    return session


CsrfDep = Annotated[Session, Depends(require_csrf)]
