"""Who may call what. The API takes `Bearer $JOBS_API_TOKEN` (the admin credential: every route);
`/api/workers` takes `Bearer $WORKER_SECRET`, `Bearer $CRON_SECRET` (Vercel Cron, GET) or a QStash
`Upstash-Signature`.

Scoped credentials (DESIGN.md section 8): `Bearer $JOBS_ENQUEUE_TOKEN` may only enqueue and read a
job by id, `Bearer $JOBS_METRICS_TOKEN` only read the metrics. Presented anywhere else (the worker
route included) they answer 403, and a 403 is not a failed credential: it is not counted by the
throttle below (the caller holds a valid secret; nothing is being guessed).

The security schemes FastAPI documents (`HTTPBearer`, `APIKeyHeader`, all `auto_error=False`) are
sub-dependencies here only so that OpenAPI lists them per operation and the docs' Authorize
button works; they decide nothing. The checks are the code below.

Secrets are compared in constant time, and a secret that is unset (or empty) matches nothing, so
a deployment that forgot JOBS_API_TOKEN is locked rather than open. Only HTTP whitespace (space,
tab) around a token is ignored: `str.strip()` would also drop a no-break space or NEL, so a token
"padded" with them was accepted. The QStash JWT is checked with PyJWT directly instead of
`qstash.Receiver`, which reports every failure as the next key's "Signature verification failed"
and so hides an expiry or a URL mismatch; both keys are tried.

Throttling: every failed credential (wrong or missing token, bad signature, wrong dashboard login)
costs one Redis request that counts it per client address and in all; past
JOBQUEUE_AUTH_FAILURES_PER_ADDRESS or JOBQUEUE_AUTH_FAILURES_TOTAL in a JOBQUEUE_AUTH_WINDOW_S
window it answers 429 with Retry-After instead of 401. A valid credential is checked first and
costs nothing extra, so it is never slowed or refused by the throttle (nor by an attacker who fills
the counters); what makes guessing hopeless remains the secrets' length. When Redis is down the
throttle steps aside: the answer is the 401 it would have been.

Replay protection (QStash): a token whose drain succeeded is refused until it expires; a token
whose drain failed is accepted again (QStash retries a failed delivery with the same token); a
copy arriving while its drain still runs gets 409, so no token runs two drains at once.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
import warnings
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from jobqueue.errors import Forbidden, Unauthorized, Unavailable

from .deps import SettingsDep, read_body, resources
from .http_errors import TokenInUse, TooManyAttempts

if TYPE_CHECKING:
    from jobqueue.engine import JobQueue
    from jobqueue.settings import Settings

# Upstash's and the platform's clocks may disagree a little; exp/nbf get this much slack.
CLOCK_SKEW_S = 5
# QStash delivers the body we published (empty for a drain kick); anything big is not from us.
WORKER_BODY_LIMIT = 64 * 1024
REQUIRED_CLAIMS = ["iss", "sub", "exp", "nbf", "body", "jti"]
HTTP_WHITESPACE = " \t"  # RFC 9110 OWS: the only padding a header value may carry

log = logging.getLogger("jobqueue.api")

WORKERS_PATH = "/api/workers"  # the worker route, relative to where the routes are mounted

# --- security schemes (documentation only; see the module docstring) ---------------------------

ADMIN_SCHEME = HTTPBearer(
    scheme_name="ApiToken",
    description="`JOBS_API_TOKEN`: the admin credential, every API route and the dashboard",
    auto_error=False,
)
ENQUEUE_SCHEME = HTTPBearer(
    scheme_name="EnqueueToken",
    description="`JOBS_ENQUEUE_TOKEN`: only `POST /api/jobs`, `POST /api/jobs/batch` and `GET /api/jobs/{id}`",
    auto_error=False,
)
METRICS_SCHEME = HTTPBearer(
    scheme_name="MetricsToken",
    description="`JOBS_METRICS_TOKEN`: only `GET /api/metrics` and `GET /api/metrics/prometheus`",
    auto_error=False,
)
WORKER_SCHEME = HTTPBearer(
    scheme_name="WorkerSecret",
    description="`WORKER_SECRET`, or `CRON_SECRET` (what Vercel Cron sends): `/api/workers` only",
    auto_error=False,
)
QSTASH_SCHEME = APIKeyHeader(
    name="Upstash-Signature",
    scheme_name="UpstashSignature",
    description="A QStash signature (a JWT signed with `QSTASH_CURRENT_SIGNING_KEY` or `QSTASH_NEXT_SIGNING_KEY`, "
    "over the raw body and the URL): `/api/workers` only",
    auto_error=False,
)
Bearer = HTTPAuthorizationCredentials | None
AdminScheme = Annotated[Bearer, Depends(ADMIN_SCHEME)]
EnqueueScheme = Annotated[Bearer, Depends(ENQUEUE_SCHEME)]
MetricsScheme = Annotated[Bearer, Depends(METRICS_SCHEME)]
WorkerScheme = Annotated[Bearer, Depends(WORKER_SCHEME)]
QStashScheme = Annotated[str | None, Depends(QSTASH_SCHEME)]

# --- scopes ---------------------------------------------------------------------------------------

Scope = Literal["admin", "enqueue", "metrics"]
SCOPE_LIMITS: dict[str, str] = {
    "enqueue": "JOBS_ENQUEUE_TOKEN may only enqueue (POST /api/jobs, POST /api/jobs/batch) and read a job by id",
    "metrics": "JOBS_METRICS_TOKEN may only read /api/metrics and /api/metrics/prometheus",
}


def bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip(HTTP_WHITESPACE) or None


def secret_matches(given: str | None, secret: str | None) -> bool:
    if not given or not secret:
        return False
    return hmac.compare_digest(given.encode(), secret.encode())


def client_address(request: Request, settings: Settings) -> str:
    """Whom failures are counted against: the direct peer, or the first X-Forwarded-For (else
    X-Real-IP) hop when the proxy is trusted (JOBQUEUE_AUTH_TRUST_PROXY; by default on Vercel,
    whose edge overwrites both headers, so a client cannot choose its own address). IPv6 counts
    per /64, which one client typically holds whole."""
    trust = settings.auth_trust_proxy if settings.auth_trust_proxy is not None else bool(settings.vercel_env)
    candidates = []
    if trust:
        candidates += [request.headers.get(h, "").split(",")[0].strip() for h in ("x-forwarded-for", "x-real-ip")]
    candidates.append(request.client.host if request.client else "")
    for value in candidates:
        try:
            ip = ipaddress.ip_address(value)
        except ValueError:
            continue
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
            return str(ipaddress.IPv6Network((ip, 64), strict=False).network_address) + "/64"
        return str(ip.ipv4_mapped or ip) if isinstance(ip, ipaddress.IPv6Address) else str(ip)
    return "unknown"


async def count_failure(request: Request) -> None:
    """Record a failed credential; raise TooManyAttempts (429) past a limit. One Redis request."""
    res = resources(request)
    s = res.settings
    window_ms = s.auth_window_s * 1000
    try:
        jq = res.jq()
        now_ms = jq.clock.ms()
        mine, everyone = await jq.broker.auth_failure(client_address(request, s), now_ms, window_ms)
    except Unavailable as e:
        # Fail open to the plain 401: an outage must not turn bad credentials into 503s.
        log.warning("auth throttle skipped: %s unavailable", e.dependency)
        return
    if mine > s.auth_failures_per_address or everyone > s.auth_failures_total:
        retry_after_s = -(-(window_ms - now_ms % window_ms) // 1000)  # to the window's end, rounded up
        raise TooManyAttempts(retry_after_s, f"too many failed credentials; retry after {retry_after_s} s")


async def refuse(request: Request, message: str) -> NoReturn:
    await count_failure(request)
    raise Unauthorized(message)


def api_scope(token: str | None, settings: Settings) -> Scope | None:
    """Which API credential `token` is, if any. Every configured secret is compared (no early
    exit), so the time taken does not say which one matched; the admin token wins should two
    settings hold the same value."""
    secrets_by_scope: tuple[tuple[Scope, str | None], ...] = (
        ("admin", settings.api_token),
        ("enqueue", settings.enqueue_token),
        ("metrics", settings.metrics_token),
    )
    found: Scope | None = None
    for scope, secret in secrets_by_scope:
        if secret_matches(token, secret) and found is None:
            found = scope
    return found


async def check_api_token(request: Request, settings: Settings, allowed: frozenset[str], wanted: str) -> None:
    scope = api_scope(bearer_token(request), settings)
    if scope is None:
        await refuse(request, f"a valid Authorization: Bearer <{wanted}> header is required")
    if scope not in allowed:
        raise Forbidden(SCOPE_LIMITS[scope])


ADMIN_ONLY = frozenset({"admin"})
ENQUEUE_SCOPES = frozenset({"admin", "enqueue"})
METRICS_SCOPES = frozenset({"admin", "metrics"})


async def require_api_token(request: Request, settings: SettingsDep, _admin: AdminScheme) -> None:
    """The admin credential (JOBS_API_TOKEN): every API route that names no other scope."""
    await check_api_token(request, settings, ADMIN_ONLY, "JOBS_API_TOKEN")


async def require_enqueue(
    request: Request, settings: SettingsDep, _admin: AdminScheme, _enqueue: EnqueueScheme
) -> None:
    """JOBS_API_TOKEN or JOBS_ENQUEUE_TOKEN: enqueue, and read a job by its id."""
    await check_api_token(request, settings, ENQUEUE_SCOPES, "JOBS_API_TOKEN or JOBS_ENQUEUE_TOKEN")


async def require_metrics(
    request: Request, settings: SettingsDep, _admin: AdminScheme, _metrics: MetricsScheme
) -> None:
    """JOBS_API_TOKEN or JOBS_METRICS_TOKEN: the metrics routes."""
    await check_api_token(request, settings, METRICS_SCOPES, "JOBS_API_TOKEN or JOBS_METRICS_TOKEN")


async def require_worker(
    request: Request, settings: SettingsDep, _secret: WorkerScheme, _signature: QStashScheme
) -> AsyncIterator[None]:
    """A dependency with `yield`: the route's outcome decides what a QStash token's marker
    becomes (done after a drain that succeeded; deleted after one that failed)."""
    token = bearer_token(request)
    if secret_matches(token, settings.worker_secret) or secret_matches(token, settings.cron_secret):
        yield
        return
    signature = request.headers.get("upstash-signature")
    if not signature:
        scope = api_scope(token, settings)
        if scope is not None and scope != "admin":
            raise Forbidden(SCOPE_LIMITS[scope])
        await refuse(request, "a worker secret, CRON_SECRET or a valid Upstash-Signature is required")
    body = await read_body(request, WORKER_BODY_LIMIT)
    keys = [k for k in (settings.qstash_current_signing_key, settings.qstash_next_signing_key) if k]
    try:
        claims = verify_qstash_signature(signature, body, expected_url(request, settings), keys)
    except Unauthorized:
        await count_failure(request)
        raise
    jq = resources(request).jq()
    jti = str(claims["jti"])
    owner = secrets.token_hex(8)
    await claim_once(jq, jti, owner, settings)
    try:
        yield
    except BaseException:
        # QStash retries with this token: let it in. Should Redis be down, the marker expires
        # after JOBQUEUE_MAX_DURATION_S anyway.
        with contextlib.suppress(Unavailable):
            await jq.broker.token_abandon(jti, owner)
        raise
    try:
        await jq.broker.token_done(jti, token_ttl_ms(claims))
    except Unavailable:
        # The drain succeeded; a replay once the in-flight marker expires would only drain again.
        log.warning("could not mark a QStash token used: redis unavailable")


def expected_url(request: Request, settings: Settings) -> str:
    """The URL QStash signed (`sub`). Behind Vercel the scheme and host this process sees can
    differ from the public ones, so JOBQUEUE_PUBLIC_URL, when set, supplies them: it is the public
    URL of where the routes are mounted (the app's root for `create_app()`; the prefix's URL for
    a mounted `router()`), which is also where kicks are published (web/kick.py)."""
    if not settings.public_url:
        return str(request.url)
    url = settings.public_url.rstrip("/") + WORKERS_PATH
    return f"{url}?{request.url.query}" if request.url.query else url


def body_digest(body: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode()


def verify_qstash_signature(token: str, body: bytes, url: str, keys: list[str]) -> dict[str, Any]:
    """Check an `Upstash-Signature` JWT against the raw body and the URL; the 401 says why."""
    import jwt

    if not keys:
        raise Unauthorized("QStash signing keys are not configured")
    claims: dict[str, Any] | None = None
    for key in keys:
        try:
            with warnings.catch_warnings():
                # Upstash chooses the key length; PyJWT's short-HMAC-key warning is not ours to fix.
                warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=["HS256"],
                    issuer="Upstash",
                    leeway=CLOCK_SKEW_S,
                    options={"require": REQUIRED_CLAIMS},
                )
            break
        except jwt.InvalidSignatureError:
            continue  # try the next key: during a key roll either may be in use
        except jwt.ExpiredSignatureError:
            raise Unauthorized("Upstash-Signature has expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("Upstash-Signature is not valid yet") from None
        except jwt.PyJWTError as e:
            raise Unauthorized(f"invalid Upstash-Signature: {e}") from None
    if claims is None:
        raise Unauthorized("Upstash-Signature matches neither signing key")
    if not hmac.compare_digest(str(claims["sub"]).encode(), url.encode()):
        raise Unauthorized("Upstash-Signature was issued for another URL")
    if not hmac.compare_digest(str(claims["body"]).rstrip("=").encode(), body_digest(body).encode()):
        raise Unauthorized("Upstash-Signature does not match the request body")
    return claims


def token_ttl_ms(claims: dict[str, Any]) -> int:
    """Until the token expires anyway (plus the clock slack): after that PyJWT refuses it."""
    return max(1000, int((float(claims["exp"]) - time.time() + CLOCK_SKEW_S) * 1000))


async def claim_once(jq: JobQueue, jti: str, owner: str, settings: Settings) -> None:
    """Take the token for this drain, or refuse a replay. Only verified tokens get here, so an
    anonymous caller cannot write keys. The in-flight marker outlives any drain (a function runs
    at most JOBQUEUE_MAX_DURATION_S), so a worker killed mid-drain frees its token by itself."""
    running_ms = int(settings.max_duration_s * 1000)
    found = await jq.broker.token_begin(jti, owner, running_ms)
    if found == "done":
        raise Unauthorized("Upstash-Signature was already used")
    if found is not None:
        raise TokenInUse(int(settings.max_duration_s), "Upstash-Signature is in use by a drain that is still running")
