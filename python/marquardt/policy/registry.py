"""Named policies: each option that picks a policy takes an instance of the policy's base class or a name
registered here (``register``), so that a new rule is one class and one entry, with no edit to the optimizer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> factories of one kind of policy (all subclasses of ``base``)."""

    def __init__(self, option: str, base: type) -> None:
        self.option = option
        self.base = base
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: ``@REGISTRY.register("name")`` on a class or a factory taking the option group's settings."""

        def add(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.option}: {name!r} is already registered")
            self._factories[name] = factory
            return factory

        return add

    def names(self) -> list[str]:
        return sorted(self._factories)

    def accepts(self, value: Any) -> bool:
        return isinstance(value, self.base) or (isinstance(value, str) and value in self._factories)

    def expected(self) -> str:
        return f"one of {self.names()} or a {self.base.__name__} instance"

    def build(self, value: Any, settings: Any) -> T:
        """The policy for an option value: an instance as it is, a name through its factory(settings)."""
        if isinstance(value, self.base):
            return cast(T, value)
        if isinstance(value, str) and value in self._factories:
            return self._factories[value](settings)
        raise ValueError(f"Invalid {self.option} value: {value!r} (expected {self.expected()})")
