"""The fake cluster's DNS, for Python programs in its pods (imported at start from PYTHONPATH).

A pod with ``hostname`` and ``subdomain`` (an Indexed Job's pod under a headless Service) is reachable as
``<hostname>.<subdomain>[.<namespace>[.svc[.cluster.local]]]``: the fake kubelet lists those names in
``HPO_FAKE_K8S_HOSTS`` (a JSON file); every pod shares this machine's loopback, so they resolve to 127.0.0.1.
Names not listed resolve as usual.
"""
import json
import os
import socket

_HOSTS = os.environ.get("HPO_FAKE_K8S_HOSTS")
_getaddrinfo, _gethostbyname = socket.getaddrinfo, socket.gethostbyname


def _mapped(host):
    if not _HOSTS or not isinstance(host, str):
        return host
    try:
        with open(_HOSTS) as fh:
            names = json.load(fh)
    except (OSError, ValueError):
        return host
    return "127.0.0.1" if host.rstrip(".") in names else host


def getaddrinfo(host, *args, **kwargs):
    return _getaddrinfo(_mapped(host), *args, **kwargs)


def gethostbyname(host):
    return _gethostbyname(_mapped(host))


socket.getaddrinfo, socket.gethostbyname = getaddrinfo, gethostbyname
