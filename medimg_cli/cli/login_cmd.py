"""`medimg login PROFILE`, `medimg token PROFILE`, `medimg logout PROFILE`.

Secrets go to the OS keyring only (service `medimg`); see medimg_cli/secrets.py
and medimg_cli/auth/.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer

from medimg_cli.cli.options import ProfileArg, runtime
from medimg_cli.errors import RefusedError, UsageError

if TYPE_CHECKING:
    from medimg_cli.cli.runtime import Runtime
    from medimg_cli.config import Profile

# The keyring entry and the prompt for each non-OAuth `auth` kind.
_STATIC = {
    "basic": ("password", "Password"),
    "bearer": ("token", "Bearer token"),
    "api-key": ("api_key", "API key"),
}
# DIMSE profiles with a user identity (dimse/user_identity.py): keyring entry and label.
_DIMSE_IDENTITY = {
    "username-passcode": ("passcode", "Passcode"),
    "jwt": ("identity_token", "JSON Web Token"),
    "saml": ("identity_token", "SAML assertion"),
}


def _need_http(profile: Profile, command: str) -> str:
    if profile.type == "dimse":
        identity = profile.get("user_identity")
        if identity in _DIMSE_IDENTITY:
            return str(identity)
        raise UsageError(
            f"`{command}` is for dicomweb and fhir profiles, and dimse profiles whose "
            "user_identity needs a secret; '"
            f"{profile.name}' is a dimse profile with "
            + (f"user_identity = \"{identity}\" (no secret)" if identity else
               "no user_identity"),
            hint="set user_identity = \"username-passcode\", \"jwt\" or \"saml\" if the "
            "PACS asks for one")
    if profile.type not in ("dicomweb", "fhir"):
        raise UsageError(
            f"`{command}` is for dicomweb and fhir profiles; '{profile.name}' is a "
            f"{profile.type} profile")
    kind = str(profile.get("auth", "none"))
    if kind == "none":
        raise UsageError(f"profile '{profile.name}' has auth = \"none\": nothing to log in to",
                         hint="set auth = \"basic\", \"bearer\", \"api-key\" or \"oauth\"")
    if kind == "oauth":
        from medimg_cli.dicomweb.client import tls_for

        tls_for(profile)  # a bad ca_file/cert_file: one line here, not an ssl error later
    return kind


def _read_secret(rt: Runtime, label: str, from_stdin: bool, env: str | None = None) -> str:
    if from_stdin:
        value = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            unset = f"${env} is not set and " if env else ""
            raise UsageError(f"cannot prompt for the {label.lower()}: {unset}stdin is not a "
                             "terminal", hint="pipe it in with --stdin"
                             + (f", or set {env} (the profile's client_secret_env)"
                                if env else ""))
        import getpass

        value = getpass.getpass(f"{label}: ")
    if not value:
        raise UsageError(f"empty {label.lower()}; nothing stored")
    return value


def login_command(
    ctx: typer.Context,
    profile_name: ProfileArg,
    *,
    stdin: Annotated[
        bool, typer.Option("--stdin", help="Read the password, key or client secret from "
                           "stdin (one line) instead of prompting.")
    ] = False,
    no_browser: Annotated[
        bool, typer.Option("--no-browser", help="Authorization code flow: print the login URL "
                           "instead of opening a browser.")
    ] = False,
    keygen: Annotated[
        bool, typer.Option("--keygen", help="Backend Services: create a key pair at "
                           "oauth.private_key_file and print the public JWKS to give to the EHR.")
    ] = False,
    alg: Annotated[
        str | None, typer.Option("--alg", metavar="ALG", help="--keygen: RS384 or ES384 "
                                 "(default: oauth.alg, else RS384).", show_default=False)
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="--keygen: replace an existing private key.")
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", metavar="SECONDS", min=1,
                            help="How long to wait for the browser or device login.")
    ] = 300.0,
) -> None:
    """Log in: store a password / key in the keyring, or run the profile's OAuth flow.

    basic, bearer and api-key profiles: prompt (hidden) or --stdin. OAuth
    profiles (oauth.flow): authorization-code (browser, PKCE, loopback
    redirect), device (code to enter elsewhere), client-credentials, or
    backend-services (signed assertion; --keygen makes the key pair).
    """
    rt = runtime(ctx)
    profile = rt.profile(profile_name)
    kind = _need_http(profile, "login")
    if (keygen or alg or force) and kind != "oauth":
        raise UsageError(f"--keygen, --alg and --force are for oauth.flow = "
                         f"\"backend-services\"; profile '{profile.name}' uses {kind}")
    if kind in _STATIC or kind in _DIMSE_IDENTITY:
        from medimg_cli.secrets import keyring_available, keyring_set

        entry, label = _STATIC[kind] if kind in _STATIC else _DIMSE_IDENTITY[kind]
        if not keyring_available():
            keyring_set(profile.name, entry, "", label.lower())  # raises the one-line error
        value = _read_secret(rt, label, stdin)
        keyring_set(profile.name, entry, value, label.lower())
        rt.info(f"Stored the {label.lower()} of profile '{profile.name}' in the keyring.")
        return
    if keygen:
        _keygen(rt, profile, alg, force)
        return
    _oauth_login(rt, profile, stdin=stdin, open_browser=not no_browser, timeout=timeout)


def _keygen(rt: Runtime, profile: Profile, alg: str | None, force: bool) -> None:
    from medimg_cli.auth import keys
    from medimg_cli.auth.settings import settings_for
    from medimg_cli.storage import write_atomic

    settings = settings_for(profile)
    if settings.flow != "backend-services":
        raise UsageError(f"--keygen is for oauth.flow = \"backend-services\"; profile "
                         f"'{profile.name}' uses {settings.flow}")
    chosen = (alg or settings.alg or "RS384").upper()
    if chosen not in keys.ALGS:
        raise UsageError(f"--alg {alg}: expected RS384 or ES384")
    if settings.alg and settings.alg != chosen:
        raise UsageError(f"--alg {chosen} does not match oauth.alg = \"{settings.alg}\"")
    if settings.private_key_file.is_dir():
        raise UsageError(f"oauth.private_key_file {settings.private_key_file} is a folder",
                         hint="name the key file to create in it, e.g. "
                         f"{settings.private_key_file / (profile.name + '.pem')}")
    key = keys.generate_key(chosen)
    jwks = {"keys": [keys.public_jwk(key, chosen, settings.key_id)]}
    text = json.dumps(jwks, indent=2) + "\n"
    jwks_path = settings.private_key_file.with_name(
        settings.private_key_file.stem + ".jwks.json")
    try:
        keys.write_private_key(key, settings.private_key_file, force=force)
        write_atomic(jwks_path, text.encode())
    except OSError as exc:
        raise UsageError(f"cannot write the key pair at oauth.private_key_file "
                         f"{settings.private_key_file}: {exc.strerror or exc}",
                         hint="name a file in a folder you can write to") from None
    rt.stdout.write(text)
    rt.stdout.flush()
    rt.info(f"Wrote the private key to {settings.private_key_file} (owner-only) and the public "
            f"JWK Set to {jwks_path}. Register the JWK Set (kid {jwks['keys'][0]['kid']}) with "
            f"the EHR for client '{settings.client_id}', then run `medimg login {profile.name}`.")


def _say(rt: Runtime) -> Callable[[str], None]:
    """Login instructions (URL, device code) reach stderr even with -q."""

    def say(message: str) -> None:
        rt.stderr.write(message + "\n")
        rt.stderr.flush()

    return say


def _oauth_login(rt: Runtime, profile: Profile, *, stdin: bool, open_browser: bool,
                 timeout: float) -> None:
    import os

    from medimg_cli.auth import flows
    from medimg_cli.auth.session import save_tokens
    from medimg_cli.auth.settings import http_client, settings_for
    from medimg_cli.secrets import keyring_available, keyring_delete, keyring_get, keyring_set

    settings = settings_for(profile)
    if not keyring_available():
        # Fail before the user logs in: there would be nowhere to keep the tokens.
        keyring_set(profile.name, "oauth", "", "OAuth tokens")
    stored_secret = False
    if settings.flow == "client-credentials":
        env = settings.client_secret_env
        if not (env and os.environ.get(env)) and (stdin or not keyring_get(profile.name,
                                                                          "client_secret")):
            secret = _read_secret(rt, "Client secret", stdin, env)
            keyring_set(profile.name, "client_secret", secret, "OAuth client secret")
            stored_secret = True
    try:
        with http_client(settings) as http:
            tokens = flows.login(settings, http, _say(rt), open_browser=open_browser,
                                 timeout=timeout)
    except BaseException:
        if stored_secret:
            keyring_delete(profile.name, "client_secret")
        raise
    save_tokens(profile.name, tokens)
    left = tokens.seconds_left()
    expiry = f"; the access token expires in {int(left)} s" if left is not None else ""
    renew = ("; it is refreshed by itself" if tokens.refresh_token or not settings.interactive
             else "")
    rt.info(f"Logged in to '{profile.name}' ({settings.flow}, scopes: {tokens.scope or '-'})"
            f"{expiry}{renew}.")


def token_command(
    ctx: typer.Context,
    profile_name: ProfileArg,
    *,
    print_access_token: Annotated[
        bool, typer.Option("--print-access-token", help="Print a valid access token (refreshed "
                           "if needed) on stdout, for piping into curl.")
    ] = False,
    fmt: Annotated[
        str, typer.Option("--format", "-f", metavar="FORMAT", help="table or json.")
    ] = "table",
) -> int:
    """Show the login of a profile: logged in, expiry, scopes, token endpoint.

    The token itself is shown only with --print-access-token. Exit 4 when not
    logged in.
    """
    rt = runtime(ctx)
    profile = rt.profile(profile_name)
    kind = _need_http(profile, "token")
    if fmt not in ("table", "json"):
        raise UsageError(f"--format {fmt}: `token` writes table or json")
    if kind != "oauth":
        return _static_status(rt, profile, kind, fmt, print_access_token)
    from medimg_cli.auth.session import OAuthSession, load_tokens

    if print_access_token:
        with OAuthSession(profile) as session:
            token = session.access_token()
        rt.stdout.write(token + "\n")
        rt.stdout.flush()
        return 0
    tokens = load_tokens(profile.name)
    status = ({"profile": profile.name, **tokens.status()} if tokens
              else {"profile": profile.name, "logged_in": False})
    if fmt == "json":
        rt.stdout.write(json.dumps(status) + "\n")
    elif tokens is None:
        rt.stdout.write(f"{profile.name}: not logged in (run `medimg login {profile.name}`)\n")
    else:
        left = tokens.seconds_left()
        left = None if left is None else int(left)
        when = ("no expiry given" if left is None else
                f"expired {-left} s ago at {status['expires_at']}" if left <= 0 else
                f"expires in {left} s, at {status['expires_at']}")
        lines = [
            f"{profile.name}: logged in ({status['flow']}, client {status['client_id']})",
            f"  access token: {when}",
            f"  refresh token: {'stored' if status['refresh_token'] else 'none'}",
            f"  scopes: {status['scope'] or '-'}",
            f"  token endpoint: {status['token_endpoint']}",
        ]
        if status["patient"]:
            lines.append(f"  patient context: {status['patient']}")
        if status["revocation_endpoint"]:
            lines.append(f"  revocation endpoint: {status['revocation_endpoint']}")
        rt.stdout.write("\n".join(lines) + "\n")
    rt.stdout.flush()
    return 0 if tokens else 4


def _static_status(rt: Runtime, profile: Profile, kind: str, fmt: str,
                   print_token: bool) -> int:
    from medimg_cli.secrets import keyring_read

    entry, label = _STATIC[kind] if kind in _STATIC else _DIMSE_IDENTITY[kind]
    if print_token:
        raise UsageError(f"--print-access-token is for OAuth profiles; '{profile.name}' uses "
                         f"auth = \"{kind}\"")
    stored = keyring_read(profile.name, entry) is not None
    if fmt == "json":
        rt.stdout.write(json.dumps({"profile": profile.name, "auth": kind,
                                    "stored_in_keyring": stored}) + "\n")
    else:
        rt.stdout.write(f"{profile.name}: {label.lower()} "
                        f"{'stored in the keyring' if stored else 'not in the keyring'}\n")
    rt.stdout.flush()
    return 0 if stored else 4


def logout_command(ctx: typer.Context, profile_name: ProfileArg) -> None:
    """Log out: revoke the tokens at the server when it offers revocation, remove the entries."""
    rt = runtime(ctx)
    profile = rt.profile(profile_name)
    kind = _need_http(profile, "logout")
    from medimg_cli.secrets import keyring_delete

    if kind != "oauth":
        entry, label = _STATIC[kind] if kind in _STATIC else _DIMSE_IDENTITY[kind]
        removed = keyring_delete(profile.name, entry)
        rt.info(f"Removed the {label.lower()} of '{profile.name}' from the keyring."
                if removed else f"'{profile.name}': nothing stored in the keyring.")
        return
    from medimg_cli.auth.session import OAuthSession

    with OAuthSession(profile) as session:
        try:
            removed, revoked = session.logout()
        except RefusedError:
            raise
    if not removed:
        rt.info(f"'{profile.name}': not logged in; nothing to remove.")
    elif revoked:
        rt.info(f"Logged out of '{profile.name}': tokens revoked at the server and removed "
                "from the keyring.")
    else:
        rt.info(f"Logged out of '{profile.name}': tokens removed from the keyring (the server "
                "offers no revocation, or refused it).")
