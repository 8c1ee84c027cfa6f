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
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing the test peers: ${missing[*]} (Debian packages)" >&2
if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else
  echo "please install them: apt-get install ${missing[*]}" >&2; exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q >/dev/null
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
