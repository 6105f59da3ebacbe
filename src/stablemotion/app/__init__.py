"""The web app of ``stablemotion serve`` (FastAPI) and the HTML demo report.

* :mod:`.server` -- :func:`create_app` and its routes (the API is described there);
* :mod:`.middleware` -- body size and timing, the Host and Origin checks (:func:`allowed_hosts_for`);
* :mod:`.admission` -- :class:`AppLimits`, admission before upload, the decode pool, the inference
  worker, the result folders and the memory bounds (:func:`peak_memory_bound`);
* :mod:`.forms` -- the rectify form, the uploads' checks and decoding, the ``auto`` task choice;
* :mod:`.models` -- the task models, loaded on first use;
* :mod:`.server_options` -- uvicorn's connection limits; :mod:`.demo` -- the HTML demo report.

The names of :mod:`stablemotion.app.server` are available here too (``from stablemotion.app import create_app``);
they import lazily so that importing a sibling module stays light.
"""

from __future__ import annotations

from .._compat import reexporting_getattr

__getattr__ = reexporting_getattr(__name__, "server")
