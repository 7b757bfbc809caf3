"""A small LRU cache of loaded models (base pipelines, customizations), per worker process; a named one counts
its hits and misses (`worker.metrics`)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

from worker import metrics

T = TypeVar("T")


class LRUCache(Generic[T]):
    def __init__(self, capacity: int, name: str | None = None):
        self.capacity, self.name = capacity, name
        self._items: OrderedDict[Hashable, T] = OrderedDict()

    def get_or_load(self, key: Hashable, load: Callable[[], T]) -> T:
        if self.name is not None:
            metrics.cache_lookup(self.name, key in self._items)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = load()
        self._items[key] = value
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return value

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)
