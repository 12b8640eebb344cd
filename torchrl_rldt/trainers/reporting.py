# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""What a run shows a person: its progress bar and its learning curve.

tqdm and matplotlib are the examples' dependencies (``pip install torchrl-rldt[examples]``), not
the library's: they are imported when a bar or a plot is made, so that the rest of the package
imports with ``install_requires`` alone.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

__all__ = ["plot_learning_curve", "progress_bar"]


def progress_bar(total: int, *, initial: int = 0, description: str = "", enabled: bool = True) -> Any:
    """A tqdm bar over env steps (a disabled one, still with ``update``/``close``, if not ``enabled``).

    Args:
        total (int): the run's env-step budget.

    Keyword Args:
        initial (int, optional): env steps already taken (a resumed run). Defaults to ``0``.
        description (str, optional): the bar's label. Defaults to ``""``.
        enabled (bool, optional): ``False`` draws nothing. Defaults to ``True``.
    """
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=description, disable=not enabled, mininterval=2)


def plot_learning_curve(history: Sequence[dict], path: str | Path, *, ylabel: str, title: str) -> None:
    """Saves evaluation means (with their standard deviations) against env steps as a PNG.

    Args:
        history (sequence of dict): the evaluations, each with ``env_steps``, ``mean`` and
            ``std``.
        path (str or Path): the image file.

    Keyword Args:
        ylabel (str): the y axis' label, e.g. ``"deterministic return"``.
        title (str): the figure's title.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from torchrl_rldt.trainers.reporting import plot_learning_curve
        >>> path = Path(tempfile.mkdtemp()) / "curve.png"
        >>> plot_learning_curve([{"env_steps": 0, "mean": 1.0, "std": 0.1},
        ...                      {"env_steps": 10, "mean": 2.0, "std": 0.2}], path,
        ...                     ylabel="return", title="demo")
        >>> path.stat().st_size > 0
        True
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar([h["env_steps"] for h in history], [h["mean"] for h in history],
                yerr=[h["std"] for h in history], marker="o", capsize=3)
    ax.set_xlabel("env steps")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
