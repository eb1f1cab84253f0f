"""The run store: config, every request, every response and every verdict of a run.

One interface (:class:`RunStore`), two backends: SQLite in WAL mode, the embedded
default, one file per run directory; and PostgreSQL (``--store postgresql://…``, the
``[postgres]`` extra), many runs in one database, for several processes on several
hosts. Each completed response or verdict is committed on its own as soon as it arrives,
so a SIGKILL loses at most the requests in flight. Processes working on the same run
claim each sample with a lease before sending it (:meth:`RunStore.claim`), so a sample
is sent by one of them only. ``mmsafe store copy`` moves a run between the two.
"""

from mmsafe.store.base import Claim, RunStore, StoreError
from mmsafe.store.locate import has_store
from mmsafe.store.sqlite import SQLiteRunStore, open_store

__all__ = ["Claim", "RunStore", "SQLiteRunStore", "StoreError", "has_store", "open_store"]
