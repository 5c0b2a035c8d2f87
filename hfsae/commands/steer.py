"""`hfsae steer SAE --latent N`: generate with a latent steered, or measure a sweep of strengths (`--sweep`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hfsae.commands.analyze import DEFAULT_SAE


@dataclass
class SteerArgs:
    """Options of `hfsae steer`."""

    sae: str = field(
        default=DEFAULT_SAE,
        metadata={"help": "The SAE: a folder, Hub repo or registry name (default: the folder `hfsae train` writes)."},
    )
    latent: int | None = field(default=None, metadata={"help": "The latent to steer (required)."})
    strength: float = field(default=8.0, metadata={"help": "Strength: added × the latent's unit decoder direction."})
    sweep: list[float] | None = field(
        default=None,
        metadata={"help": "Measure these strengths instead: activation, KL and ΔCE per strength, with a plot."},
    )
    relative: bool = field(
        default=False, metadata={"help": "Strengths are multiples of each token's activation norm, not lengths."}
    )
    prompt: list[str] = field(
        default_factory=lambda: ["The"], metadata={"help": "Prompts to continue (one or more)."}
    )
    max_new_tokens: int = field(default=32, metadata={"help": "Tokens generated per prompt (greedy)."})
    heldout: list[str] | None = field(
        default=None,
        metadata={"help": "Held-out texts for KL and ΔCE (default: the built-in corpus's last texts)."},
    )
    model: str | None = field(
        default=None, metadata={"help": "The language model (default: the SAE's base_model)."}
    )
    hook_point: str | None = field(default=None, metadata={"help": "Where to steer (default: the SAE's hook point)."})
    plot: str | None = field(
        default=None, metadata={"help": "Where --sweep saves its figure (default: steer_latent<N>.png here)."}
    )


def run_steer(args: SteerArgs):
    """`hfsae steer`: print unsteered and steered continuations, or a sweep's table, and save its plot."""
    from hfsae.activations import load_language_model
    from hfsae.hub.loading import load
    from hfsae.interventions import SteeringSweep, plot_sweep, steering_sweep

    if args.latent is None:
        raise ValueError("Name the latent to steer with --latent N.")
    if args.sae == DEFAULT_SAE and not Path(DEFAULT_SAE).is_dir():
        raise FileNotFoundError(
            f"No SAE folder {DEFAULT_SAE!r} here: train the built-in default with `hfsae train`, or name one with --sae."
        )
    sae = load(args.sae)
    base = args.model or sae.config.base_model
    if base is None:
        raise ValueError("The SAE's config names no base_model; name the language model with --model.")
    model, tokenizer = load_language_model(base, quiet=True)
    strengths = args.sweep if args.sweep else [0.0, args.strength]
    sweep = steering_sweep(
        model, sae, tokenizer, args.latent, strengths, prompts=args.prompt, heldout=args.heldout,
        relative=args.relative, max_new_tokens=args.max_new_tokens, hook_point=args.hook_point,
    )
    if not args.sweep:
        for number, prompt in enumerate(args.prompt):
            print(f"prompt: {prompt!r}\n  unsteered: {sweep.points[0].continuations[number]!r}\n"
                  f"  steered ({args.strength:g}): {sweep.points[1].continuations[number]!r}")
        return sweep
    print(f"latent {sweep.latent} at {sweep.hook_point}, {sweep.n_heldout} held-out tokens "
          f"(clean CE {sweep.ce_clean:.4f}), strengths {'× ‖x‖' if sweep.relative else 'absolute'}")
    print(" | ".join(SteeringSweep.HEADERS))
    for row in sweep.rows():
        print(" | ".join(f"{value:g}" for value in row))
    for point in sweep.points:
        print(f"strength {point.strength:g}: " + " / ".join(repr(text) for text in point.continuations))
    path = plot_sweep(sweep, args.plot or f"steer_latent{sweep.latent}.png")
    print(f"plot → {path}")
    return sweep
