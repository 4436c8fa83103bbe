"""A module that fails to import: deploying it must be refused with the error text."""

from stateroom import DurableObject

raise ImportError("this app is broken on purpose")


class Counter(DurableObject):
    pass
