"""Misspelt or misplaced ``storage_options`` keys, found before anything runs.

Both readers of these options drop keys they do not know: s3fs keeps them as unused arguments and Lance's
object store skips them. A run then goes to AWS's default endpoint and fails with a region or credential error
that names neither the key nor the option meant. The two sides also spell the same setting differently: the
source and an object-storage model are read with fsspec (s3fs: ``endpoint_url``, ``key``, ``secret``,
``client_kwargs``) and the sink with LanceDB (``aws_endpoint``, ``aws_access_key_id``, ``aws_region``).

Only ``s3://`` locations are checked, top-level keys only:

- fsspec side: every key must be an argument of s3fs's filesystem (read from its signature, so it follows the
  installed version); a LanceDB-style key is answered with its s3fs name.
- LanceDB side: Lance accepts many keys, and more with each release, so an unknown key is refused only when it
  is an s3fs-only key (its LanceDB name is given) or a near miss of a key Lance documents.
"""

from __future__ import annotations

import difflib
import inspect
from functools import cache
from typing import Any

# LanceDB-style keys written on the fsspec side -> what s3fs calls them.
_S3FS_NAME_OF = {
    "aws_endpoint": "endpoint_url",
    "aws_endpoint_url": "endpoint_url",
    "endpoint": "endpoint_url",
    "aws_access_key_id": "key",
    "access_key_id": "key",
    "aws_secret_access_key": "secret",
    "secret_access_key": "secret",
    "aws_session_token": "token",
    "session_token": "token",
    "aws_region": "client_kwargs: {region_name: ...}",
    "region": "client_kwargs: {region_name: ...}",
    "region_name": "client_kwargs: {region_name: ...}",
    "allow_http": "nothing (s3fs uses an http:// endpoint_url as given)",
    "aws_allow_http": "nothing (s3fs uses an http:// endpoint_url as given)",
}

# s3fs keys written on the LanceDB side -> what LanceDB calls them.
_LANCE_NAME_OF = {
    "key": "aws_access_key_id",
    "secret": "aws_secret_access_key",
    "client_kwargs": "flat keys such as aws_endpoint and aws_region",
    "config_kwargs": "flat keys such as timeout and connect_timeout",
    "region_name": "aws_region",
    "anon": "aws_skip_signature",
    "use_ssl": "allow_http",
    "requester_pays": "aws_request_payer",
}

# Keys Lance documents for S3 and for every object store (lower case; Lance ignores case): the near misses of
# these are refused. Keys missing here still pass, so the list errs on the side of letting a run start.
LANCE_S3_KEYS = frozenset(
    {
        "allow_http",
        "allow_invalid_certificates",
        "connect_timeout",
        "timeout",
        "request_timeout",
        "user_agent",
        "proxy_url",
        "proxy_ca_certificate",
        "proxy_excludes",
        "download_retry_count",
        "client_max_retries",
        "client_retry_timeout",
        "aws_region",
        "region",
        "aws_default_region",
        "aws_access_key_id",
        "access_key_id",
        "aws_secret_access_key",
        "secret_access_key",
        "aws_session_token",
        "session_token",
        "token",
        "aws_endpoint",
        "aws_endpoint_url",
        "endpoint",
        "endpoint_url",
        "aws_virtual_hosted_style_request",
        "virtual_hosted_style_request",
        "aws_server_side_encryption",
        "aws_sse_kms_key_id",
        "aws_sse_bucket_key_enabled",
        "aws_s3_express",
        "aws_skip_signature",
        "skip_signature",
        "aws_imdsv1_fallback",
        "aws_metadata_endpoint",
        "aws_unsigned_payload",
        "aws_checksum_algorithm",
        "aws_request_payer",
        "aws_conditional_put",
        "aws_copy_if_not_exists",
    }
)


def _is_s3(uri: str) -> bool:
    return uri.lower().startswith(("s3://", "s3a://"))


@cache
def s3fs_keys() -> frozenset[str]:
    """The keyword arguments s3fs's filesystem takes: its constructor's, its base classes', fsspec's listing
    cache's and ``skip_instance_cache`` (taken by fsspec's instance cache)."""
    import fsspec
    from fsspec.dircache import DirCache

    filesystem = fsspec.get_filesystem_class("s3")
    keys = {"skip_instance_cache"}
    for init in [klass.__dict__["__init__"] for klass in filesystem.__mro__ if "__init__" in klass.__dict__]:
        keys |= _named_parameters(init)
    return frozenset(keys | _named_parameters(DirCache.__init__))


def _named_parameters(function: Any) -> set[str]:
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {name for name, p in inspect.signature(function).parameters.items() if p.kind in named} - {"self"}


def fsspec_option_problems(uri: str, options: dict[str, Any]) -> list[str]:
    """Why keys of ``options`` cannot be meant for fsspec at ``uri`` (empty when they can, or ``uri`` is not S3)."""
    if not _is_s3(uri):
        return []
    known, problems = s3fs_keys(), []
    for key in options:
        if key in known:
            continue
        if str(key).lower() in _S3FS_NAME_OF:
            problems.append(
                f"{key!r} is LanceDB's name (for sink.storage_options); s3fs's is {_S3FS_NAME_OF[str(key).lower()]}"
            )
        else:
            hint = _did_you_mean(key, known) or f" (s3fs takes: {', '.join(sorted(known))})"
            problems.append(f"unknown s3fs option {key!r}{hint}")
    return problems


def lance_option_problems(uri: str, options: dict[str, Any]) -> list[str]:
    """Why keys of ``options`` cannot be meant for LanceDB at ``uri``: s3fs-only keys and near misses of keys
    Lance documents (empty when there are none, or ``uri`` is not S3)."""
    if not _is_s3(uri):
        return []
    problems = []
    for key in options:
        lower = str(key).lower()
        if lower in LANCE_S3_KEYS:
            continue
        if lower in _LANCE_NAME_OF:
            problems.append(
                f"{key!r} is s3fs's name (for source.storage_options); LanceDB's is {_LANCE_NAME_OF[lower]}"
            )
        elif suggestion := _did_you_mean(lower, LANCE_S3_KEYS):
            problems.append(f"unknown LanceDB option {key!r}{suggestion}")
    return problems


def as_lance_options(options: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """``options`` with every value as the string LanceDB requires (YAML's ``true`` -> ``"true"``, ``60`` ->
    ``"60"``), and why keys with a list or mapping value cannot be given to it."""
    strings, problems = {}, []
    for key, value in options.items():
        if isinstance(value, dict | list | tuple):
            problems.append(f"{key!r} must be a single value: LanceDB's options are flat strings")
        elif value is not None:
            strings[str(key)] = str(value).lower() if isinstance(value, bool) else str(value)
    return strings, problems


def _did_you_mean(key: str, known: frozenset[str]) -> str:
    close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.8)
    return f" (did you mean {close[0]!r}?)" if close else ""
