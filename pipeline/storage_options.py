"""Misspelt or misplaced ``storage_options`` keys, found before anything runs.

Both readers of these options drop keys they do not know: s3fs keeps them as unused arguments and Lance's
object store skips them. A run then goes to AWS's default endpoint and fails with a region or credential error
that names neither the key nor the option meant. The two sides also spell the same setting differently: the
source and an object-storage model are read with fsspec (s3fs: ``endpoint_url``, ``key``, ``secret``,
``client_kwargs``) and the sink with LanceDB (``aws_endpoint``, ``aws_access_key_id``, ``aws_region``).

Keys are checked for ``s3://`` locations only, top-level keys only:

- fsspec side: every key must be an argument of s3fs's filesystem or of the botocore session it creates (read
  from their signatures, so it follows the installed versions); a LanceDB-style key is answered with its s3fs
  name.
- LanceDB side: Lance accepts many keys, and more with each release, so an unknown key is refused only when it
  is an s3fs-only key (its LanceDB name is given) or a near miss of a key Lance documents (with or without the
  ``aws_`` prefix, which Lance's object store accepts either way).

LanceDB's values are strings for every sink, local included: :func:`as_lance_options` turns YAML scalars into
them, drops ``null`` ones (an option left unset) and refuses lists and mappings.
"""

from __future__ import annotations

import difflib
import inspect
from functools import cache
from typing import Any

# Said by the source (s3fs) and the sink (LanceDB) alike when the AWS credential chain finds nothing.
NO_CREDENTIALS_HINT = (
    "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run with an "
    "instance or pod identity"
)

# LanceDB (object_store) keys, lower case -> the s3fs argument for the same setting (``client_kwargs.x``: a key
# of s3fs's ``client_kwargs``). The one table both for naming s3fs's key in an error and for opening the sink's
# location with fsspec (the lock file, staged files), so the two never disagree.
S3FS_ARGUMENT_OF_LANCE_KEY = {
    "aws_access_key_id": "key",
    "access_key_id": "key",
    "aws_secret_access_key": "secret",
    "secret_access_key": "secret",
    "aws_session_token": "token",
    "session_token": "token",
    "aws_token": "token",
    "token": "token",
    "aws_endpoint": "client_kwargs.endpoint_url",
    "aws_endpoint_url": "client_kwargs.endpoint_url",
    "endpoint": "client_kwargs.endpoint_url",
    "endpoint_url": "client_kwargs.endpoint_url",
    "aws_region": "client_kwargs.region_name",
    "region": "client_kwargs.region_name",
    "aws_default_region": "client_kwargs.region_name",
    "default_region": "client_kwargs.region_name",
}


def _s3fs_spelling(argument: str) -> str:
    """How a user writes ``argument`` in ``source.storage_options``."""
    if argument == "client_kwargs.endpoint_url":
        return "endpoint_url"  # an argument of s3fs's own as well
    if argument.startswith("client_kwargs."):
        return f"client_kwargs: {{{argument.removeprefix('client_kwargs.')}: ...}}"
    return argument


# LanceDB-style keys written on the fsspec side -> what s3fs calls them.
_S3FS_NAME_OF = {key: _s3fs_spelling(argument) for key, argument in S3FS_ARGUMENT_OF_LANCE_KEY.items()} | {
    "region_name": "client_kwargs: {region_name: ...}",
    "allow_http": "nothing (s3fs uses an http:// endpoint_url as given)",
    "aws_allow_http": "nothing (s3fs uses an http:// endpoint_url as given)",
    "aws_profile": "profile",
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
        "aws_bucket",
        "aws_bucket_name",
        "bucket",
        "bucket_name",
        "aws_disable_tagging",
        "aws_container_credentials_relative_uri",
        "aws_sse_customer_key_base64",
        "aws_token",
    }
)


def _is_s3(uri: str) -> bool:
    return uri.lower().startswith(("s3://", "s3a://"))


@cache
def s3fs_keys() -> frozenset[str]:
    """The keyword arguments s3fs's filesystem takes: its constructor's, its base classes', fsspec's listing
    cache's, ``skip_instance_cache`` (taken by fsspec's instance cache) and those of the botocore session s3fs
    creates with what is left over (``profile``)."""
    import fsspec
    from aiobotocore.session import AioSession
    from fsspec.dircache import DirCache

    filesystem = fsspec.get_filesystem_class("s3")
    keys = {"skip_instance_cache"}
    for init in [klass.__dict__["__init__"] for klass in filesystem.__mro__ if "__init__" in klass.__dict__]:
        keys |= _named_parameters(init)
    return frozenset(keys | _named_parameters(DirCache.__init__) | _named_parameters(AioSession.__init__))


