"""Which attention maps an exported page embeds, within a byte budget, and the note on what it left out."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mmviz.widgets._state import MapKey, map_nbytes

if TYPE_CHECKING:
    from mmviz.widgets.attention_view import AttentionView

__all__ = ["choose_maps", "ranges"]


def ranges(values: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` → ``"0–2, 5, 7–8"``."""
    out: list[str] = []
    items = sorted(set(values))
    i = 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1] == items[j] + 1:
            j += 1
        out.append(str(items[i]) if i == j else f"{items[i]}–{items[j]}")
        i = j + 1
    return ", ".join(out)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def _candidates(view: AttentionView) -> list[MapKey]:
    """Every map of the view, most wanted first."""
    order: list[MapKey] = [MapKey(view.module, view.layer, view.aggregate, view.head)]
    modules = sorted(view._modules, key=lambda m: m["name"] != view.module)
    for m in modules:
        name, layers, heads = m["name"], m["layers"], m["heads"]
        current = view.layer if name == view.module and view.layer in layers else layers[-1]
        by_distance = sorted(layers, key=lambda lab: (abs(lab - current), lab))
        order += [MapKey(name, lab, "mean") for lab in by_distance]
        order += [MapKey(name, current, "head", h) for h in heads]
        order += [MapKey(name, lab, "max") for lab in by_distance]
        if m["self_attention"]:
            order.append(MapKey(name, current, "rollout"))
        order += [MapKey(name, lab, "head", h) for lab in by_distance if lab != current for h in heads]
    seen: set[str] = set()
    unique = []
    for key in order:
        if key.key not in seen:
            seen.add(key.key)
            unique.append(key)
    return unique


def choose_maps(view: AttentionView, budget: int) -> tuple[list[MapKey], list[str]]:
    """Picks the maps to embed and describes what was left out.

    Args:
        view: the view being exported.
        budget: bytes of maps to embed.

    Returns:
        The chosen keys, and notes for the page (empty when everything fits).
    """
    info = {m["name"]: m for m in view._modules}
    chosen: list[MapKey] = []
    left: list[MapKey] = []
    used = 0
    for key in _candidates(view):
        m = info[key.module]
        cost = map_nbytes(m["n_query"], m["n_key"], m["q_step"], m["k_step"])
        if not chosen or used + cost <= budget:
            chosen.append(key)
            used += cost
        elif key.aggregate != "rollout" or key.layer == view.layer:
            left.append(key)
    if not left:
        return chosen, []
    notes = [
        f"This page embeds {len(chosen)} of {len(chosen) + len(left)} attention maps "
        f"({_size(used)}; export budget {_size(budget)}, raise it with save(..., budget=...)). "
        "Thumbnails of every head are included; a map that was left out says so when selected."
    ]
    for name in info:
        groups: dict[str, list[int]] = {}
        for key in left:
            if key.module == name:
                label = {"head": "per-head maps", "mean": "head mean", "max": "head max", "rollout": "rollout"}
                groups.setdefault(label[key.aggregate], []).append(key.layer)
        if groups:
            parts = "; ".join(f"{what} of layers {ranges(layers)}" for what, layers in groups.items())
            notes.append(f"Left out of {name!r}: {parts}.")
    return chosen, notes
