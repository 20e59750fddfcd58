"""``tvmptq quantize`` options and summary lines of CLE and QFT (tvmptq/algorithms/{cle,qft}.py)."""
from __future__ import annotations

from .errors import ConfigError

FLAGS = {  # flag -> (QFTConfig field, type, help)
    "--qft-iters": ("qft_iters", int, "QFT training iterations (default 150)"),
    "--qft-holdout": ("qft_holdout", float, "share of the --method-samples held out for QFT's early stopping (default 0.25)"),
    "--qft-holdout-groups": ("qft_holdout_groups", int,
                             "G >= 2: sample i is in group i mod G and QFT early-stops on whole held-out groups "
                             "(e.g. scenes of round-robin views); 0: random samples (default 0)"),
    "--qft-patience": ("qft_patience", int, "held-out scores without improvement before QFT stops (default 4)"),
    "--qft-eval-every": ("qft_eval_every", int, "QFT iterations between held-out scores (default 25)"),
    "--qft-intermediate": ("qft_intermediate", float,
                           "weight of block-boundary distillation terms next to the output's (default 0)"),
    "--qft-batch-size": ("batch_size", int, "QFT batch size (default 8)"),
}


def add_arguments(parser) -> None:
    for flag, (_, typ, text) in FLAGS.items():
        parser.add_argument(flag, type=typ, help=text)


def options(args, methods: list[str]) -> dict:
    """The QFT fields the user set, checked before any work; they need ``qft`` in --method."""
    given = {field: getattr(args, flag[2:].replace("-", "_")) for flag, (field, _, _) in FLAGS.items()
             if getattr(args, flag[2:].replace("-", "_")) is not None}
    if not given:
        return {}
    if "qft" not in methods:
        raise ConfigError(f"{', '.join(f for f in FLAGS if getattr(args, f[2:].replace('-', '_')) is not None)} "
                          f"apply to --method ...qft, not to --method {args.method}")
    from .algorithms.qft import QFTConfig, check_config
    check_config(QFTConfig(**given))
    return given


def summary(plan, methods: list[str]) -> None:
    if "cle" in methods:
        st = plan.stats["cle"]
        skipped = st["skipped"]
        print(f"CLE: {len(st['pairs'])} layer pairs equalized (largest |log factor| {st['max_factor']:.2f}); "
              f"{len(skipped)} skipped" + (": " + "; ".join(f"{s['first']}->{s['second']} ({s['reason']})"
                                                        for s in skipped[:3]) + (" ..." if len(skipped) > 3 else "")
                                           if skipped else ""))
    if "qft" in methods:
        st, info = plan.stats["qft"], plan.run_info.get("qft", {})
        print(f"QFT: {st['layers']} layers, {st['activation_steps']} activation steps, "
              f"{len(st['cle_pairs_learned'])} learned CLE pairs; {st['iterations']} iterations "
              f"({'stopped early' if st['stopped_early'] else 'all'}), best held-out loss {st['held_out_loss_best']:.4g} "
              f"at iteration {st['best_iteration']} (start {st['held_out_loss_start']:.4g}, "
              f"{st['held_out_samples']} held-out samples) in {info.get('fit_seconds', float('nan')):.1f} s, "
              f"peak RSS {info.get('peak_rss_mb', 0):.0f} MB (folded into integer weights, multipliers/shifts, "
              "int32 biases and clip bounds)")
