"""How the data helpers build their exceptions: through a factory a layer can supply.

A data layer passes its ``error`` method, so messages start with the layer's name and
type; used alone, the helpers raise the plain error classes.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import InvalidParameterError

#: ``factory(message, error_class=InvalidParameterError) -> Exception``, the shape of ``Layer.error``
ErrorFactory = Callable[..., Exception]


def plain_error(message: str, cls: type[Exception] = InvalidParameterError) -> Exception:
    """The error factory used without a layer: ``cls(message)``, with ``Layer.error``'s default class."""
    return cls(message)
