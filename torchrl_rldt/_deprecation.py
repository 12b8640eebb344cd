"""Renamed arguments and attributes: the old name keeps working for a while, with a warning."""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

__all__ = ["RenamedAttribute", "renamed_keyword_arguments"]


def renamed_keyword_arguments(owner: str, given: Mapping[str, Any], renames: Mapping[str, str],
                              current: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The values of ``current`` with the deprecated keyword arguments in ``given`` moved to their new names.

    Args:
        owner (str): the callable's name, for the messages.
        given (Mapping): the keyword arguments the callable's signature did not name (its
            ``**kwargs``).
        renames (Mapping): old name -> new name.
        current (Mapping): new name -> the value the call passed (or the default).
        defaults (Mapping): new name -> the signature's default.

    Raises:
        TypeError: for a keyword argument that is neither a parameter nor a renamed one (as Python
            would), or for an old name given together with a non-default value of its new name.
    """
    unknown = sorted(set(given) - set(renames))
    if unknown:
        raise TypeError(f"{owner}() got unexpected keyword argument(s) {unknown}.")
    values = dict(current)
    for old, value in given.items():
        new = renames[old]
        if values[new] != defaults[new]:
            raise TypeError(f"{owner}() got both {old}= (deprecated) and {new}=; pass {new}= alone.")
        warnings.warn(f"{owner}({old}=...) is deprecated: pass {new}= (TorchRL's name for a loss "
                      f"weight, kept as a buffer of the loss).", DeprecationWarning, stacklevel=3)
        values[new] = value
    return values


class RenamedAttribute:
    """A class attribute that forwards reads and writes of an old name to its new name, with a warning.

    Writing through it matters for a scheduled coefficient: without it ``loss.old_name = 2.0`` would
    set an attribute that nothing reads.

    Args:
        new (str): the attribute's new name.

    Examples:
        >>> import warnings
        >>> class Loss:
        ...     weight_coeff = 1.0
        ...     weight_coef = RenamedAttribute("weight_coeff")
        >>> loss = Loss()
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     loss.weight_coef = 2.0
        >>> loss.weight_coeff
        2.0
    """

    def __init__(self, new: str) -> None:
        self.new = new

    def __set_name__(self, owner: type, name: str) -> None:
        self.old, self.owner = name, owner.__name__

    def _warn(self) -> None:
        warnings.warn(f"{self.owner}.{self.old} is deprecated: use {self.owner}.{self.new}.",
                      DeprecationWarning, stacklevel=3)

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        self._warn()
        return getattr(instance, self.new)

    def __set__(self, instance: Any, value: Any) -> None:
        self._warn()
        setattr(instance, self.new, value)
