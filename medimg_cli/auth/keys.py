"""SMART Backend Services keys: client assertion JWTs (RS384 / ES384), key pairs, JWKS.

The assertion follows the SMART Backend Services spec: `iss` = `sub` = the
client id, `aud` = the token endpoint, a unique `jti`, `exp` at most five
minutes ahead, and `kid` in the header. Signing uses `cryptography`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medimg_cli.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

ALGS = ("RS384", "ES384")
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 240  # seconds; the spec allows at most 300


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_b64(value: int, length: int | None = None) -> str:
    size = length or max(1, (value.bit_length() + 7) // 8)
    return b64url(value.to_bytes(size, "big"))


def load_private_key(path: Path) -> PrivateKeyTypes:
    """The PEM private key at `path` (unencrypted)."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the private key {path}: {exc.strerror or exc}",
            hint="check oauth.private_key_file, or create a key with `medimg login PROFILE "
            "--keygen`",
        ) from None
    try:
        return load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not an unencrypted PEM private key ({type(exc).__name__})",
                          hint="use an RSA (RS384) or EC P-384 (ES384) key in PEM form") from None


def alg_for_key(key: PrivateKeyTypes, wanted: str | None) -> str:
    """The JWS algorithm for this key: the profile's `oauth.alg`, checked, or inferred."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(key, rsa.RSAPrivateKey):
        alg = "RS384"
    elif isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1":
        alg = "ES384"
    else:
        raise ConfigError("the private key is neither RSA nor EC P-384",
                          hint="Backend Services signs with RS384 (RSA) or ES384 (EC P-384)")
    if wanted and wanted != alg:
        raise ConfigError(f"oauth.alg is {wanted} but the private key is for {alg}",
                          hint="fix oauth.alg, or create a matching key with --keygen")
    return alg


def public_jwk(key: PrivateKeyTypes, alg: str, kid: str | None = None) -> dict[str, Any]:
    """The public half of `key` as a JWK, with `kid` (RFC 7638 thumbprint by default)."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    jwk: dict[str, Any]
    if isinstance(key, rsa.RSAPrivateKey):
        numbers = key.public_key().public_numbers()
        jwk = {"e": _int_b64(numbers.e), "kty": "RSA", "n": _int_b64(numbers.n)}
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        pub = key.public_key().public_numbers()
        jwk = {"crv": "P-384", "kty": "EC", "x": _int_b64(pub.x, 48), "y": _int_b64(pub.y, 48)}
    else:  # pragma: no cover - alg_for_key refused it first
        raise ConfigError("unsupported key type")
    thumbprint = b64url(hashlib.sha256(
        json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode()).digest())
    return {**jwk, "alg": alg, "use": "sig", "key_ops": ["verify"], "kid": kid or thumbprint}


def sign_jwt(claims: dict[str, Any], key: PrivateKeyTypes, alg: str, kid: str) -> str:
    """A compact JWS of `claims`, signed RS384 or ES384."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    header = {"alg": alg, "kid": kid, "typ": "JWT"}
    signing_input = (b64url(json.dumps(header, separators=(",", ":")).encode()) + "."
                     + b64url(json.dumps(claims, separators=(",", ":")).encode())).encode()
    if alg == "RS384" and isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA384())
    elif alg == "ES384" and isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA384())))
        signature = r.to_bytes(48, "big") + s.to_bytes(48, "big")
    else:
        raise ConfigError(f"cannot sign {alg} with this key")
    return signing_input.decode() + "." + b64url(signature)


def client_assertion(client_id: str, audience: str, key: PrivateKeyTypes, alg: str,
                     kid: str) -> str:
    """The Backend Services client assertion for one token request."""
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": audience, "jti": uuid.uuid4().hex,
              "iat": now, "exp": now + ASSERTION_LIFETIME}
    return sign_jwt(claims, key, alg, kid)


def generate_key(alg: str) -> PrivateKeyTypes:
    """A new key pair: RSA 3072 for RS384, EC P-384 for ES384."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if alg == "RS384":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    if alg == "ES384":
        return ec.generate_private_key(ec.SECP384R1())
    raise UsageError(f"unknown algorithm {alg}", hint="use RS384 or ES384")


def write_private_key(key: PrivateKeyTypes, path: Path, *, force: bool) -> None:
    """Write the key as PEM, readable by the owner only; refuse to replace one."""
    from cryptography.hazmat.primitives import serialization

    if path.exists() and not force:
        raise UsageError(f"{path} exists already; not replacing the private key",
                         hint="use --force to replace it (the EHR must then get the new JWKS)")
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    os.replace(tmp, path)
