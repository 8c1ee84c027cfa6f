#!/usr/bin/env bash
# Make sure the real peers the demo and the tests use are installed:
# DCMTK (dcmqrscp, storescu, findscu) and Orthanc with its DICOMweb plugin.
# Installs the Debian packages when they are missing and we may (root or sudo).
set -euo pipefail
missing=()
command -v dcmqrscp >/dev/null 2>&1 || missing+=(dcmtk)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)  # TLS test certificates
[ -x /usr/sbin/Orthanc ] || command -v Orthanc >/dev/null 2>&1 || missing+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing+=(orthanc-dicomweb)
# OAuth tests: Node.js runs oidc-provider; gnome-keyring in a dbus session is the real keyring.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v gnome-keyring-daemon >/dev/null 2>&1 || missing+=(gnome-keyring)
command -v dbus-run-session >/dev/null 2>&1 || missing+=(dbus)
command -v secret-tool >/dev/null 2>&1 || missing+=(libsecret-tools)

# oidc-provider (npm), pinned by tests/oauth_server/package-lock.json; node_modules is not committed.
oauth_npm() {
  local dir
  dir="$(cd "$(dirname "$0")/.." && pwd)/tests/oauth_server"
  if [ ! -d "$dir/node_modules/oidc-provider" ] \
     || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
    echo "installing oidc-provider for the OAuth tests (npm ci in $dir)" >&2
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  fi
}

# sekmet-fhir, the tests' FHIR R4 server, lives in its own venv (.venv-peers/) so that
# its dependencies (FastAPI, uvicorn, fhir.resources ...) never mix with medimg's.
SEKMET_VERSION=0.1.1
peers_venv="$(cd "$(dirname "$0")/.." && pwd)/.venv-peers"
if ! "$peers_venv/bin/sekmet" --version 2>/dev/null | grep -qx "sekmet-fhir $SEKMET_VERSION"; then
  echo "installing sekmet-fhir $SEKMET_VERSION into $peers_venv (the test FHIR server)" >&2
  python3 -m venv "$peers_venv"
  "$peers_venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "sekmet-fhir==$SEKMET_VERSION"
fi

if [ ${#missing[@]} -eq 0 ]; then oauth_npm; exit 0; fi

echo "installing the test peers: ${missing[*]} (Debian packages)" >&2
if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else
  echo "please install them: apt-get install ${missing[*]}" >&2; exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q >/dev/null
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
oauth_npm
