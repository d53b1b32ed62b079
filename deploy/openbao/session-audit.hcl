# OpenBao ACL policy of session-audit's token, for Transit mounted at the default
# "transit" (OPENBAO_TRANSIT_MOUNT). With another mount, replace "transit/" in each path.
#
#   bao policy write session-audit deploy/openbao/session-audit.hcl
#   bao token create -orphan -policy=session-audit -no-default-policy -period=768h \
#       -display-name=session-audit -field=token > session-audit.token   # OPENBAO_TOKEN_FILE
#
# Encrypt only: no decrypt, rewrap, datakey, sign or HMAC, no reading, creating, rotating,
# configuring or deleting keys. Verified against OpenBao 2.7.2 by tests/test_openbao_policy.py.

# The tenant data keys tenant_<uuid>_data. A "*" is a glob only at the END of an ACL path:
# "transit/encrypt/tenant_*_data" is accepted without a word but matches nothing (the "*" is
# literal), and "+" stands only for a whole segment. So this prefix also lets the token
# encrypt with any other Transit key named tenant_..., the credential keys tenant_<uuid>
# included, and no static deny can carve those out (each differs from its data key only by
# what follows the uuid). Encrypting is all it can do with them: no decrypt, no key material.
# Where that is too much, the platform writes one exact rule per tenant when it creates the
# tenant's keys, e.g. path "transit/encrypt/tenant_<uuid>_data" { capabilities = ["update"] },
# instead of this prefix.
#
# "update" without "create": Transit handles an encrypt with a missing key as a create (it
# would make the key), so without "create" it is refused with 403 and no key appears.
path "transit/encrypt/tenant_*" {
  capabilities = ["update"]
}

# Start-up check and renewal of the token itself (the token is created without the
# "default" policy, which would grant much more).
path "auth/token/lookup-self" {
  capabilities = ["read"]
}

path "auth/token/renew-self" {
  capabilities = ["update"]
}

# Tells a missing key (update granted, yet 403) from a refused token on encrypt.
path "sys/capabilities-self" {
  capabilities = ["update"]
}
