#!/bin/sh
# What the platform does for session-audit in OpenBao, for a development stack (compose's
# openbao-init job): Transit mounted, the service's policy and token, and a data key per
# sample tenant (the platform creates one when it creates a tenant; the service never does).
#
#   BAO_ADDR, BAO_TOKEN       the server and a token that may do all this (the dev root token)
#   SAMPLE_TENANTS            tenant uuids, space-separated, whose data keys to create
#   SERVICE_TOKEN_FILE        where the service's token is written (OPENBAO_TOKEN_FILE)
#   POLICY_FILE               deploy/openbao/session-audit.hcl as mounted
#   SERVICE_UID               optional: the uid the service runs as, to own the token file
# Running it again changes nothing but the service's token, which is a new one.
set -eu

if ! bao secrets list -format=json | grep -q '"transit/"'; then
  bao secrets enable transit
fi
bao policy write session-audit "$POLICY_FILE"
for tenant in $SAMPLE_TENANTS; do
  # A key that exists is left as it is (Transit's create is idempotent for its type).
  bao write -f "transit/keys/tenant_${tenant}_data" type=aes256-gcm96 >/dev/null
done
umask 077
bao token create -orphan -policy=session-audit -no-default-policy -period=768h \
  -display-name=session-audit -field=token > "$SERVICE_TOKEN_FILE.tmp"
if [ -n "${SERVICE_UID:-}" ]; then
  # The service runs as another user than this job; it alone may read its token.
  chown "$SERVICE_UID" "$SERVICE_TOKEN_FILE.tmp"
fi
chmod 0400 "$SERVICE_TOKEN_FILE.tmp"
mv "$SERVICE_TOKEN_FILE.tmp" "$SERVICE_TOKEN_FILE"
echo "openbao-init: transit, policy session-audit, $(echo $SAMPLE_TENANTS | wc -w) data keys, token in $SERVICE_TOKEN_FILE"
