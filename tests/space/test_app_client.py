"""The launched explorer answers over HTTP (gradio_client) with what the views compute."""

import pytest

from .conftest import EXPLAINED_LATENT


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False, analytics_enabled=False)


def test_the_app_exposes_one_endpoint_per_view(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(endpoints) == {"/text", "/latent", "/search", "/steer"}


def test_text_endpoint_returns_the_highlighted_tokens_and_top_latents(client, explorer):
    text = "The quick brown fox"
    highlighted, table, message = client.predict(text, "", api_name="/text")
    expected_highlighted, expected_latent, expected_rows, _ = explorer.text_view(text, None)
    assert message == f"Colouring by **latent {expected_latent}** (the strongest in this text)."
    assert [(item["token"], item["class_or_confidence"]) for item in highlighted] == expected_highlighted
    assert table["data"] == expected_rows


def test_latent_endpoint_returns_the_summary_histogram_and_logit_effects(client, explorer):
    latent, summary, histogram, _, _, logits = client.predict(EXPLAINED_LATENT, api_name="/latent")
    expected_summary, expected_histogram, *_, expected_logits = explorer.latent_view(EXPLAINED_LATENT)
    assert latent == EXPLAINED_LATENT and summary == expected_summary
    assert histogram["sort"] == [label for label, _ in expected_histogram]  # bins in numeric order
    assert [row[1] for row in histogram["value"]["data"]] == [count for _, count in expected_histogram]
    assert logits["data"] == expected_logits


def test_search_endpoint_finds_the_explained_latent(client):
    result = client.predict("f ·", "explanation", api_name="/search")
    assert [row[0] for row in result["data"]] == [EXPLAINED_LATENT]


def test_steer_endpoint_returns_both_continuations(client, explorer):
    unsteered, steered, _ = client.predict("hello", 3, 25.0, 6, api_name="/steer")
    assert (unsteered, steered) == explorer.steer("hello", 3, 25.0, 6)[:2]


def test_a_bad_latent_comes_back_as_a_readable_error(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="0–63"):
        client.predict(1000, api_name="/latent")
