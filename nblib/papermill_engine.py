"""A papermill engine that runs the kernel over IPC sockets (local files) instead of TCP.

ipykernel warns "Kernel is running over TCP without encryption" on every TCP start, and papermill shows it on
every notebook of ``make notebooks``. A kernel on the same machine needs no TCP: with IPC the warning has no
cause, and nothing else changes (real errors and warnings still show). Registered as papermill engine
``nblib`` (``papermill --engine nblib …``, see pyproject.toml and the Makefile).
"""

from __future__ import annotations

from typing import Any

from papermill.engines import NBClientEngine
from traitlets.config import Config


class IpcEngine(NBClientEngine):
    """papermill's default engine (nbclient) with the kernel on IPC transport."""

    @classmethod
    def execute_managed_notebook(cls, nb_man: Any, kernel_name: str, **kwargs: Any) -> Any:
        """Execute like :class:`papermill.engines.NBClientEngine`, the kernel manager configured for IPC.

        Args:
            nb_man: papermill's notebook execution manager.
            kernel_name: the kernel to start.
            **kwargs: papermill's other engine arguments; a ``config`` among them is kept, with the transport set.
        """
        config = Config(kwargs.pop("config", None) or {})
        config.KernelManager.transport = "ipc"
        return super().execute_managed_notebook(nb_man, kernel_name, config=config, **kwargs)
