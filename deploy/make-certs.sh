#!/usr/bin/env bash
# Make a site CA, a broker certificate and one client certificate per gateway, for
# Mosquitto (deploy/mosquitto-tls.conf) and massgate's mqtt.ca_file/client_cert/client_key.
#
#   deploy/make-certs.sh --dir /srv/site-pki --broker broker.plant-a.example \
#       --broker-ip 10.20.0.5 --gateway gw-tankfarm-1 --gateway gw-line-2
#
# Run it again to add gateways: the CA and the certificates already made are kept (--renew
# re-issues the broker's and the gateways' certificates from the same CA).
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: make-certs.sh --dir DIR --broker HOSTNAME [--broker-ip IP]... [--gateway ID]...
                     [--days N] [--renew] [--help]

  --dir DIR         where the CA and the certificates are kept (created, mode 0700)
  --broker HOST     the broker's host name, as the gateways write it in mqtt.brokers
  --broker-ip IP    also valid for this address (repeatable)
  --gateway ID      a client certificate with CN=ID for one gateway (repeatable)
  --days N          validity of the broker and gateway certificates (default 825)
  --renew           re-issue the broker and gateway certificates (the CA is kept)

Writes DIR/ca.pem (give it to every gateway and the broker), DIR/ca.key (keep it offline),
DIR/broker.pem + broker.key (for Mosquitto), DIR/gateways/ID.pem + ID.key (for the gateway
ID: /etc/massgate/client.pem and client.key, mode 0640 root:massgate).
USAGE
}

DIR=""
BROKER=""
IPS=()
GATEWAYS=()
DAYS=825
RENEW=0
while [ $# -gt 0 ]; do
    case "$1" in
        --dir) DIR="${2:?}"; shift 2 ;;
        --broker) BROKER="${2:?}"; shift 2 ;;
        --broker-ip) IPS+=("${2:?}"); shift 2 ;;
        --gateway) GATEWAYS+=("${2:?}"); shift 2 ;;
        --days) DAYS="${2:?}"; shift 2 ;;
        --renew) RENEW=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "make-certs.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done
[ -n "$DIR" ] && [ -n "$BROKER" ] || { usage >&2; exit 2; }
command -v openssl >/dev/null || { echo "make-certs.sh: openssl is missing (apt-get install openssl)" >&2; exit 1; }
for id in "${GATEWAYS[@]}"; do
    case "$id" in
        *[!A-Za-z0-9_.-]*|"") echo "make-certs.sh: gateway id '$id': letters, digits, '_', '-', '.' only" >&2; exit 2 ;;
    esac
done

umask 077
mkdir -p "$DIR/gateways"
cd "$DIR"
EC=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)

if [ ! -f ca.pem ]; then
    openssl req -x509 "${EC[@]}" -days 3650 -keyout ca.key -out ca.pem -subj "/CN=massgate site CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    echo "made the site CA: $DIR/ca.pem (keep ca.key offline)"
fi

issue() {  # issue NAME SUBJECT EXTENSIONS
    local name="$1" subject="$2" ext="$3"
    if [ -f "$name.pem" ] && [ "$RENEW" = 0 ]; then
        echo "kept $DIR/$name.pem"
        return
    fi
    printf '%s\n' "$ext" > "$name.ext"
    openssl req "${EC[@]}" -keyout "$name.key" -out "$name.csr" -subj "$subject" 2>/dev/null
    openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days "$DAYS" \
        -extfile "$name.ext" -out "$name.pem" 2>/dev/null
    rm -f "$name.csr" "$name.ext"
    echo "issued $DIR/$name.pem"
}

san="DNS:$BROKER"
for ip in "${IPS[@]}"; do san="$san,IP:$ip"; done
issue broker "/CN=$BROKER" "subjectAltName=$san
extendedKeyUsage=serverAuth
keyUsage=critical,digitalSignature"
for id in "${GATEWAYS[@]}"; do
    issue "gateways/$id" "/CN=$id" "extendedKeyUsage=clientAuth
keyUsage=critical,digitalSignature"
done
chmod 0644 ca.pem broker.pem gateways/*.pem 2>/dev/null || true
