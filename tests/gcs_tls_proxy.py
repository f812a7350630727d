"""TLS on a loopback port, forwarded to fake-gcs-server's plain HTTP port, with the three
rewrites TensorFlow's GCS client needs (docs/cloud_storage.md, "The TensorFlow path"): request
bodies de-chunked, the upload `Location` pointed back at Google's host name, and a bucket's
`storageLayout` answered. Used by hand, as root, to check that path; tested in
tests/test_cloud_storage.py.

Usage: python tests/gcs_tls_proxy.py LISTEN_PORT UPSTREAM_PORT CERT.pem KEY.pem
(LISTEN_PORT 443 for TensorFlow, which has Google's endpoints compiled in.)
"""

import http.client
import http.server
import json
import ssl
import sys

UPSTREAM = ("127.0.0.1", int(sys.argv[2]))
DROPPED = {"connection", "keep-alive", "transfer-encoding", "te", "expect", "content-length"}


class Forward(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                data += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b""):
                pass
            return data
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def forward(self) -> None:
        body = self.body()
        if self.path.split("?")[0].endswith("/storageLayout"):
            layout = {"kind": "storage#storageLayout", "hierarchicalNamespace": {"enabled": False}}
            return self.reply(
                200, "OK", [("Content-Type", "application/json")], json.dumps(layout).encode()
            )
        headers = {k: v for k, v in self.headers.items() if k.lower() not in DROPPED}
        upstream = http.client.HTTPConnection(*UPSTREAM, timeout=60)
        upstream.request(self.command, self.path, body=body, headers=headers)
        answer = upstream.getresponse()
        self.reply(answer.status, answer.reason, answer.getheaders(), answer.read())

    def reply(self, status: int, reason: str, headers: list, data: bytes) -> None:
        self.send_response(status, reason)
        for key, value in headers:
            if key.lower() == "location":
                value = "https://www.googleapis.com/" + value.split("/", 3)[3]
            if key.lower() not in DROPPED:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = forward

    def log_message(self, *args) -> None:
        pass


if __name__ == "__main__":
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Forward)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[3], sys.argv[4])
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print("serving", flush=True)
    server.serve_forever()
