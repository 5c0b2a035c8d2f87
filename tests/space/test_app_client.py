"""The launched explorer answers over HTTP (gradio_client) with what the views compute."""

import pytest

from hfsae import explorer_views
from hfsae.explorer import MAX_TEXT_CHARS, MAX_TEXT_TOKENS

from .conftest import EXPLAINED_LATENT
from .test_explorer import RecordingTokenizer


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False, analytics_enabled=False)


def test_the_app_exposes_one_endpoint_per_view(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(endpoints) == {"/text", "/latent", "/search", "/steer", "/compare"}


def test_text_endpoint_returns_the_highlighted_tokens_and_top_latents(client, explorer):
    text = "The quick brown fox"
    highlighted, table, message = client.predict(text, "", api_name="/text")
    expected_highlighted, expected_latent, expected_rows, _ = explorer_views.text_view(explorer, text, None)
    assert message == f"Colouring by **latent {expected_latent}** (the strongest in this text)."
    assert [(item["token"], item["class_or_confidence"]) for item in highlighted] == expected_highlighted
    assert table["data"] == expected_rows


def test_latent_endpoint_returns_the_summary_histogram_and_logit_effects(client, explorer):
    latent, summary, histogram, _, _, logits = client.predict(EXPLAINED_LATENT, api_name="/latent")
    expected_summary, expected_histogram, *_, expected_logits = explorer_views.latent_view(explorer, EXPLAINED_LATENT)
    assert latent == EXPLAINED_LATENT and summary == expected_summary
    assert histogram["sort"] == [label for label, _ in expected_histogram]  # bins in numeric order
    assert [row[1] for row in histogram["value"]["data"]] == [count for _, count in expected_histogram]
    assert logits["data"] == expected_logits


def test_search_endpoint_finds_the_explained_latent(client):
    result = client.predict("f ·", "explanation", api_name="/search")
    assert [row[0] for row in result["data"]] == [EXPLAINED_LATENT]


def test_steer_endpoint_returns_both_continuations_and_the_measured_effect(client, explorer):
    unsteered, steered, measured, _ = client.predict("hello", 3, 25.0, 6, api_name="/steer")
    expected_unsteered, expected_steered, expected_rows, _ = explorer.steer("hello", 3, 25.0, 6)
    assert (unsteered, steered) == (expected_unsteered, expected_steered)
    assert measured["data"] == expected_rows


def test_compare_endpoint_returns_the_latents_that_differ_most(client, explorer):
    table, message = client.predict("def f(x): return x", "The quick brown fox", api_name="/compare")
    expected_rows, expected_message = explorer_views.compare(explorer, "def f(x): return x", "The quick brown fox")
    assert table["data"] == expected_rows and message == expected_message


def test_a_bad_latent_comes_back_as_a_readable_error(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="0–63"):
        client.predict(1000, api_name="/latent")


def test_a_16_mb_text_comes_back_cut_and_only_the_capped_text_is_tokenized(client, explorer, monkeypatch):
    recording = RecordingTokenizer(explorer.tokenizer)
    monkeypatch.setattr(explorer, "tokenizer", recording)
    highlighted, table, message = client.predict("x" * 16 * 2**20, "", api_name="/text")
    assert len(highlighted) == len(table["data"]) == MAX_TEXT_TOKENS
    assert "only the first" in message
    assert recording.lengths == [MAX_TEXT_CHARS]  # not the 16 MB: the work is bounded before it starts


@pytest.mark.parametrize("body", [b'{"data": [1e999]}', b'{"data": [NaN]}', b'{"data": ["inf"]}', b'{"data": [2.5]}'])
def test_a_latent_box_given_a_non_integer_answers_with_the_valid_range(app_url, body):
    # Raw HTTP: gradio_client's JSON encoder refuses inf and NaN, but a request may carry them.
    import json
    import urllib.request

    call = urllib.request.Request(
        app_url + "gradio_api/call/latent", data=body, headers={"Content-Type": "application/json"}
    )
    event = json.loads(urllib.request.urlopen(call).read())["event_id"]
    answer = urllib.request.urlopen(f"{app_url}gradio_api/call/latent/{event}").read().decode()
    kind, data = answer.split("\n")[:2]
    assert kind == "event: error"
    assert "whole number in 0–63" in json.loads(data.removeprefix("data: "))["error"]


def test_the_queue_is_bounded_and_every_view_goes_through_it(explorer):
    from hfsae.space import CONCURRENCY_LIMIT, MAX_QUEUE_SIZE, build_app

    demo = build_app(explorer)
    # Gradio keeps the limits on its private queue object; the config says which events are queued.
    assert (demo._queue.max_size, demo._queue.default_concurrency_limit) == (MAX_QUEUE_SIZE, CONCURRENCY_LIMIT)
    assert all(dependency["queue"] for dependency in demo.get_config_file()["dependencies"])
