#!/bin/sh
# Guest job (Tools/vm.sh run Tools/vm-jobs/ktls.sh): a worker with TLS on a kernel that has
# tls.ko, read by a client; checks the bytes and whether kernel TLS carried the replies.
# Needs a static build first:
#   swift build -c release --product shoal --static-swift-stdlib --scratch-path .build-vm
set -eu
shoal=/repo/.build-vm/release/shoal
[ -x "$shoal" ] || { echo "no $shoal: build it with --static-swift-stdlib --scratch-path .build-vm"; exit 1; }
w=/root/ktls; rm -rf "$w"; mkdir -p "$w/store/bkt" "$w/cache"; cd "$w"
head -c 67108864 /dev/urandom > store/bkt/obj
(umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > secret)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=shoal-vm-ca \
    -keyout ca.key -out ca.pem 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=shoal-worker \
    -keyout worker.key -out worker.csr 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' > ext.cnf
openssl x509 -req -in worker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile ext.cnf -out worker.pem 2>/dev/null
chmod 600 worker.key
cat > worker.yaml <<YAML
listen: 127.0.0.1:17070
admin: 127.0.0.1:17071
secretFile: secret
buffers: 8
caches:
  - path: cache
    capacity: 512MiB
    regionSize: 64MiB
stores:
  - name: default
    type: file
    root: store
tls:
  certFile: worker.pem
  keyFile: worker.key
YAML
"$shoal" worker --config worker.yaml --log-level notice > worker.log 2>&1 &
worker=$!
client="--worker 127.0.0.1:17070 --secret-file secret --tls-ca ca.pem"
for i in $(seq 1 600); do "$shoal" stat s3://bkt/obj $client > /dev/null 2>&1 && break; sleep 0.5; done
echo "kernel: $(uname -r); tls module: $(lsmod | grep -c '^tls ') loaded"
echo "--- /proc/net/tls_stat before"; cat /proc/net/tls_stat
"$shoal" cat s3://bkt/obj $client > cold.bin
cmp cold.bin store/bkt/obj && echo "cold read over TLS: byte-exact (64 MiB)"
"$shoal" cat s3://bkt/obj $client > warm.bin
cmp warm.bin store/bkt/obj && echo "warm read over TLS: byte-exact (64 MiB)"
if "$shoal" cat s3://bkt/obj --worker 127.0.0.1:17070 --secret-file secret > /dev/null 2> plain.err; then
    echo "FAIL: a plain client read from a TLS worker"; exit 1
fi
echo "plain client refused: $(cat plain.err)"
echo "--- /proc/net/tls_stat after"; cat /proc/net/tls_stat
echo "--- worker log (TLS lines)"; grep -i "tls" worker.log || true
kill "$worker"; wait "$worker" || true
tx=$(awk '$1 == "TlsTxSw" {print $2}' /proc/net/tls_stat)
[ "${tx:-0}" -gt 0 ] && grep -q "kernel TLS is sending" worker.log && echo "RESULT: kernel TLS carried the worker's replies" \
    || { echo "RESULT: kernel TLS did not take effect"; exit 1; }
