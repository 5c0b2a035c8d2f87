"""The explorer in a real Chromium: type text, see highlighted tokens, open a latent, visit every tab.

Playwright drives the system Chromium (never a browser of its own download). Screenshots go to the
test's tmp dir, and also to $HFSAE_SCREENSHOTS when set (how docs/screenshots/ is made).
"""

import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest

from hfsae import explorer_views

from .conftest import chromium_page

pytestmark = pytest.mark.browser


def printable(text: str) -> str:
    return "".join(c for c in text if c.isprintable() and c != "\ufffd").strip()


@pytest.fixture(scope="module")
def page(app_url):
    with chromium_page() as page:
        page.requests = []
        page.on("request", lambda request: page.requests.append(request.url))
        page.goto(app_url)
        yield page


@pytest.fixture(scope="module")
def screenshot(tmp_path_factory):
    folder = tmp_path_factory.mktemp("screenshots")
    extra = os.environ.get("HFSAE_SCREENSHOTS")

    def save(page, name: str) -> Path:
        path = folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(extra) / path.name)
        return path

    return save


def test_typing_text_shows_its_tokens_highlighted_by_the_strongest_latent(page, explorer, screenshot):
    text = "The quick brown fox jumps"
    page.locator("#text-input textarea").fill(text)
    page.locator("#text-button").click()
    page.locator("#text-message").get_by_text("Colouring by").wait_for()

    highlighted, latent, _, _ = explorer_views.text_view(explorer, text, None)
    tokens = page.locator("#text-tokens .token")
    assert tokens.count() == len(highlighted)
    # Each token is painted with the opacity of its score: the latent's activation over its maximum.
    colours = tokens.evaluate_all("spans => spans.map(e => getComputedStyle(e).backgroundColor)")
    opacities = [float(c[c.index("(") + 1 : -1].split(",")[3]) if c.startswith("rgba") else 1.0 for c in colours]
    assert opacities == pytest.approx([score for _, score in highlighted], abs=0.01)
    assert max(opacities) > 0.5
    assert f"latent {latent}" in page.locator("#text-message").inner_text()
    assert screenshot(page, "text").stat().st_size > 0


def test_clicking_a_tokens_latent_opens_its_latent_page(page, explorer, screenshot):
    cell = page.locator("#text-table [role=gridcell]").filter(has_text="(").first
    latent = int(cell.inner_text().split(" ")[0])
    cell.click()
    page.locator("#latent-summary h2").get_by_text(f"Latent {latent}").wait_for()

    row = explorer.row(latent)
    assert page.locator("#latent-input input").input_value() == str(latent)
    summary = page.locator("#latent-summary").inner_text()
    assert f"{row['density']:.4%}" in summary
    if row["density"] > 0:
        page.locator("#latent-histogram canvas, #latent-histogram svg").first.wait_for()
        assert page.locator("#latent-top .context").count() == len(row["top_tokens"])
        assert (
            page.locator("#latent-top .context")
            .first.inner_text()
            .replace("\n", "")
            .endswith("".join(row["top_tokens"][0]).replace("\n", "↵"))
        )
    assert page.locator("#latent-logits [role=gridcell]").count() > 0
    assert screenshot(page, "latent").stat().st_size > 0


def test_search_lists_latents_and_a_click_opens_one(page, screenshot):
    from .conftest import EXPLAINED_LATENT

    page.get_by_role("tab", name="Search").click()
    page.locator("#search-input textarea, #search-input input").first.fill("x")
    page.get_by_role("radio", name="explanation").check()
    page.locator("#search-button").click()
    first = page.locator("#search-table [role=gridcell]").first
    first.get_by_text(str(EXPLAINED_LATENT)).wait_for()
    screenshot(page, "search")
    first.click()
    page.locator("#latent-summary h2").get_by_text(f"Latent {EXPLAINED_LATENT}").wait_for()
    assert "N2G explanation" in page.locator("#latent-summary").inner_text()


def test_steer_shows_steered_and_unsteered_text_side_by_side(page, explorer, screenshot):
    page.get_by_role("tab", name="Steer").click()
    page.locator("#steer-prompt textarea").fill("hello")
    page.locator("#steer-latent input").fill("3")
    page.locator("#steer-button").click()
    expected_plain, expected_steered, expected_rows, _ = explorer.steer("hello", 3, 10, 24)
    # The tiny byte-level model writes control bytes, which a textarea does not keep: compare the rest.
    expected = (printable(expected_plain), printable(expected_steered))
    shown = lambda: tuple(
        printable(page.locator(f"#steer-{name} textarea").input_value()) for name in ("plain", "steered")
    )
    for _ in range(100):  # the two boxes may be filled in successive frames
        if shown() == expected:
            break
        page.wait_for_timeout(100)
    assert shown() == expected
    # The measured effect, one row per strength (0 and the slider's): strength, activations, KL, ΔCE.
    cells = page.locator("#steer-measured [role=gridcell]")
    cells.nth(len(expected_rows) * len(expected_rows[0]) - 1).wait_for()
    shown_cells = [float(cell) for cell in cells.evaluate_all("cells => cells.map(c => c.innerText)")]
    assert shown_cells == pytest.approx([value for row in expected_rows for value in row], abs=1e-3)
    screenshot(page, "steer")


def test_compare_lists_the_latents_that_differ_and_a_click_opens_one(page, explorer, screenshot):
    text_a, text_b = "def add(a, b): return a + b", "The quick brown fox\n\njumps over the lazy dog"
    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-a textarea").fill(text_a)
    page.locator("#compare-b textarea").fill(text_b)
    page.locator("#compare-button").click()
    page.locator("#compare-message").get_by_text("Mean activation per token").wait_for()
    rows, _ = explorer_views.compare(explorer, text_a, text_b)
    first = page.locator("#compare-table [role=gridcell]").first
    first.get_by_text(str(rows[0][0]), exact=True).wait_for()
    shown = page.locator("#compare-table [role=gridcell]").evaluate_all("cells => cells.map(c => c.innerText)")
    assert [int(cell) for cell in shown[:: len(rows[0])][: len(rows)]] == [row[0] for row in rows]
    screenshot(page, "compare")
    first.click()
    page.locator("#latent-summary h2").get_by_text(f"Latent {rows[0][0]}").wait_for()


def test_overview_shows_the_metrics_and_the_page_made_no_outside_request(page, app_url, screenshot):
    page.get_by_role("tab", name="Overview").click()
    page.locator("#overview").get_by_text("0.125").first.wait_for()
    screenshot(page, "overview")
    app_host = urlparse(app_url).netloc
    outside = {urlparse(url).netloc for url in page.requests if urlparse(url).scheme in ("http", "https")} - {app_host}
    assert outside == set()
