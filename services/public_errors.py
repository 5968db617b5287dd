"""What an owner sees of an error: what went wrong, without the service's addresses.

The database, the logs and MLflow keep every error whole. The API shows owners this
version of it: Ray's errors name node IPs (`ip=10.0.3.7`), `ray://` and http URLs,
`host:port` pairs and worker host names, none of which an owner needs. A message
without such things ("loss became nan at epoch 3 (train_loss)") passes unchanged.
"""
from __future__ import annotations

import ipaddress
import re
import socket

URL_MARK, ADDRESS_MARK = "<url>", "<address>"

# scheme://... up to a space, a quote or a closing bracket: ray://head:10001,
# http://10.0.0.5:8265/api, s3://bucket/key, file:///tmp/x.
URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>()\[\]]+", re.IGNORECASE)

# An IPv6 address, bracketed with a port or bare; ipaddress decides whether a candidate
# is one, so a time such as 12:30:45 or C++'s std::vector stays as it is.
IPV6 = re.compile(r"""
    \[(?P<bracketed>[0-9a-f:.%\w]+)\](?::\d+)?   # [fe80::1]:8265
  | (?<![\w:])                                  # not the end of a longer name
    (?P<bare>[0-9a-f]*:[0-9a-f]*:[0-9a-f:]*      # hex groups, two colons or more
             (?:\d{1,3}(?:\.\d{1,3}){3})?)       # maybe an IPv4 tail: ::ffff:10.0.0.5
    (?!\.?[\w:])                                # no more of it; a full stop may end a sentence
""", re.IGNORECASE | re.VERBOSE)

# Four dotted numbers, maybe with a port: 10.0.3.7, 172.18.0.2:6379.
IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b(?::\d+)?")

# host:port or host:pid, the host a name that starts with a letter (gpu-node-3:6379,
# ray-head.internal:10001, worker-7:48213). Not a torch device (cuda:10), not a single
# digit ("fold:1"), not a file's line ("/app/model.py:12": no name right after a "/").
HOST_PORT = re.compile(r"(?<![\w/.-])(?!(?:cuda|cpu|mps|xpu|meta|hpu):)"
                       r"[a-z][a-z0-9-]*(?:\.[a-z0-9-]+)*:\d{2,7}\b", re.IGNORECASE)


# A host named by what the message says of it, port or not: urllib3's
# HTTPConnectionPool(host='mlflow', port=5000), psycopg's server at "postgres", Ray's
# node name: gpu-node-3, and "mlflow.internal port 5000".
NAMED_HOST = re.compile(r"""(?P<lead>\b(?:host(?:name)?\s*[=:]\s*|server\s+at\s+|node\s+name\s*[=:]?\s*)
                            (?P<quote>['"]?))(?!<)[\w.-]+(?P=quote)""", re.IGNORECASE | re.VERBOSE)
BEFORE_PORT = re.compile(r"(?<![\w/<])[a-z][\w.-]*(?=,?\s+port\s+\d)", re.IGNORECASE)


def public_message(text: str) -> str:
    """`text` with URLs as <url>, IP addresses, host:port and host:pid forms, hosts the
    message names as such, and this machine's host name as <address>."""
    text = URL.sub(URL_MARK, text)
    text = NAMED_HOST.sub(lambda m: f"{m['lead']}{ADDRESS_MARK}{m['quote']}", text)
    text = BEFORE_PORT.sub(ADDRESS_MARK, text)
    text = IPV6.sub(_ipv6_address, text)
    text = IPV4.sub(ADDRESS_MARK, text)
    text = HOST_PORT.sub(ADDRESS_MARK, text)
    host = socket.gethostname()  # named alone too, with no port (ray: "node name: vm")
    return _host_name(host).sub(ADDRESS_MARK, text) if host else text


def _ipv6_address(match: re.Match) -> str:
    candidate = match["bracketed"] or match["bare"]
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return match[0]
    return ADDRESS_MARK


def _host_name(name: str) -> re.Pattern:
    # The name, and its domain if given (vm.internal); not inside a longer name (my-vm).
    return re.compile(rf"(?<![\w.-]){re.escape(name)}(?:\.[\w-]+)*(?![\w-])", re.IGNORECASE)
