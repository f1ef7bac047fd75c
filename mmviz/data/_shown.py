"""How every trace shows itself in a notebook: as its view, or as text when the view cannot be made."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmviz.widgets._view import View


class Shown:
    """Mixin of every trace: the last expression of a cell displays ``trace.show()``.

    When the view cannot be made (too big for its default budget, the front end not built, no
    anywidget), the cell shows the trace's text summary and says why.
    """

    def show(self, **options: Any) -> View:  # pragma: no cover - every trace defines it
        raise NotImplementedError

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        from mmviz.errors import MMVizError

        try:
            view = self.show()
        except (MMVizError, ImportError) as err:
            return {"text/plain": f"{self!r}\n(shown as text: {err})"}
        return view._repr_mimebundle_(**kwargs)
