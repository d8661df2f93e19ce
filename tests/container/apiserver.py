"""The fake API server of tests/integration, run as a process inside the pod's network
namespace (where the agent's container reaches it at 127.0.0.1), serving the pods given.

    python -m tests.container.apiserver TOKEN PODS.json

Prints `listening PORT` once it accepts connections, then serves until killed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tests.integration.kube_apiserver import FakeApiServer


def main(token: str, pods_file: str) -> None:
    server = FakeApiServer(token)
    for obj in json.loads(Path(pods_file).read_text()):
        server.put_pod(obj)
    with server:
        print("listening", server.httpd.server_address[1], flush=True)
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
