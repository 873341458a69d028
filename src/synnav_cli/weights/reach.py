"""Whether the Hugging Face Hub can be reached at all, asked once before a download starts.

huggingface_hub answers a failed first request (the HEAD that finds a file's hash) by asking
again, up to five more times, 1, 2, 4, 8 and 8 s apart: a host that does not resolve, or a port
that refuses, took 24 s to report here and 29-38 s where DNS itself is slow. One request without
retries tells the two kinds of failure apart:

- no connection could be made (the name does not resolve, the port refuses, the proxy cannot
  be reached, or connecting takes longer than ``HF_HUB_ETAG_TIMEOUT``, 10 s by default): retrying
  a few seconds later rarely helps, so it is reported at once;
- anything else (a slow answer, a 5xx, a 401, a missing file) is left to huggingface_hub, which
  retries or reports it as before, so a slow but working connection still downloads.
"""

from __future__ import annotations

# Class names, not classes: huggingface_hub has used requests, httpx and httpx2 in turn, and each
# names its could-not-connect errors so (requests' ConnectionError also covers a refused proxy).
_CONNECT_FAILURES = {"ConnectError", "ConnectTimeout", "ConnectionError", "ProxyError"}
# A slow answer is not a failure to connect; huggingface_hub's offline mode (a ConnectionError)
# is reported by the download itself, as before.
_NOT_CONNECT_FAILURES = {"ReadTimeout", "WriteTimeout", "PoolTimeout", "OfflineModeIsEnabled"}


def connect_failure(error: BaseException) -> bool:
    """Whether ``error`` says no connection could be made, as opposed to a slow or bad answer."""
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(names & _CONNECT_FAILURES) and not names & _NOT_CONNECT_FAILURES


def unreachable(repo_id: str, filename: str, revision: str | None) -> BaseException | None:
    """The connection failure that keeps the Hub from being asked about ``filename`` of
    ``repo_id``, or None when a connection was made (whatever the answer) or the question
    failed in another way (left for the download itself to report)."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(repo_id, filename, revision=revision)
    try:
        get_hf_file_metadata(url, timeout=constants.HF_HUB_ETAG_TIMEOUT, retry_on_errors=False)
    except Exception as error:  # noqa: BLE001 - only a connection failure is of interest
        return error if connect_failure(error) else None
    return None
