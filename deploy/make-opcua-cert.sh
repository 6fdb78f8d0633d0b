#!/usr/bin/env bash
# Make the gateway's OPC UA application certificate (self-signed, as OPC UA servers expect
# from a client), for a device's security.certificate and security.private_key.
#
#   deploy/make-opcua-cert.sh --dir /etc/massgate --gateway gw-tankfarm-1
#
# OPC UA ties the certificate to the client's application URI: massgate takes its URI from
# the certificate's subjectAltName (urn:<host>:massgate:<gateway> here), so the two always
# match. The server must then trust the certificate: see deploy/README.md, "OPC UA".
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: make-opcua-cert.sh --dir DIR --gateway ID [--host NAME] [--days N] [--renew] [--help]

  --dir DIR       where to write opcua-client.der and opcua-client.pem (created, mode 0750)
  --gateway ID    the gateway's id, part of the application URI and the common name
  --host NAME     the host name in the URI and subjectAltName (default: this host's name)
  --days N        validity (default 3650: a plant's servers are re-trusted rarely)
  --renew         make a new certificate even if one exists (the server must trust it again)

Writes DIR/opcua-client.der (the certificate, DER, for the server's trust list and for
security.certificate) and DIR/opcua-client.pem (its RSA 2048 key, for security.private_key).
An existing pair is kept unless --renew is given.
USAGE
}

DIR=""
GATEWAY=""
HOST="$(hostname)"
DAYS=3650
RENEW=0
while [ $# -gt 0 ]; do
    case "$1" in
        --dir) DIR="${2:?}"; shift 2 ;;
        --gateway) GATEWAY="${2:?}"; shift 2 ;;
        --host) HOST="${2:?}"; shift 2 ;;
        --days) DAYS="${2:?}"; shift 2 ;;
        --renew) RENEW=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "make-opcua-cert.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done
if [ -z "$DIR" ] || [ -z "$GATEWAY" ]; then
    usage >&2
    exit 2
fi
case "$GATEWAY$HOST" in
    *[!A-Za-z0-9._-]*) echo "make-opcua-cert.sh: --gateway and --host take letters, digits, '.', '_' and '-'" >&2; exit 2 ;;
esac
command -v openssl >/dev/null || { echo "make-opcua-cert.sh: openssl is needed" >&2; exit 1; }

CERT="$DIR/opcua-client.der"
KEY="$DIR/opcua-client.pem"
if [ -e "$CERT" ] && [ -e "$KEY" ] && [ "$RENEW" = 0 ]; then
    echo "kept $CERT (use --renew for a new one)"
    exit 0
fi
mkdir -p "$DIR"
chmod 0750 "$DIR"
URI="urn:$HOST:massgate:$GATEWAY"
CONF="$(mktemp)"
trap 'rm -f "$CONF"' EXIT
cat >"$CONF" <<EOF
[req]
distinguished_name = name
prompt = no
x509_extensions = ext
[name]
CN = massgate $GATEWAY
O = massgate
[ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, nonRepudiation, keyEncipherment, dataEncipherment
extendedKeyUsage = clientAuth, serverAuth
subjectAltName = URI:$URI, DNS:$HOST
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
umask 077
openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days "$DAYS" -config "$CONF" \
    -keyout "$KEY" -outform DER -out "$CERT" 2>/dev/null
chmod 0640 "$KEY" "$CERT"
if getent group massgate >/dev/null 2>&1; then
    chgrp massgate "$KEY" "$CERT" "$DIR" 2>/dev/null || true
fi
echo "wrote $CERT and $KEY for $URI"
echo "next: copy $CERT into the OPC UA server's trusted certificates (see deploy/README.md)"
