"""A minimal S3 client for the tests: they write objects into the store (SigV4-signed PUT and
DELETE with the standard library), and read them back through Shoal."""

import datetime
import hashlib
import hmac
import urllib.parse
import urllib.request


class Store:
    def __init__(self, endpoint, access_key, secret_key, region="us-east-1"):
        self.endpoint = endpoint.rstrip("/")
        self.access_key, self.secret_key, self.region = access_key, secret_key, region

    def _request(self, method, path, body=b""):
        url = self.endpoint + urllib.parse.quote(path, safe="/-_.~")
        parsed = urllib.parse.urlparse(url)
        now = datetime.datetime.now(datetime.timezone.utc)
        amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        payload_hash = hashlib.sha256(body).hexdigest()
        headers = {"host": parsed.netloc, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date}
        signed = ";".join(sorted(headers))
        canonical = "\n".join([method, parsed.path, "", "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)), signed, payload_hash])
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])

        def h(key, msg):
            return hmac.new(key, msg.encode(), hashlib.sha256).digest()

        key = h(h(h(h(("AWS4" + self.secret_key).encode(), day), self.region), "s3"), "aws4_request")
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"
        req = urllib.request.Request(url, data=body if method == "PUT" else None, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.read()

    def create_bucket(self, bucket):
        try:
            self._request("PUT", f"/{bucket}")
        except urllib.error.HTTPError as e:
            if e.code != 409:
                raise

    def put(self, bucket, key, data):
        self._request("PUT", f"/{bucket}/{key}", bytes(data))

    def delete(self, bucket, key):
        self._request("DELETE", f"/{bucket}/{key}")
