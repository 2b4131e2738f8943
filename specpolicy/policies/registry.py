"""The policy registry: names -> ``Policy`` classes, with one-line errors a user can act on.

Registration happens in exactly one place, the ``@register_policy`` class decorator; importing
``specpolicy.policies`` therefore registers the built-ins. Configs and command lines name registry entries
(``get_policy("threshold", tau_trust=0.95)``), never module paths.

Parameter checking lives here too, so every policy reports a bad value the same way:
``PolicyParamError: threshold: tau_trust=1.5 is out of range; allowed: 0 <= tau_trust <= 1``.

Example:
    >>> from specpolicy.policies import get_policy, list_policies
    >>> get_policy("fixed", k=3)
    FixedPolicy(k=3)
    >>> "threshold" in list_policies()
    True
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
import numbers
from typing import Any, TypeVar

from specpolicy.policies.base import Policy

__all__ = [
    "MAX_DEPTH",
    "PolicyParamError",
    "UnknownPolicyError",
    "check_param",
    "get_policy",
    "list_policies",
    "policy_class",
    "register_policy",
]

MAX_DEPTH = 16  # the deepest draft any built-in policy may ask for (k, k_max <= MAX_DEPTH)

_REGISTRY: dict[str, type[Policy]] = {}
P = TypeVar("P", bound=type[Policy])


class UnknownPolicyError(ValueError):
    """A policy name that is not registered; the message suggests the closest registered names."""


class PolicyParamError(ValueError):
    """A policy parameter that is unknown, of the wrong type or out of range; the message says what is allowed."""


def register_policy(cls: P) -> P:
    """Class decorator: register ``cls`` under its own class attribute ``name``.

    A name may be registered once; registering a second class under it raises ``ValueError``. (Re-running the
    decorator on the same class definition, e.g. after ``importlib.reload``, replaces the entry.)

    Example:
        >>> from specpolicy.policies import Action
        >>> @register_policy
        ... class Verify2(Policy):
        ...     name = "doc_verify2"
        ...     def decide(self, state):
        ...         return Action.extend() if state.depth < min(2, state.budget) else Action.verify()
        >>> get_policy("doc_verify2")
        Verify2()
        >>> _ = _REGISTRY.pop("doc_verify2")  # (keep the registry clean for other examples)
    """
    if not (isinstance(cls, type) and issubclass(cls, Policy)):
        raise TypeError(f"register_policy: {cls!r} is not a Policy subclass")
    name = cls.__dict__.get("name")
    if not isinstance(name, str) or not name:
        raise TypeError(f"register_policy: {cls.__name__} must define its own class attribute `name` (a non-empty str)")
    old = _REGISTRY.get(name)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(
            f"register_policy: name {name!r} is already taken by {old.__module__}.{old.__qualname__}; "
            f"choose another `name` for {cls.__module__}.{cls.__qualname__}"
        )
    _REGISTRY[name] = cls
    return cls


def list_policies() -> list[str]:
    """The registered policy names, sorted.

    Example:
        >>> list_policies()[:2]
        ['ar', 'calibrated']
    """
    return sorted(_REGISTRY)


def policy_class(name: str) -> type[Policy]:
    """The class registered under ``name``; ``UnknownPolicyError`` (with a "did you mean" hint) otherwise.

    Example:
        >>> policy_class("threshold").__name__
        'ThresholdPolicy'
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownPolicyError(_unknown_name_message(name)) from None


def get_policy(name_or_instance: str | Policy, **params: Any) -> Policy:
    """A policy instance: a ``Policy`` instance is returned as is; a name builds its class with ``params``.

    Raises ``UnknownPolicyError`` for an unknown name and ``PolicyParamError`` for unknown or bad parameters.

    Example:
        >>> get_policy("threshold", tau_trust=0.95)
        ThresholdPolicy(tau_extend=0.5, tau_trust=0.95, k_max=6)
        >>> p = get_policy("ar"); get_policy(p) is p
        True
        >>> get_policy("treshold")
        Traceback (most recent call last):
        ...
        specpolicy.policies.registry.UnknownPolicyError: unknown policy 'treshold'; did you mean 'threshold'? allowed: ...
    """
    if isinstance(name_or_instance, Policy):
        if params:
            raise PolicyParamError(
                f"{name_or_instance.name}: parameters {sorted(params)} given with a policy instance; "
                "allowed: a policy name with parameters, or an instance alone"
            )
        return name_or_instance
    if not isinstance(name_or_instance, str):
        raise TypeError(
            f"get_policy: expected a policy name or a Policy instance, got {type(name_or_instance).__name__}"
        )
    cls = policy_class(name_or_instance)
    _check_signature(cls, params)
    return cls(**params)


def check_param(
    policy: str,
    param: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    integer: bool = False,
) -> Any:
    """Return ``value`` (as ``int`` or ``float``) if ``low <= value <= high``; else raise one-line ``PolicyParamError``.

    ``None`` bounds are open. ``bool`` is never accepted as a number; NaN is always out of range.

    Example:
        >>> check_param("fixed", "k", 4, 1, 16, integer=True)
        4
        >>> check_param("threshold", "tau_trust", 1.5, 0, 1)
        Traceback (most recent call last):
        ...
        specpolicy.policies.registry.PolicyParamError: threshold: tau_trust=1.5 is out of range; allowed: 0 <= tau_trust <= 1
    """
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        what = "an integer" if integer else "a number"
        raise PolicyParamError(f"{policy}: {param}={value!r} is not {what}; allowed: "
                               f"{_range_text(param, low, high, integer)}")
    number = int(value) if integer else float(value)
    if math.isnan(number) or (low is not None and number < low) or (high is not None and number > high):
        raise PolicyParamError(f"{policy}: {param}={value} is out of range; allowed: "
                               f"{_range_text(param, low, high, integer)}")
    return number


def _range_text(param: str, low: float | None, high: float | None, integer: bool) -> str:
    parts = [f"{low:g} <=" if low is not None else "", param, f"<= {high:g}" if high is not None else ""]
    text = " ".join(p for p in parts if p)
    return f"integer {text}" if integer else text


def _unknown_name_message(name: object) -> str:
    names = list_policies()
    close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ";"
    return f"unknown policy {name!r}{hint} allowed: {', '.join(names)}"


@functools.lru_cache(maxsize=256)
def _signature(cls: type[Policy]) -> tuple[inspect.Signature, tuple[str, ...], bool]:
    """``cls``'s signature, its keyword parameters and whether it takes ``**kwargs``, worked out once per class (a
    study builds a policy per trial; ``inspect.signature`` is most of what building a small one costs)."""
    sig = inspect.signature(cls)
    accepted = [p.name for p in sig.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return sig, tuple(accepted), any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


def _check_signature(cls: type[Policy], params: dict[str, Any]) -> None:
    """Unknown or missing keyword parameters -> one-line ``PolicyParamError`` naming the allowed ones."""
    sig, accepted, open_ended = _signature(cls)
    if open_ended:
        return
    allowed = ", ".join(accepted) if accepted else "none"
    unknown = [k for k in params if k not in accepted]
    if unknown:
        close = [m for k in unknown for m in difflib.get_close_matches(k, accepted, n=1)]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise PolicyParamError(f"{cls.name}: unknown parameter {', '.join(unknown)}{hint}; allowed: {allowed}")
    try:
        sig.bind(**params)
    except TypeError as err:
        raise PolicyParamError(f"{cls.name}: {err}; allowed: {allowed}") from None
