"""Google's credential side as the simulator plays it: service-account keys it can verify, the token endpoint's
grants, the access tokens it issued, and the GCE metadata server's answers."""

from __future__ import annotations

import base64
import binascii
import json
import math
import secrets
import time
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

PROJECT = "sim-project"
SERVICE_ACCOUNT = "batchrun-sim@sim-project.iam.gserviceaccount.com"
TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"  # google-auth's JWT aud, whatever token_uri is
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
METADATA = {  # text answers of the metadata server, by path under /computeMetadata/v1
    "/": "instance/\nproject/\n",
    "/project/project-id": PROJECT,
    "/universe/universe-domain": "googleapis.com",
    "/instance/service-accounts/default/": "aliases\nemail\nscopes\ntoken\n",
    "/instance/service-accounts/default/email": SERVICE_ACCOUNT,
}
_PUBLIC_KEYS: dict[str, rsa.RSAPublicKey] = {}  # private_key_id -> key, for make_service_account_info's keys


class TokenStore:
    """Access tokens this simulator issued; expired or revoked ones are refused."""

    def __init__(self) -> None:
        self._expiry: dict[str, float] = {}
        self._period: float | None = None
        self._next_revoke = math.inf

    def issue(self, now: float, ttl_s: int, revoke_every_s: float | None) -> str:
        """A new opaque token shaped like Google's, issued after any revocation now due."""
        self._revoke_due(now, revoke_every_s)
        token = f"ya29.sim-{secrets.token_urlsafe(24)}"
        self._expiry[token] = now + ttl_s
        return token

    def valid(self, token: str, now: float, revoke_every_s: float | None) -> bool:
        """Whether the token was issued here, has not expired and survived every revocation."""
        self._revoke_due(now, revoke_every_s)
        return self._expiry.get(token, -math.inf) > now

    def revoke_all(self) -> None:
        """Invalidate every token issued so far."""
        self._expiry.clear()

    def _revoke_due(self, now: float, period: float | None) -> None:
        """Apply periodic revocation lazily: a period starts when it is first seen."""
        if period != self._period:
            self._period, self._next_revoke = period, now + period if period else math.inf
        elif now >= self._next_revoke and period:
            self.revoke_all()
            self._next_revoke += period * (math.floor((now - self._next_revoke) / period) + 1)


def make_service_account_info(token_uri: str, *, client_email: str = SERVICE_ACCOUNT) -> dict[str, str]:
    """A service-account key file's contents with a fresh RSA key this simulator can verify."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_id = secrets.token_hex(20)
    _PUBLIC_KEYS[key_id] = key.public_key()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return {
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": key_id,
        "private_key": pem.decode(),
        "client_email": client_email,
        "client_id": str(secrets.randbelow(10**21)).zfill(21),
        "token_uri": token_uri,
    }


def grant_problem(form: Mapping[str, Any]) -> tuple[str, str] | None:
    """Why the token endpoint refuses this form (OAuth error, description), or None."""
    grant = form.get("grant_type")
    if grant == JWT_GRANT:
        return _jwt_problem(str(form.get("assertion", "")))
    if grant != "refresh_token":
        return "unsupported_grant_type", f"Invalid grant_type: {grant!r}"
    if not all(form.get(k) for k in ("client_id", "client_secret", "refresh_token")):
        return "invalid_request", "client_id, client_secret and refresh_token are required."
    return None


def _jwt_problem(assertion: str) -> tuple[str, str] | None:
    """Why Google's token endpoint would refuse this assertion, or None; signatures checked when known."""
    try:
        head_b64, payload_b64, signature_b64 = assertion.split(".")
        header, payload = json.loads(_unb64(head_b64)), json.loads(_unb64(payload_b64))
        signature = _unb64(signature_b64)
    except (ValueError, binascii.Error):
        return "invalid_grant", "Invalid JWT: malformed assertion."
    if not isinstance(header, dict) or not isinstance(payload, dict):
        return "invalid_grant", "Invalid JWT: malformed assertion."
    if payload.get("aud") != TOKEN_AUDIENCE:
        return "invalid_grant", "Invalid JWT: Failed audience check."
    if not payload.get("scope"):
        return "invalid_scope", "Invalid OAuth scope or ID token audience provided."
    expiry = payload.get("exp")
    if not isinstance(expiry, int | float) or expiry < time.time():
        return "invalid_grant", "Invalid JWT: Token must be a short-lived token and in a reasonable timeframe."
    key = _PUBLIC_KEYS.get(str(header.get("kid")))
    if key is None:
        return None  # a key made in another process: its signature cannot be checked here
    try:
        key.verify(signature, f"{head_b64}.{payload_b64}".encode(), padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return "invalid_grant", "Invalid JWT Signature."
    return None


def _unb64(text: str) -> bytes:
    """Decode base64url without padding, as JWTs carry it."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
