"""Google's OAuth2 token endpoint for service accounts: the JWT-bearer grant (RFC 7523).

google-auth signs a JWT with the service account's private key and POSTs it to the key file's
``token_uri`` as ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>``. This
emulator checks the signature against the public key of an account it created, the audience
(Google's token endpoint), the issuer, the scope and the expiry, and answers
``{"access_token", "expires_in", "token_type"}`` or Google's ``{"error", "error_description"}``
with status 400. It counts its calls, remembers which tokens it issued (so the Vertex emulator
can check them) and can issue short-lived tokens.

    oauth = OAuthEmulator()
    with serve(oauth.app) as url:
        key_file = oauth.service_account_file(tmp_path, token_uri=f"{url}/token")
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import google.auth.exceptions
import google.auth.jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

__all__ = ["AUDIENCE", "CLOUD_PLATFORM", "JWT_BEARER", "OAuthEmulator"]

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
# The audience Google requires in the assertion, whatever token_uri the key file names.
AUDIENCE = "https://oauth2.googleapis.com/token"


class OAuthEmulator:
    """The token endpoint at ``/token``; ``lifetime`` is the ``expires_in`` of the next tokens."""

    def __init__(self, *, lifetime: int = 3600) -> None:
        self.lifetime = lifetime
        self.calls = 0
        self.refuse_with: str | None = None
        """An OAuth error code (``invalid_grant``...) to answer every call with, when set."""
        self._public_keys: dict[str, bytes] = {}
        self._tokens: dict[str, float] = {}
        self._serial = itertools.count(1)
        self.app = Starlette(routes=[Route("/token", self._token, methods=["POST"])])

    def service_account_file(
        self, directory: Path, *, token_uri: str, project_id: str = "emu-project"
    ) -> Path:
        """Write a real service-account key file (fresh RSA key) whose tokens come from here."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_id = f"key-{next(self._serial)}"
        email = f"gateway-{key_id}@{project_id}.iam.gserviceaccount.com"
        self._public_keys[email] = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        private_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        path = directory / f"{key_id}.json"
        info = {
            "type": "service_account",
            "project_id": project_id,
            "private_key_id": key_id,
            "private_key": private_pem,
            "client_email": email,
            "client_id": "1234567890",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
        }
        path.write_text(json.dumps(info))
        return path

    def valid(self, token: str) -> bool:
        """Whether ``token`` was issued here and has not expired or been revoked."""
        expiry = self._tokens.get(token)
        return expiry is not None and expiry > time.time()

    def revoke_all(self) -> None:
        """Forget every token issued so far (Vertex then answers 401 to them)."""
        self._tokens.clear()

    async def _token(self, request: Request) -> JSONResponse:
        self.calls += 1
        if request.headers.get("content-type") != "application/x-www-form-urlencoded":
            return _error("invalid_request", "Expected an application/x-www-form-urlencoded body.")
        form = {key: values[0] for key, values in parse_qs((await request.body()).decode()).items()}
        if self.refuse_with is not None:
            return _error(self.refuse_with, "Refused by the test.")
        if form.get("grant_type") != JWT_BEARER:
            return _error("unsupported_grant_type", f"Invalid grant_type: {form.get('grant_type')}")
        claims = self._verify(form.get("assertion", ""))
        if claims is None:
            return _error("invalid_grant", "Invalid JWT Signature.")
        if CLOUD_PLATFORM not in str(claims.get("scope", "")).split():
            return _error("invalid_scope", "Invalid OAuth scope or ID token audience provided.")
        token = f"ya29.emu-{next(self._serial)}"
        self._tokens[token] = time.time() + self.lifetime
        return JSONResponse(
            {"access_token": token, "expires_in": self.lifetime, "token_type": "Bearer"}
        )

    def _verify(self, assertion: str) -> dict[str, Any] | None:
        try:
            unverified = google.auth.jwt.decode(assertion, verify=False)
            public_key = self._public_keys.get(str(unverified.get("iss")))
            if public_key is None:
                return None
            claims: dict[str, Any] = google.auth.jwt.decode(
                assertion, certs=public_key, audience=AUDIENCE
            )
        except (ValueError, google.auth.exceptions.GoogleAuthError):
            return None
        return claims


def _error(code: str, description: str) -> JSONResponse:
    return JSONResponse({"error": code, "error_description": description}, status_code=400)
