"""The explorer app: the Gradio interface over `hfsae.explorer.Explorer`, and the Space that serves it.

`build_app(sae)` returns a `gr.Blocks` with six tabs (Text, Latent, Search, Steer, Compare, Overview) whose
events call the explorer's views; its queue is bounded, so a burst of requests waits in line or is
turned away instead of piling up. The app makes no outbound calls: analytics are off and the
default theme's fonts are served locally.

`export_space(folder, sae, analysis=...)` writes a Space that deploys on its own: hfsae's wheel built
from this checkout (hfsae is not on PyPI); `app.py`, a copy of hfsae/space_app.py, which reads what to
serve from app.json beside it and unpacks that wheel when it starts (a Space installs requirements.txt
before the rest of its files are there, so the wheel cannot be a requirement); `requirements.txt` with
the wheel's own requirements; and a `README.md` whose header declares the Gradio SDK and links the SAE
and its analysis dataset. `push_space` uploads it as a Space repo.
"""

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

from .explorer import MAX_NEW_TOKENS, Explorer, ExplorerError, display_name
from . import explorer_views

# At most this many requests wait in line (more are refused with "queue full"); each event runs one
# request at a time. The model is shared and serialised anyway (Explorer.model_lock).
MAX_QUEUE_SIZE = 16
CONCURRENCY_LIMIT = 1


def build_app(sae_name_or_path="builtin", analysis_path=None, *, model=None, tokenizer=None):
    """The explorer as a `gr.Blocks` for an SAE (name, Hub repo, folder or TopKSAE) and its analysis.

    Example:
        >>> build_app("path/to/sae").launch()
    """
    explorer = (
        sae_name_or_path
        if isinstance(sae_name_or_path, Explorer)
        else Explorer.load(sae_name_or_path, analysis_path, model=model, tokenizer=tokenizer)
    )
    return _blocks(explorer)


def _import_gradio():
    # Gradio reads these when it is imported: no usage statistics, no update check, nothing leaves
    # the machine. (This module does not import gradio at the top, so that `hfsae --help` and the
    # views work without the [space] extra; the SelectData annotations below need this module not
    # to use postponed annotations, since `gr` is a local name in each function that uses it.)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import gradio as gr
    except ImportError as err:
        raise ImportError("The explorer needs gradio: pip install 'hfsae[space]'.") from err
    return gr


def _shown(fn):
    """Run a view; a user error becomes a visible message instead of a stack trace."""
    gr = _import_gradio()

    # wraps keeps fn's signature visible: Gradio injects SelectData by its annotation.
    @functools.wraps(fn)
    def wrapped(*args):
        try:
            return fn(*args)
        except ExplorerError as err:
            raise gr.Error(str(err)) from err

    return wrapped


def _blocks(explorer: Explorer):
    gr = _import_gradio()
    # The default theme serves its fonts from the app itself (no Google Fonts request).
    with gr.Blocks(title=f"hfsae explorer: {explorer.name}", analytics_enabled=False) as demo:
        gr.Markdown(
            f"# hfsae explorer\n{explorer.name}: {explorer.n_latents:,} latents at `{explorer.sae.config.hook_point}`",
            elem_id="header",
        )
        with gr.Tabs() as tabs:
            text = _text_tab(gr)
            latent = _latent_tab(gr, explorer)
            search = _search_tab(gr)
            steer = _steer_tab(gr)
            compare = _compare_tab(gr)
            with gr.Tab("Overview", id="overview"):
                gr.Markdown(explorer_views.overview(explorer), elem_id="overview")
        opens_latent = _wire_latent(gr, explorer, tabs, latent)
        _wire_text(gr, explorer, text, opens_latent)
        _wire_search(gr, explorer, search, opens_latent)
        _wire_compare(gr, explorer, compare, opens_latent)
        steer.button.click(
            _shown(explorer.steer),
            [steer.prompt, steer.latent, steer.strength, steer.tokens],
            [steer.plain, steer.steered, steer.measured, steer.message],
            api_name="steer",
        )
    return demo.queue(max_size=MAX_QUEUE_SIZE, default_concurrency_limit=CONCURRENCY_LIMIT)


# ---- the tabs' components ------------------------------------------------------------------------------