@cache
def client_kwargs_keys() -> frozenset[str]:
    """What s3fs's ``client_kwargs`` may hold: the arguments of the botocore client it creates with them
    (empty, so unchecked, where that private method is not found)."""
    from aiobotocore.session import AioSession

    create = getattr(AioSession, "_create_client", None)
    return frozenset(_named_parameters(create) - {"service_name"}) if create else frozenset()


def _named_parameters(function: Any) -> set[str]:
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {name for name, p in inspect.signature(function).parameters.items() if p.kind in named} - {"self"}


def local_path_problems(uri: str, options: dict[str, Any]) -> list[str]:
    """Options given for a local path, which uses none of them (say an ``endpoint_url`` meant for a bucket)."""
    if not any(value is not None for value in options.values()) or not is_local_path(uri):  # (null: unset)
        return []
    return [f"{uri!r} is a local path, which takes no storage options (they are for object-store URIs)"]


def is_local_path(uri: str) -> bool:
    """A path on this machine's file system: no scheme, or ``file://``."""
    return "://" not in uri or uri.lower().startswith("file://")


def fsspec_option_problems(uri: str, options: dict[str, Any]) -> list[str]:
    """Why keys of ``options`` cannot be meant for fsspec at ``uri`` (empty when they can, or ``uri`` is not S3)."""
    if not _is_s3(uri):
        return []
    known, problems = s3fs_keys(), []
    for key, value in options.items():
        if key == "client_kwargs" and isinstance(value, dict):
            problems += _client_kwargs_problems(value)
        if key in known:
            continue
        if str(key).lower() in _S3FS_NAME_OF and str(key).lower() not in known:  # s3fs's names are case-sensitive
            problems.append(
                f"{key!r} is LanceDB's name (for sink.storage_options); s3fs's is {_S3FS_NAME_OF[str(key).lower()]}"
            )
        else:
            hint = _did_you_mean(key, known) or f" (s3fs takes: {', '.join(sorted(known))})"
            problems.append(f"unknown s3fs option {key!r}{hint}")
    return problems


def _client_kwargs_problems(client_kwargs: dict[str, Any]) -> list[str]:
    known, problems = client_kwargs_keys(), []
    for key in client_kwargs:
        if known and key not in known:
            hint = _did_you_mean(key, known) or f" (botocore takes: {', '.join(sorted(known))})"
            problems.append(f"unknown client_kwargs key {key!r}{hint}")
    return problems


def lance_option_problems(uri: str, options: dict[str, Any]) -> list[str]:
    """Why keys of ``options`` cannot be meant for LanceDB at ``uri``: s3fs-only keys and near misses of keys
    Lance documents (empty when there are none, or ``uri`` is not S3)."""
    if not _is_s3(uri):
        return []
    problems = []
    for key in options:
        lower = str(key).lower()
        if _lance_knows(lower):
            continue
        if lower in _LANCE_NAME_OF:
            problems.append(
                f"{key!r} is s3fs's name (for source.storage_options); LanceDB's is {_LANCE_NAME_OF[lower]}"
            )
        elif suggestion := _did_you_mean(lower, LANCE_S3_KEYS):
            problems.append(f"unknown LanceDB option {key!r}{suggestion}")
    return problems


def as_s3fs_options(lance_options: dict[str, Any]) -> dict[str, Any]:
    """The sink's LanceDB ``storage_options`` as s3fs arguments (credentials, endpoint, region), so what lateline
    writes beside the table with fsspec goes where the table does; other keys are left to the AWS environment."""
    options: dict[str, Any] = {}
    for key, value in lance_options.items():
        argument = S3FS_ARGUMENT_OF_LANCE_KEY.get(str(key).lower())
        if argument is None:
            continue
        if argument.startswith("client_kwargs."):
            options.setdefault("client_kwargs", {})[argument.removeprefix("client_kwargs.")] = value
        else:
            options[argument] = value
    return options


def _lance_knows(lower: str) -> bool:
    # object_store takes its S3 keys with and without the aws_ prefix (aws_allow_http, allow_http).
    return lower in LANCE_S3_KEYS or lower.removeprefix("aws_") in LANCE_S3_KEYS or f"aws_{lower}" in LANCE_S3_KEYS


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
    close = difflib.get_close_matches(str(key).lower(), sorted(known), n=1, cutoff=0.8)
    return f" (did you mean {close[0]!r}?)" if close else ""
