"""Bearer-token auth for every route, ours and the mounted dashboard's, as one pure ASGI middleware.

Tokens come from TUNEFLEET_API_TOKEN (read-write) and TUNEFLEET_API_TOKENS_FILE, one token a line:

    # comments and blank lines are skipped
    TOKEN        read-write
    rw:TOKEN     read-write
    ro:TOKEN     read-only (reads when TUNEFLEET_PROTECT_READS=1; never a mutating request)

With no token configured the API is open (the CLI then binds 127.0.0.1 unless told --insecure).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
from dataclasses import dataclass
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import domain_error_response
from service.settings import ServiceSettings
from studies.errors import AuthenticationRequired, PermissionDenied, TunefleetError

log = logging.getLogger("tunefleet.service")

# A request with any other method may change something, on any path: the dashboard's POST, PUT and
# DELETE routes (create and delete studies, tell trials, notes) are guarded exactly like ours.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Probes stay open even with TUNEFLEET_PROTECT_READS=1: a load balancer has no token.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
SHORT_TOKEN_CHARS = 16


class AuthConfigError(ValueError):
    """The token settings cannot be used; the service refuses to start (the message names no token)."""


@dataclass(frozen=True)
class ApiToken:
    """One accepted token, kept only as its SHA-256 digest."""

    digest: bytes
    read_only: bool


def _digest(secret: bytes) -> bytes:
    # Comparing fixed-length digests keeps the comparison constant-time whatever the presented length.
    return hashlib.sha256(secret).digest()


@dataclass(frozen=True)
class TokenTable:
    """The tokens the service accepts; empty means auth is off."""

    tokens: tuple[ApiToken, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.tokens)

    def match(self, presented: bytes | None) -> ApiToken | None:
        """The token equal to `presented`, compared in constant time against every token."""
        if presented is None:
            return None
        digest = _digest(presented)
        found: ApiToken | None = None
        for token in self.tokens:
            # No early exit: the time taken does not say which token (or whether any) matched.
            if hmac.compare_digest(token.digest, digest):
                found = token
        return found


def _check_token(token: str, where: str) -> bytes:
    if not token:
        raise AuthConfigError(f"{where}: the token is empty")
    if not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        raise AuthConfigError(f"{where}: a token must be printable ASCII without spaces")
    if len(token) < SHORT_TOKEN_CHARS:
        log.warning(
            "%s: a token is shorter than %d characters; make one with "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'",
            where,
            SHORT_TOKEN_CHARS,
        )
    return token.encode("ascii")


def _read_tokens_file(path: Path) -> list[tuple[bytes, bool]]:
    name = "TUNEFLEET_API_TOKENS_FILE"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else type(error).__name__
        raise AuthConfigError(f"cannot read {name} {path}: {reason}") from None
    tokens: list[tuple[bytes, bool]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        read_only = line.startswith("ro:")
        if line.startswith(("ro:", "rw:")):
            line = line[3:].strip()
        tokens.append((_check_token(line, f"{name} {path} line {number}"), read_only))
    if not tokens:
        raise AuthConfigError(f"{name} {path} holds no token")
    return tokens


def load_tokens(settings: ServiceSettings) -> TokenTable:
    """The tokens of TUNEFLEET_API_TOKEN and TUNEFLEET_API_TOKENS_FILE; AuthConfigError when unusable."""
    entries: list[tuple[bytes, bool]] = []
    if settings.api_token is not None:
        entries.append(
            (_check_token(settings.api_token.get_secret_value().strip(), "TUNEFLEET_API_TOKEN"), False)
        )
    if settings.api_tokens_file is not None:
        entries += _read_tokens_file(settings.api_tokens_file)
    roles: dict[bytes, bool] = {}
    for secret, read_only in entries:
        if roles.setdefault(secret, read_only) != read_only:
            raise AuthConfigError("the same token is given as read-only and as read-write")
    if settings.protect_reads and not roles:
        raise AuthConfigError(
            "TUNEFLEET_PROTECT_READS needs a token: set TUNEFLEET_API_TOKEN or TUNEFLEET_API_TOKENS_FILE"
        )
    return TokenTable(tuple(ApiToken(_digest(s), ro) for s, ro in roles.items()))


def _credentials(scope: Scope, *, allow_basic: bool) -> bytes | None:
    header = next((v for k, v in scope.get("headers", ()) if k == b"authorization"), None)
    if header is None:
        return None
    scheme, _, value = header.strip().partition(b" ")
    if scheme.lower() == b"bearer":
        return value.strip() or None
    if scheme.lower() == b"basic" and allow_basic:
        # A browser can send Basic but not Bearer: with reads protected, the dashboard is opened with
        # any user name and the token as password. Reads only: a browser resends cached Basic
        # credentials on cross-site requests, so accepting them for writes would invite CSRF.
        try:
            decoded = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
        return decoded.partition(b":")[2] or None
    return None


class AuthMiddleware:
    """401 without a known token, 403 for a read-only token on a mutating request; open reads stay open."""

    def __init__(self, app: ASGIApp, *, tokens: TokenTable, protect_reads: bool) -> None:
        self.app = app
        self.tokens = tokens
        self.protect_reads = protect_reads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.tokens:
            await self.app(scope, receive, send)
            return
        method = str(scope["method"]).upper()
        safe = method in SAFE_METHODS
        path = str(scope["path"])
        root_path = str(scope.get("root_path", ""))
        if root_path and path.startswith(root_path):
            path = path[len(root_path) :] or "/"
        if safe and (not self.protect_reads or path in OPEN_PATHS):
            await self.app(scope, receive, send)
            return
        token = self.tokens.match(_credentials(scope, allow_basic=safe))
        error: TunefleetError
        headers: dict[str, str] | None = None
        if token is None:
            error = AuthenticationRequired("a valid token is required: send Authorization: Bearer <token>")
            challenge = 'Bearer realm="tunefleet"'
            if safe and not path.startswith("/v1/"):
                # Lets a browser prompt for the token when the dashboard's reads are protected.
                challenge += ', Basic realm="tunefleet", charset="UTF-8"'
            headers = {"WWW-Authenticate": challenge}
        elif token.read_only and not safe:
            error = PermissionDenied("this token is read-only")
        else:
            await self.app(scope, receive, send)
            return
        log.info("%s %s refused: %s", method, path, error.code)
        await domain_error_response(error, headers)(scope, receive, send)
