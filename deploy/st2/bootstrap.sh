#!/bin/bash
# One-shot bootstrap of the compose stack's StackStorm (runs in the st2 worker image built from
# deploy/st2-packs): registers the packs baked into the image, then loads whale's API key so that
# whale (WHALE_ST2_API_KEY) can call the API. Idempotent. Only the key's salted SHA-512 is
# stored, the way StackStorm stores keys (st2common/util/hash.py).
set -euo pipefail
CONF=(--config-file /etc/st2/st2.conf --config-file /etc/st2/st2.docker.conf --config-file /etc/st2/st2.user.conf)

# st2api answers 401 without credentials once it is up.
until curl -s -o /dev/null -w '%{http_code}' http://st2api:9101/v1/ | grep -qE '^(200|401)$'; do
  echo "waiting for st2api"; sleep 5
done

st2-register-content "${CONF[@]}" --register-all --register-fail-on-failure

st2 login "${ST2_ADMIN_USER:-st2admin}" -p "${ST2_ADMIN_PASSWORD:-ChangeMe}" -w >/dev/null
hash=$(WHALE_KEY="$WHALE_ST2_API_KEY" python3 -c 'import hashlib, os; print(hashlib.sha512(b"saltnpepper" + os.environ["WHALE_KEY"].encode()).hexdigest())')
cat >/tmp/whale-apikey.json <<JSON
[{"user": "${ST2_ADMIN_USER:-st2admin}", "key_hash": "$hash", "metadata": {"used_by": "whale"}, "enabled": true}]
JSON
# A second run finds the key already there (same hash): not an error.
st2 apikey load /tmp/whale-apikey.json || echo "whale's API key was already loaded"
echo "StackStorm ready: packs registered, whale's API key loaded"