def _text_tab(gr) -> SimpleNamespace:
    with gr.Tab("Text", id="text"):
        text_in = gr.Textbox(label="Text", lines=3, placeholder="Type text to see which latents fire", elem_id="text-input")
        with gr.Row():
            # A textbox, not a Number: empty must stay empty (the strongest latent), not become 0.
            latent = gr.Textbox(label="Latent (empty: the strongest in this text)", value="", elem_id="text-latent")
            button = gr.Button("Show activations", variant="primary", elem_id="text-button")
        message = gr.Markdown(elem_id="text-message")
        tokens = gr.HighlightedText(
            label="Tokens coloured by the latent's activation", elem_id="text-tokens", show_legend=False,
            combine_adjacent=False,
        )
        table = gr.Dataframe(
            headers=["position", "token", *[f"latent {i + 1}" for i in range(explorer_views.TOP_LATENTS_PER_TOKEN)]],
            label="Each token's top latents: click a latent to open it", interactive=False, elem_id="text-table",
        )
    return SimpleNamespace(input=text_in, latent=latent, button=button, message=message, tokens=tokens, table=table)


def _latent_tab(gr, explorer: Explorer) -> SimpleNamespace:
    with gr.Tab("Latent", id="latent"):
        with gr.Row():
            latent = gr.Number(
                label=f"Latent (0–{explorer.n_latents - 1})", precision=None, value=0, elem_id="latent-input"
            )
            button = gr.Button("Open", variant="primary", elem_id="latent-button")
        summary = gr.Markdown(elem_id="latent-summary")
        histogram = gr.BarPlot(
            x="activation", y="count", title="Activation histogram (firing tokens)", elem_id="latent-histogram",
            sort=None,
        )
        gr.Markdown("**Top activating contexts** (activation at the shaded peak)")
        top = gr.HTML(elem_id="latent-top")
        gr.Markdown("**Random activating contexts** (activation · quantile among the latent's firings)")
        random = gr.HTML(elem_id="latent-random")
        logits = gr.Dataframe(
            headers=["promoted", "logit", "suppressed", "logit"], interactive=False,
            label="Logit effects (decoder direction through the unembedding)", elem_id="latent-logits",
        )
    return SimpleNamespace(
        input=latent, button=button, summary=summary, histogram=histogram, top=top, random=random, logits=logits
    )


def _search_tab(gr) -> SimpleNamespace:
    with gr.Tab("Search", id="search"):
        with gr.Row():
            query = gr.Textbox(label="Token or explanation text", elem_id="search-input")
            by = gr.Radio(["token", "explanation"], value="token", label="Search by")
            button = gr.Button("Search", variant="primary", elem_id="search-button")
        table = gr.Dataframe(
            headers=["latent", "density", "max activation", "matches", "explanation"], interactive=False,
            label="Latents: click one to open it", elem_id="search-table",
        )
    return SimpleNamespace(query=query, by=by, button=button, table=table)


def _steer_tab(gr) -> SimpleNamespace:
    from .interventions import SteeringSweep

    with gr.Tab("Steer", id="steer"):
        prompt = gr.Textbox(label="Prompt", lines=2, elem_id="steer-prompt")
        with gr.Row():
            latent = gr.Number(label="Latent", precision=None, value=0, elem_id="steer-latent")
            strength = gr.Slider(-100, 100, value=10, step=0.5, label="Strength (added × unit decoder direction)")
            tokens = gr.Slider(1, MAX_NEW_TOKENS, value=24, step=1, label="New tokens")
        button = gr.Button("Generate", variant="primary", elem_id="steer-button")
        message = gr.Markdown()
        with gr.Row():
            plain = gr.Textbox(label="Unsteered", lines=6, elem_id="steer-plain")
            steered = gr.Textbox(label="Steered", lines=6, elem_id="steer-steered")
        measured = gr.Dataframe(
            headers=list(SteeringSweep.HEADERS), interactive=False, elem_id="steer-measured",
            label="Measured: the latent's mean activation on the generated tokens (while steering; the text re-read "
            "unsteered), KL to the unsteered model and ΔCE on held-out text (nats per token)",
        )
    return SimpleNamespace(
        prompt=prompt, latent=latent, strength=strength, tokens=tokens, button=button, message=message, plain=plain,
        steered=steered, measured=measured,
    )


