"""The figure of a run's tables: prompt tokens per variant, latency bars and, where the trainers'
logs are there, the GRPO and alignment learning curves."""

from __future__ import annotations

from pathlib import Path

from siren.tools.tables import VARIANT_LABELS, VARIANTS, Tables


def draw_figure(path: Path, tables: Tables, token_counts: dict[str, list[int]] | None) -> None:
    """Left: prompt tokens per variant (distribution, or mean with p50/p95 marks); right: latency bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from siren.io import atomic_path

    if tables.curves:
        fig, axes = plt.subplots(2, 2, figsize=(12, 9))
        (ax_tokens, ax_latency), (ax_grpo, ax_align) = axes
        draw_curves(ax_grpo, ax_align, tables.curves)
    else:
        fig, (ax_tokens, ax_latency) = plt.subplots(1, 2, figsize=(12, 4.5))
    variants = [v for v in VARIANTS if token_counts and token_counts.get(v)]
    if variants:
        # Whiskers at p5/p95 so the top whisker is the table's p95; the raw-history tail goes far beyond.
        ax_tokens.boxplot([token_counts[v] for v in variants], whis=(5, 95), showfliers=False, showmeans=True)
        ax_tokens.set_xticks(range(1, len(variants) + 1), [VARIANT_LABELS[v] for v in variants],
                             rotation=15, fontsize=8)
        ax_tokens.set_title(f"Prompt tokens per row ({tables.token_split}): quartiles, p5-p95, mean (triangle)",
                            fontsize=10)
    else:
        present = [row for row in tables.tokens if row["mean"] is not None]
        if present:
            positions = range(len(present))
            ax_tokens.bar(positions, [row["mean"] for row in present], color="tab:blue", label="mean")
            ax_tokens.scatter(positions, [row["p95"] or 0 for row in present], color="black", marker="_",
                              s=400, label="p95", zorder=3)
            ax_tokens.set_xticks(list(positions), [row["variant"] for row in present], rotation=15, fontsize=8)
            ax_tokens.legend()
            ax_tokens.set_title(f"Prompt tokens, mean and p95 ({tables.token_split})")
        else:
            ax_tokens.text(0.5, 0.5, "prompt stats: not run", ha="center", va="center")
    ax_tokens.set_ylabel("tokens")

    timed = [row for row in tables.latency if row["ms_per_sample"] is not None]
    if timed:
        positions = range(len(timed))
        bars = ax_latency.bar(positions, [row["ms_per_sample"] for row in timed], color="tab:orange")
        ax_latency.bar_label(bars, labels=[f"{row['ms_per_sample']:.1f} ms" for row in timed], fontsize=8)
        ax_latency.set_xticks(list(positions), [f"{row['decoding']}\n{row['engine'] or '?'}, batch {row['batch_size'] or '?'}"
                                                for row in timed], rotation=20, fontsize=7, ha="right")
        ax_latency.set_yscale("log")
        ax_latency.set_ylabel("ms / sample (log)")
        ax_latency.set_title("Latency")
    else:
        ax_latency.text(0.5, 0.5, "latency: not run", ha="center", va="center")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def draw_curves(ax_grpo, ax_align, curves: dict) -> None:
    """Bottom row: GRPO's reward and format rate per step; stage 5's cosine distance and eval MAE."""
    grpo = curves.get("grpo", {})
    if grpo:
        for name, style in (("reward", "-"), ("eval_reward", "o-")):
            if name in grpo:
                ax_grpo.plot(*zip(*grpo[name]), style, label=name.replace("_", " "), color="tab:blue")
        ax_grpo.set_ylabel("mean reward (-3..3)")
        rates = [name for name in ("format_rate", "eval_format_rate") if name in grpo]
        if rates:
            twin = ax_grpo.twinx()
            for name in rates:
                twin.plot(*zip(*grpo[name]), "s--" if name.startswith("eval") else "--", color="tab:green",
                          label=name.replace("_", " "))
            twin.set_ylim(0, 1.05)
            twin.set_ylabel("format rate")
            twin.legend(loc="lower right", fontsize=8)
        ax_grpo.legend(loc="upper left", fontsize=8)
        ax_grpo.set_xlabel("GRPO step")
        ax_grpo.set_title("Stage 3: GRPO (eval = held-out rows)")
    else:
        ax_grpo.text(0.5, 0.5, "GRPO log: not run", ha="center", va="center")
    align = curves.get("alignment", {})
    ce_only = curves.get("alignment_ce", {})
    if align or ce_only:
        for name, style in (("cosine_distance", "-"), ("eval_cosine_distance", "o-")):
            if name in align:
                ax_align.plot(*zip(*align[name]), style, color="tab:purple", label=f"HA: {name.replace('_', ' ')}")
        ax_align.set_ylabel("1 - cos(student, teacher), mean over layers")
        twin = ax_align.twinx()
        for label, series, color in (("HA", align, "tab:red"), ("w/o HA (CE only)", ce_only, "tab:gray")):
            if "eval_mae" in series:
                twin.plot(*zip(*series["eval_mae"]), "s--", color=color, label=f"{label}: eval MAE")
        twin.set_ylabel("eval MAE")
        twin.legend(loc="upper right", fontsize=8)
        ax_align.legend(loc="upper left", fontsize=8)
        ax_align.set_xlabel("stage 5 step")
        ax_align.set_title("Stage 5: hidden-state alignment")
    else:
        ax_align.text(0.5, 0.5, "alignment log: not run", ha="center", va="center")

