"""Backend base URLs: strict validation, the host a URL names, and redaction for anything shown to people.

A backend URL is a base (`http://10.0.0.5:8000`, `https://api.openai.com/v1`) that the gateway appends API
paths to, so it has a scheme (http or https), a host, an optional port in 1-65535 and an optional path, and
nothing else: no userinfo (credentials belong in `[secrets]`, never in a URL that admin views, logs and
error messages may show), no query, no fragment, no whitespace or control characters, and only valid
percent escapes. `validate_backend_url` is the one check, used by `BackendConfig` wherever a backend
enters (nexus.toml, admin writes, Redis reads).

`redact_url` strips userinfo from any URL before it goes into a message: a URL that came from somewhere
older than this validation must still never carry credentials into a response.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit, urlunsplit

__all__ = ["MAX_URL_LENGTH", "redact_url", "url_host", "validate_backend_url"]

MAX_URL_LENGTH = 2048
_SCHEMES = ("http", "https")
# RFC 3986 pchar plus "/": unreserved, sub-delims, ":", "@", and "%" (escapes are checked separately)
_PATH = re.compile(r"^[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*$")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
_CONTROL = re.compile(r"[\x00-\x20\x7f]")


def _host_ok(host: str) -> bool:
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1].split("%", 1)[0])
        except ValueError:
            return False
        return host.endswith("]")
    if len(host) > 253:
        return False
    return all(_LABEL.match(label) for label in host.rstrip(".").split("."))


def validate_backend_url(url: object) -> str:
    """The URL normalised (scheme lower-cased, no trailing slash); ValueError saying what is wrong."""
    if not isinstance(url, str):
        raise ValueError("url must be a string such as http://10.0.0.5:8000")
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"url is longer than {MAX_URL_LENGTH} characters")
    if _CONTROL.search(url):
        raise ValueError("url contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # unbalanced brackets, a port that is not a number or out of range
        raise ValueError(f"url is not a valid URL ({exc}); use http(s)://host[:port][/path]") from None
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise ValueError("url must start with http:// or https://")
    if "@" in parts.netloc:
        raise ValueError(
            "url must not contain credentials (user:password@); declare the key in nexus.toml [secrets] and "
            "reference it with `secret`"
        )
    host = parts.netloc.rsplit(":", 1)[0] if port is not None or parts.netloc.endswith(":") else parts.netloc
    if not host or not _host_ok(host):
        raise ValueError("url has no valid host name or address")
    if parts.netloc.endswith(":") or (port is not None and not 1 <= port <= 65535):
        raise ValueError("url port must be a number from 1 to 65535")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise ValueError("url must not have a query or fragment: it is a base the API paths are appended to")
    if not _PATH.match(parts.path):
        raise ValueError("url path has characters that must be percent-encoded")
    if _BAD_ESCAPE.search(parts.path):
        raise ValueError("url path has an invalid percent escape (a '%' must be followed by two hex digits)")
    return urlunsplit((scheme, parts.netloc, parts.path, "", "")).rstrip("/")


def url_host(url: str) -> str:
    """The host a URL names, lower-cased, without port or brackets ("" when there is none)."""
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


def redact_url(url: str) -> str:
    """`url` without any userinfo, for messages; unparseable input becomes a placeholder."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