def _compare_tab(gr) -> SimpleNamespace:
    with gr.Tab("Compare", id="compare"):
        with gr.Row():
            text_a = gr.Textbox(label="Text A (several: separate them with a blank line)", lines=4, elem_id="compare-a")
            text_b = gr.Textbox(label="Text B (several: separate them with a blank line)", lines=4, elem_id="compare-b")
        button = gr.Button("Compare", variant="primary", elem_id="compare-button")
        message = gr.Markdown(elem_id="compare-message")
        table = gr.Dataframe(
            headers=["latent", "mean in A", "mean in B", "B − A", "explanation"], interactive=False,
            label="The latents that differ most: click one to open it", elem_id="compare-table",
        )
    return SimpleNamespace(text_a=text_a, text_b=text_b, button=button, message=message, table=table)


# ---- the events ----------------------------------------------------------------------------------------


def _wire_latent(gr, explorer: Explorer, tabs, latent: SimpleNamespace):
    """Register the Latent tab's events; return (open(latent) → outputs, the outputs) for the other tabs' clicks."""
    outputs = [tabs, latent.input, latent.summary, latent.histogram, latent.top, latent.random, latent.logits]

    def open_latent(number):
        number = explorer.check_latent(number)
        summary, histogram, top, random, logits = explorer_views.latent_view(explorer, number)
        # Bin labels are categories: without an explicit order the plot sorts them as strings.
        plot = gr.BarPlot(value=_histogram_frame(histogram), sort=[label for label, _ in histogram] or None)
        return gr.Tabs(selected="latent"), number, summary, plot, top, random, logits

    latent.button.click(_shown(open_latent), [latent.input], outputs, api_name="latent")
    latent.input.submit(_shown(open_latent), [latent.input], outputs, api_name=False)
    return open_latent, outputs


def _wire_text(gr, explorer: Explorer, text: SimpleNamespace, opens_latent) -> None:
    open_latent, latent_outputs = opens_latent

    def show_text(value, latent):
        highlighted, shown_latent, rows, message = explorer_views.text_view(explorer, value, latent)
        strongest = " (the strongest in this text)" if not str(latent or "").strip() else ""
        return highlighted, rows, f"Colouring by **latent {shown_latent}**{strongest}. {message}".strip()

    inputs, outputs = [text.input, text.latent], [text.tokens, text.table, text.message]
    text.button.click(_shown(show_text), inputs, outputs, api_name="text")
    text.input.submit(_shown(show_text), inputs, outputs, api_name=False)

    def open_from_table(evt: gr.SelectData):
        latent = _latent_in_cell(evt.value)
        if latent is None and evt.row_value:
            # A click on the position or token opens the token's strongest latent.
            latent = next((_latent_in_cell(c) for c in evt.row_value[2:] if _latent_in_cell(c) is not None), None)
        if latent is None:
            return [gr.skip()] * len(latent_outputs)
        return open_latent(latent)

    text.table.select(_shown(open_from_table), None, latent_outputs, api_name=False)


def _first_column_opens(gr, opens_latent):
    """A table's select handler: a click on a row opens the latent in its first column."""
    open_latent, latent_outputs = opens_latent

    def open_from_row(evt: gr.SelectData):
        if not evt.row_value:
            return [gr.skip()] * len(latent_outputs)
        return open_latent(int(evt.row_value[0]))

    return _shown(open_from_row)


def _wire_search(gr, explorer: Explorer, search: SimpleNamespace, opens_latent) -> None:
    inputs, find = [search.query, search.by], _shown(functools.partial(explorer_views.search, explorer))
    search.button.click(find, inputs, [search.table], api_name="search")
    search.query.submit(find, inputs, [search.table], api_name=False)
    search.table.select(_first_column_opens(gr, opens_latent), None, opens_latent[1], api_name=False)


def _wire_compare(gr, explorer: Explorer, compare: SimpleNamespace, opens_latent) -> None:
    inputs, outputs = [compare.text_a, compare.text_b], [compare.table, compare.message]
    differ = _shown(functools.partial(explorer_views.compare, explorer))
    compare.button.click(differ, inputs, outputs, api_name="compare")
    compare.table.select(_first_column_opens(gr, opens_latent), None, opens_latent[1], api_name=False)


