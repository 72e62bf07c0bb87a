"""Who may call what. The API takes `Bearer $JOBS_API_TOKEN`; `/api/workers` takes
`Bearer $WORKER_SECRET`, `Bearer $CRON_SECRET` (Vercel Cron, GET) or a QStash `Upstash-Signature`.

Secrets are compared in constant time, and a secret that is unset (or empty) matches nothing, so
a deployment that forgot JOBS_API_TOKEN is locked rather than open. The QStash JWT is checked
with PyJWT directly instead of `qstash.Receiver`, which reports every failure as the next key's
"Signature verification failed" and so hides an expiry or a URL mismatch; both keys are tried.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import warnings
from typing import TYPE_CHECKING, Any

from fastapi import Request

from jobqueue.errors import Unauthorized

from .deps import SettingsDep, read_body, resources

if TYPE_CHECKING:
    from jobqueue.engine import JobQueue
    from jobqueue.settings import Settings

# Upstash's and the platform's clocks may disagree a little; exp/nbf get this much slack.
CLOCK_SKEW_S = 5
# QStash delivers the body we published (empty for a drain kick); anything big is not from us.
WORKER_BODY_LIMIT = 64 * 1024
REQUIRED_CLAIMS = ["iss", "sub", "exp", "nbf", "body", "jti"]


def bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def secret_matches(given: str | None, secret: str | None) -> bool:
    if not given or not secret:
        return False
    return hmac.compare_digest(given.encode(), secret.encode())


async def require_api_token(request: Request, settings: SettingsDep) -> None:
    if not secret_matches(bearer_token(request), settings.api_token):
        raise Unauthorized("a valid Authorization: Bearer <JOBS_API_TOKEN> header is required")


async def require_worker(request: Request, settings: SettingsDep) -> None:
    token = bearer_token(request)
    if secret_matches(token, settings.worker_secret) or secret_matches(token, settings.cron_secret):
        return
    signature = request.headers.get("upstash-signature")
    if signature:
        body = await read_body(request, WORKER_BODY_LIMIT)
        keys = [k for k in (settings.qstash_current_signing_key, settings.qstash_next_signing_key) if k]
        claims = verify_qstash_signature(signature, body, expected_url(request, settings), keys)
        await claim_once(resources(request).jq(), claims)
        return
    raise Unauthorized("a worker secret, CRON_SECRET or a valid Upstash-Signature is required")


def expected_url(request: Request, settings: Settings) -> str:
    """The URL QStash signed (`sub`). Behind Vercel the scheme and host this process sees can
    differ from the public ones, so JOBQUEUE_PUBLIC_URL, when set, supplies them."""
    if not settings.public_url:
        return str(request.url)
    url = settings.public_url.rstrip("/") + request.url.path
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


async def claim_once(jq: JobQueue, claims: dict[str, Any]) -> None:
    """Refuse a replayed token: its `jti` is recorded (SET NX) until the token expires anyway.
    Only verified tokens get here, so an anonymous caller cannot write keys."""
    ttl_ms = max(1000, int((float(claims["exp"]) - time.time() + CLOCK_SKEW_S) * 1000))
    first = await jq.broker.try_lock(f"{jq.keys.nonce_prefix}{claims['jti']}", "1", ttl_ms)
    if not first:
        raise Unauthorized("Upstash-Signature was already used")
