"""The explorer app: the Gradio interface over `hfsae.explorer.Explorer`, and the Space that serves it.

`build_app(sae)` returns a `gr.Blocks` with five tabs (Text, Latent, Search, Steer, Overview) whose
events call the explorer's views; its queue is bounded, so a burst of requests waits in line or is
turned away instead of piling up. The app makes no outbound calls: analytics are off and the
default theme's fonts are served locally.

`export_space(folder, sae, analysis=...)` writes a Space that deploys on its own: hfsae's wheel built
from this checkout (hfsae is not on PyPI), `app.py` which unpacks that wheel when it starts (a Space
installs requirements.txt before the rest of its files are there, so the wheel cannot be a
requirement), `requirements.txt` with the wheel's own requirements, and a `README.md` whose header
declares the Gradio SDK and links the SAE and its analysis dataset; `push_space` uploads it as a
Space repo.
"""

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .explorer import MAX_NEW_TOKENS, TOP_LATENTS_PER_TOKEN, Explorer, ExplorerError, display_name

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


def _blocks(explorer: Explorer):
    # Gradio reads these when it is imported: no usage statistics, no update check, nothing leaves
    # the machine. (This module does not import gradio at the top, so that `hfsae --help` and the
    # views work without the [space] extra; the SelectData annotations below need this module not
    # to use postponed annotations, since `gr` exists only in this function.)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import gradio as gr
    except ImportError as err:
        raise ImportError("The explorer needs gradio: pip install 'hfsae[space]'.") from err

    def shown(fn):
        """Run a view; a user error becomes a visible message instead of a stack trace."""

        # wraps keeps fn's signature visible: Gradio injects SelectData by its annotation.
        @functools.wraps(fn)
        def wrapped(*args):
            try:
                return fn(*args)
            except ExplorerError as err:
                raise gr.Error(str(err)) from err

        return wrapped

    def open_latent(latent):
        latent = explorer.check_latent(latent)
        summary, histogram, top, random, logits = explorer.latent_view(latent)
        return (
            gr.Tabs(selected="latent"),
            latent,
            summary,
            # Bin labels are categories: without an explicit order the plot sorts them as strings.
            gr.BarPlot(value=_histogram_frame(histogram), sort=[label for label, _ in histogram] or None),
            top,
            random,
            logits,
        )

    # The default theme serves its fonts from the app itself (no Google Fonts request).
    with gr.Blocks(title=f"hfsae explorer: {explorer.name}", analytics_enabled=False) as demo:
        gr.Markdown(
            f"# hfsae explorer\n{explorer.name}: {explorer.n_latents:,} latents at `{explorer.sae.config.hook_point}`",
            elem_id="header",
        )
        with gr.Tabs() as tabs:
            with gr.Tab("Text", id="text"):
                text_in = gr.Textbox(
                    label="Text",
                    lines=3,
                    placeholder="Type text to see which latents fire",
                    elem_id="text-input",
                )
                with gr.Row():
                    # A textbox, not a Number: empty must stay empty (the strongest latent), not become 0.
                    text_latent = gr.Textbox(
                        label="Latent (empty: the strongest in this text)",
                        value="",
                        elem_id="text-latent",
                    )
                    text_button = gr.Button("Show activations", variant="primary", elem_id="text-button")
                text_message = gr.Markdown(elem_id="text-message")
                text_tokens = gr.HighlightedText(
                    label="Tokens coloured by the latent's activation",
                    elem_id="text-tokens",
                    show_legend=False,
                    combine_adjacent=False,
                )
                text_table = gr.Dataframe(
                    headers=[
                        "position",
                        "token",
                        *[f"latent {i + 1}" for i in range(TOP_LATENTS_PER_TOKEN)],
                    ],
                    label="Each token's top latents: click a latent to open it",
                    interactive=False,
                    elem_id="text-table",
                )
            with gr.Tab("Latent", id="latent"):
                with gr.Row():
                    latent_in = gr.Number(
                        label=f"Latent (0–{explorer.n_latents - 1})",
                        precision=None,
                        value=0,
                        elem_id="latent-input",
                    )
                    latent_button = gr.Button("Open", variant="primary", elem_id="latent-button")
                latent_summary = gr.Markdown(elem_id="latent-summary")
                latent_histogram = gr.BarPlot(
                    x="activation",
                    y="count",
                    title="Activation histogram (firing tokens)",
                    elem_id="latent-histogram",
                    sort=None,
                )
                gr.Markdown("**Top activating contexts** (activation at the shaded peak)")
                latent_top = gr.HTML(elem_id="latent-top")
                gr.Markdown("**Random activating contexts** (activation · quantile among the latent's firings)")
                latent_random = gr.HTML(elem_id="latent-random")
                latent_logits = gr.Dataframe(
                    headers=["promoted", "logit", "suppressed", "logit"],
                    interactive=False,
                    label="Logit effects (decoder direction through the unembedding)",
                    elem_id="latent-logits",
                )
            with gr.Tab("Search", id="search"):
                with gr.Row():
                    search_in = gr.Textbox(label="Token or explanation text", elem_id="search-input")
                    search_by = gr.Radio(["token", "explanation"], value="token", label="Search by")
                    search_button = gr.Button("Search", variant="primary", elem_id="search-button")
                search_table = gr.Dataframe(
                    headers=[
                        "latent",
                        "density",
                        "max activation",
                        "matches",
                        "explanation",
                    ],
                    interactive=False,
                    label="Latents: click one to open it",
                    elem_id="search-table",
                )
            with gr.Tab("Steer", id="steer"):
                steer_prompt = gr.Textbox(label="Prompt", lines=2, elem_id="steer-prompt")
                with gr.Row():
                    steer_latent = gr.Number(label="Latent", precision=None, value=0, elem_id="steer-latent")
                    steer_strength = gr.Slider(
                        -100,
                        100,
                        value=10,
                        step=0.5,
                        label="Strength (added × decoder direction)",
                    )
                    steer_tokens = gr.Slider(1, MAX_NEW_TOKENS, value=24, step=1, label="New tokens")
                steer_button = gr.Button("Generate", variant="primary", elem_id="steer-button")
                steer_message = gr.Markdown()
                with gr.Row():
                    steer_plain = gr.Textbox(label="Unsteered", lines=6, elem_id="steer-plain")
                    steer_steered = gr.Textbox(label="Steered", lines=6, elem_id="steer-steered")
            with gr.Tab("Overview", id="overview"):
                gr.Markdown(explorer.overview(), elem_id="overview")

        latent_outputs = [
            tabs,
            latent_in,
            latent_summary,
            latent_histogram,
            latent_top,
            latent_random,
            latent_logits,
        ]

        def show_text(text, latent):
            highlighted, shown_latent, rows, message = explorer.text_view(text, latent)
            strongest = " (the strongest in this text)" if not str(latent or "").strip() else ""
            message = f"Colouring by **latent {shown_latent}**{strongest}. {message}".strip()
            return highlighted, rows, message

        text_inputs, text_outputs = (
            [text_in, text_latent],
            [text_tokens, text_table, text_message],
        )
        text_button.click(shown(show_text), text_inputs, text_outputs, api_name="text")
        text_in.submit(shown(show_text), text_inputs, text_outputs, api_name=False)

        def open_from_table(evt: gr.SelectData):
            latent = _latent_in_cell(evt.value)
            if latent is None and evt.row_value:
                # A click on the position or token opens the token's strongest latent.
                latent = next(
                    (_latent_in_cell(cell) for cell in evt.row_value[2:] if _latent_in_cell(cell) is not None),
                    None,
                )
            if latent is None:
                return [gr.skip()] * len(latent_outputs)
            return open_latent(latent)

        text_table.select(shown(open_from_table), None, latent_outputs, api_name=False)
        latent_button.click(shown(open_latent), [latent_in], latent_outputs, api_name="latent")
        latent_in.submit(shown(open_latent), [latent_in], latent_outputs, api_name=False)

        search_button.click(
            shown(explorer.search),
            [search_in, search_by],
            [search_table],
            api_name="search",
        )
        search_in.submit(
            shown(explorer.search),
            [search_in, search_by],
            [search_table],
            api_name=False,
        )

        def open_from_search(evt: gr.SelectData):
            if not evt.row_value:
                return [gr.skip()] * len(latent_outputs)
            return open_latent(int(evt.row_value[0]))

        search_table.select(shown(open_from_search), None, latent_outputs, api_name=False)
        steer_button.click(
            shown(explorer.steer),
            [steer_prompt, steer_latent, steer_strength, steer_tokens],
            [steer_plain, steer_steered, steer_message],
            api_name="steer",
        )
    return demo.queue(max_size=MAX_QUEUE_SIZE, default_concurrency_limit=CONCURRENCY_LIMIT)


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
APP_FILE = "app.py"
REQUIREMENTS_FILE = "requirements.txt"
# What building hfsae's wheel reads from its checkout (an allow-list: tests, docs, git history and
# whatever else lies in the checkout stay behind); the optional ones are copied when present.
WHEEL_SOURCES = ("pyproject.toml", "README.md", "hfsae", "model_cards")
OPTIONAL_WHEEL_SOURCES = ("LICENSE", "MANIFEST.in", "setup.py", "setup.cfg")

TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
VENDOR_DIR = ".hfsae"  # where the exported app.py unpacks its wheel at start (never uploaded)

APP_SOURCE = '''"""The hfsae explorer for {name} (written by `hfsae space --export`).

Space variables:
HFSAE_SAE        the SAE: a registry name or Hub repo id (default: {sae})
HFSAE_ANALYSIS   its analysis: a Hub dataset repo (default: {analysis})
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

WHEEL = Path(__file__).resolve().parent / {wheel!r}


def use_vendored_hfsae() -> Path:
    """Put hfsae from the wheel beside this file first on sys.path; return where it was unpacked.

    hfsae is not on PyPI, and a Space installs requirements.txt before this folder is copied in, so
    the wheel cannot be a requirement there: pip unpacks it here instead (no index, no
    dependencies: requirements.txt installed those), once per wheel.
    """
    digest = hashlib.sha256(WHEEL.read_bytes()).hexdigest()[:16]
    try:
        target = WHEEL.parent / {vendor!r} / digest
        target.parent.mkdir(exist_ok=True)
    except OSError:  # a read-only folder: a private temporary one, unpacked at every start
        target = Path(tempfile.mkdtemp(prefix="hfsae-")) / digest
    if not target.is_dir():
        staging = Path(tempfile.mkdtemp(prefix=f".{{digest}}-", dir=target.parent))
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(staging)]
        subprocess.run([*pip, str(WHEEL)], check=True)
        try:
            staging.rename(target)
        except OSError:  # another process unpacked the same wheel first: use that one
            if not target.is_dir():
                raise
            shutil.rmtree(staging, ignore_errors=True)
    sys.path.insert(0, str(target))
    return target


use_vendored_hfsae()
import hfsae  # noqa: E402
from hfsae.space import build_app  # noqa: E402

print(f"hfsae from {{Path(hfsae.__file__).parent}}", flush=True)
demo = build_app(os.environ.get("HFSAE_SAE", {sae!r}), os.environ.get("HFSAE_ANALYSIS", {analysis!r}) or None)

if __name__ == "__main__":
    demo.launch()
'''


def _hub_id(name: str, what: str, *, repo_type: str = "model") -> str:
    """The Hub repo id behind a registry name or repo id; a local path is refused (a Space cannot read it)."""
    from .hub.loading import resolve

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

    The folder holds app.py, hfsae's wheel (which app.py unpacks when it starts), requirements.txt
    with the wheel's own requirements, and README.md from the model_cards/space.md template (sdk,
    sdk_version, python_version, app_file, models and datasets links).

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
        (folder / APP_FILE).write_text(
            APP_SOURCE.format(name=name, sae=sae, analysis=analysis, wheel=wheel.name, vendor=VENDOR_DIR)
        )
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