def _latent_in_cell(cell) -> int | None:
    """The latent in a table cell like "123 (4.56)", or None."""
    text = str(cell).strip()
    head = text.split(" ", 1)[0]
    return int(head) if head.isdigit() and "(" in text else None


def _histogram_frame(histogram):
    import pandas as pd

    return pd.DataFrame(histogram, columns=["activation", "count"])


def launch(
    sae_name_or_path="builtin",
    analysis_path=None,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    **launch_kwargs,
):
    """Build the explorer and serve it (blocks until interrupted unless prevent_thread_lock=True)."""
    demo = build_app(sae_name_or_path, analysis_path)
    demo.launch(server_name=host, server_port=port, share=share, **launch_kwargs)
    return demo


# ---- the Space -----------------------------------------------------------------------------------------

SPACE_CARD_TEMPLATE = "space.md"
APP_FILE = "app.py"  # a copy of hfsae/space_app.py
SETTINGS_FILE = "app.json"  # what app.py serves: it reads the JSON file of its own name
VENDOR_DIR = ".hfsae"  # where the exported app.py unpacks its wheel at start (never uploaded)
REQUIREMENTS_FILE = "requirements.txt"
# What building hfsae's wheel reads from its checkout (an allow-list: tests, docs, git history and
# whatever else lies in the checkout stay behind); the optional ones are copied when present.
WHEEL_SOURCES = ("pyproject.toml", "README.md", "hfsae", "model_cards")
OPTIONAL_WHEEL_SOURCES = ("LICENSE", "MANIFEST.in", "setup.py", "setup.cfg")

TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"



def _hub_id(name: str, what: str, *, repo_type: str = "model") -> str:
    """The Hub repo id behind a registry name or repo id; a local path is refused (a Space cannot read it)."""
    from .hub.source import resolve

    if Path(name).exists():
        push = "hfsae push FOLDER ORG/NAME" if repo_type == "model" else "hfsae analyze SAE --push-to-hub ORG/NAME"
        raise ValueError(
            f"The {what} {name!r} is a local path, which a Space cannot read; push it first "
            f"(`{push}`) and name the repo id instead."
        )
    return resolve(name).location if repo_type == "model" else name


