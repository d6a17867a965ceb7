"""Fetching a reference recording from a payload's URL without server-side request forgery."""

import pytest

from tests.helpers.servers import REPO, audio_server
from tts_runner.voice.fetch import FetchError, checked_address, fetch

RECORDING = (REPO / "jobs" / "voices" / "anna.wav").read_bytes()


@pytest.mark.parametrize("url", [
    "https://127.0.0.1/voice.wav", "https://localhost/voice.wav", "https://[::1]/voice.wav", "https://0.0.0.0/x",
    "https://10.1.2.3/x", "https://172.16.0.1/x", "https://172.31.255.254/x", "https://192.168.1.10/x",
    "https://169.254.169.254/latest/meta-data/", "https://[::ffff:127.0.0.1]/x", "https://2130706433/x",
    "https://0x7f000001/x", "https://[fe80::1]/x", "https://224.0.0.1/x", "https://[fc00::1]/x",
])
def test_private_and_special_addresses_are_refused(url):
    with pytest.raises(FetchError, match="not a public address"):
        checked_address(url, allow_http=False)


@pytest.mark.parametrize("url, message", [
    ("file:///etc/passwd", "only https:// URLs are fetched, not file://"),
    ("ftp://example.com/voice.wav", "only https:// URLs are fetched, not ftp://"),
    ("gopher://example.com/1", "only https:// URLs are fetched, not gopher://"),
    ("data:audio/wav;base64,UklGRg==", "only https:// URLs are fetched, not data://"),
    ("http://example.com/voice.wav", "only https:// URLs are fetched, not http://"),
    ("https://user:pass@example.com/voice.wav", "a URL with credentials in it is not fetched"),
    ("https://no-such-host.invalid/voice.wav", "does not resolve"),
])
def test_other_schemes_credentials_and_unknown_hosts_are_refused(url, message):
    with pytest.raises(FetchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        checked_address(url, allow_http=False)


def test_by_default_nothing_on_this_machine_is_reachable():
    with audio_server(RECORDING) as host, pytest.raises(FetchError, match="not a public address"):
        fetch(f"http://{host}/voice.wav", 10**7, 5, allow_http=True)  # no test allowance: refused


@pytest.fixture(scope="module")
def local():
    with audio_server(RECORDING) as host:
        yield host


def get(host, path, max_bytes=10**7, timeout=5.0):
    return fetch(f"http://{host}{path}", max_bytes, timeout, allow_http=True, allowed=(host,))


def test_a_host_a_test_config_allows_is_fetched_and_its_redirects_followed(local):
    assert get(local, "/voice.wav") == RECORDING
    assert get(local, "/moved") == RECORDING  # a redirect to the same allowed host


@pytest.mark.parametrize("path, message, timeout", [
    ("/to-localhost", "'localhost' resolves to 127.0.0.1, which is not a public address", 60),
    ("/to-metadata", "'169.254.169.254' resolves to 169.254.169.254, which is not a public address", 60),
    ("/loop", "more than 3 redirects", 60),
    ("/big", "over the limit of 2000000 bytes", 60),  # a limit of time the size limit meets first, however slow
    ("/trickle", "took longer than 1.5 s", 1.5),  # the server takes 4 s at least: slower only makes it surer
])
def test_redirects_sizes_and_time_are_held_to_the_limits(local, path, message, timeout):
    with pytest.raises(FetchError, match=message):
        get(local, path, max_bytes=2_000_000, timeout=timeout)


def test_the_status_must_be_200(local):
    with pytest.raises(FetchError, match="answered 404"):
        get(local, "/nothing-here")
