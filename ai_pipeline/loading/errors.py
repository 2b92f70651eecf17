"""The one exception the loader raises for problems the person loading the file can fix."""

from __future__ import annotations


class LoadError(Exception):
    """The file cannot be loaded as asked (bad batch name, missing file or columns, unreadable data).

    Raised before anything is inserted whenever the problem is visible up front; the message is one
    line meant for the person running the load.
    """