def build_wheel(destination: str | os.PathLike) -> Path:
    """Build hfsae's wheel from the checkout this package runs from into destination; return its path.

    What the build reads (WHEEL_SOURCES) is copied out of the checkout first, so building never
    writes into the source tree and nothing else in the checkout can reach the wheel.
    """
    root = Path(__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():
        raise FileNotFoundError(
            f"Exporting a Space builds hfsae's wheel from its source, but hfsae here is installed at {root} "
            "without pyproject.toml; install hfsae from a checkout (pip install -e .) and export from there."
        )
    destination = Path(destination)
    with tempfile.TemporaryDirectory(prefix="hfsae-wheel-") as scratch:
        source = Path(scratch) / "hfsae"
        source.mkdir()
        for name in (*WHEEL_SOURCES, *(name for name in OPTIONAL_WHEEL_SOURCES if (root / name).exists())):
            if (root / name).is_dir():
                shutil.copytree(root / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(root / name, source / name)
        # No build isolation: the build backend installed here builds it, without reaching an index.
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", scratch, str(source)]
        built = subprocess.run(command, capture_output=True, text=True)
        if built.returncode != 0:
            raise OSError(f"Building hfsae's wheel failed ({' '.join(command)}): {built.stderr.strip()[-2000:]}")
        (wheel,) = Path(scratch).glob("hfsae-*.whl")
        destination.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy2(wheel, destination / wheel.name))


def wheel_requirements(wheel: str | os.PathLike, extra: str = "space") -> list[str]:
    """The requirements a wheel declares for itself and its `extra` ("torch<2.15,>=2.4", ...), from its
    METADATA, and a check that the gradio running here (the Space's sdk_version) satisfies them."""
    import zipfile
    from email.parser import Parser

    import gradio
    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        declared = Parser().parsestr(archive.read(metadata).decode()).get_all("Requires-Dist") or []
    lines = []
    for line in declared:
        requirement = Requirement(line)
        marker = str(requirement.marker or "")
        if "extra" in marker:
            if not requirement.marker.evaluate({"extra": extra}):
                continue
            requirement.marker = None  # the extra's own requirements hold unconditionally here
        if requirement.name == "gradio" and gradio.__version__ not in requirement.specifier:
            raise RuntimeError(
                f"The Space would run gradio {gradio.__version__} (the version here), but hfsae needs {requirement}; "
                "install a gradio hfsae supports and export again."
            )
        lines.append(str(requirement))
    return lines


def export_space(
    output_dir: str | os.PathLike, sae: str, *, analysis: str | None = None, overwrite: bool = False
) -> Path:
    """Write a Space for the explorer of `sae` (a registry name or Hub repo id) into output_dir.

    The folder holds app.py (hfsae/space_app.py) and its settings app.json, hfsae's wheel (which
    app.py unpacks when it starts), requirements.txt with the wheel's own requirements, and README.md
    from the model_cards/space.md template (sdk, sdk_version, python_version, app_file, models and
    datasets links).

    Example:
        >>> export_space("my-space", "org/my-sae", analysis="org/my-sae-analysis")
    """
    import gradio
    from huggingface_hub import SpaceCard, SpaceCardData, constants

    from .folder import staged_folder
    from .hub.card import template_path

    model_id = _hub_id(sae, "SAE")
    if analysis is not None:
        _hub_id(analysis, "analysis", repo_type="dataset")
    name = display_name(sae)
    exported = (APP_FILE, REQUIREMENTS_FILE, "README.md", "*.whl", f"{VENDOR_DIR}/**", "**/__pycache__/**")
    with staged_folder(output_dir, overwrite=overwrite, replaces=exported, how_to_overwrite="--overwrite-output-dir") as folder:
        wheel = build_wheel(folder)
        shutil.copy2(Path(__file__).with_name("space_app.py"), folder / APP_FILE)
        settings = {"sae": sae, "analysis": analysis, "wheel": wheel.name, "vendor_dir": VENDOR_DIR}
        (folder / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")
        (folder / REQUIREMENTS_FILE).write_text(
            "# hfsae's own requirements (its [space] extra included), read from the wheel beside this file:\n"
            "# hfsae is not on PyPI, so app.py unpacks that wheel when it starts.\n"
            "# CPU builds of torch: a Space's default hardware has no GPU, and they are a tenth the download.\n"
            f"--extra-index-url {TORCH_CPU_INDEX}\n" + "".join(f"{line}\n" for line in wheel_requirements(wheel))
        )
        card_data = SpaceCardData(
            title=f"hfsae explorer: {name}"[:60],
            sdk="gradio",
            sdk_version=gradio.__version__,
            python_version=f"{sys.version_info.major}.{sys.version_info.minor}",
            app_file=APP_FILE,
            license="apache-2.0",
            models=[model_id],
            datasets=[analysis] if analysis else None,
            tags=["sparse-autoencoder", "interpretability", "hfsae"],
            emoji="🔬",
            colorFrom="red",
            colorTo="gray",
            pinned=False,
            short_description="Explore the latents of a TopK sparse autoencoder",
        )
        card = SpaceCard.from_template(
            card_data,
            template_path=str(template_path(SPACE_CARD_TEMPLATE)),
            sae_name=name,
            sae_url=f"{constants.ENDPOINT}/{model_id}",
            analysis=analysis,
            analysis_url=f"{constants.ENDPOINT}/datasets/{analysis}" if analysis else None,
            wheel=wheel.name,
        )
        card.save(folder / "README.md")
    return Path(output_dir)


def push_space(folder: str | os.PathLike, repo_id: str, *, private: bool | None = None, token: str | None = None) -> str:
    """Upload an exported Space folder as the Space repo repo_id (created when missing); return the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True).repo_id
    commit = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="space",
        commit_message="Explorer exported by hfsae space",
        ignore_patterns=[f"{VENDOR_DIR}/**"],  # the wheel unpacked by a local run of app.py
    )
    return commit.commit_url
