#!/usr/bin/env bash
# Debian packages the test suite needs. Installs only what is missing, and only when root;
# otherwise it says what to install and the tests that need it are skipped.
set -euo pipefail

need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v softhsm2-util >/dev/null 2>&1 || need+=(softhsm2)  # PKCS#11 key store and seal tests
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)  # nginx end to end (docs/nginx.md)
ls /usr/lib/*/engines-3/pkcs11.so >/dev/null 2>&1 || need+=(libengine-pkcs11-openssl)  # nginx's key through PKCS#11
command -v swtpm >/dev/null 2>&1 || need+=(swtpm)  # a software TPM 2.0 for the TPM tests (tests/helpers/swtpm.py)
command -v swtpm_setup >/dev/null 2>&1 || need+=(swtpm-tools)  # swtpm_setup and its local CA: EKs with certificates
command -v tpm2_quote >/dev/null 2>&1 || need+=(tpm2-tools)  # quotes, credentials, tpm2_checkquote as a second verifier
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)  # replicas behind HAProxy (docs/ha.md)
command -v jq >/dev/null 2>&1 || need+=(jq)  # docs/ha.md's and docs/tpm.md's commands, run by their doc tests
command -v curl >/dev/null 2>&1 || need+=(curl)  # docs/ha.md's and docs/nginx.md's commands
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)  # systemd-analyze verify of packaging/keybroker.service
command -v chromium >/dev/null 2>&1 || need+=(chromium)  # the console's browser tests (Playwright drives it; no browser download)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)  # WebDriver for the same browser
[ -f /usr/share/OVMF/OVMF_CODE_4M.fd ] || need+=(ovmf)  # firmware for the SEV-SNP launch measurement tests

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-system-deps: not root; missing Debian packages: ${need[*]} (tests needing them will be skipped)" >&2
  exit 0
fi
echo "install-system-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
