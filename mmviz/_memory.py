"""Default memory budgets: a share of the machine's memory, overridable by an environment variable."""

from __future__ import annotations

import os


def memory_budget(env: str) -> int:
    """Bytes a budget allows by default: ``$env`` when set, else half the machine's memory.

    At most half the address space the process may use (``ulimit -v``), so a capped process is refused
    clearly rather than failing in the middle of an allocation.

    Raises:
        ValueError: ``$env`` is set but is not a number of bytes.
    """
    value = os.environ.get(env)
    if value:
        try:
            return int(float(value))
        except ValueError:
            raise ValueError(f"{env}={value!r} is not a number of bytes") from None
    try:
        budget = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) // 2
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows): a fixed 8 GiB
        budget = 8 << 30
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY and soft > 0:
            budget = min(budget, soft // 2)
    except (ImportError, OSError, ValueError):
        pass
    return budget
