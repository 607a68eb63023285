"""``RunClient().create(content=op)``: start an operation as an hpo experiment, as ``hpo run`` would."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from hpo.polyaxon.compile import Compiled, compile_operation
from hpo.polyaxon.errors import PolyaxonError
from hpo.polyaxon.loader import load_operation, operation_dict
from hpo.polyaxon.operation import V1Operation

__all__ = ["RunClient", "compile_source"]


def compile_source(files: list[str] = (), python_module: str | None = None, params: dict[str, str] | None = None,
                   project: str | None = None, cli: dict[str, Any] | None = None,
                   config: dict[str, Any] | None = None) -> Compiled:
    """Load (``-f`` files in patch order, or ``-pm``; ``cli``: what the command line's matrix and operation options
    set), bind the ``-P`` params and compile onto ``config`` (hpo config keys such as the training service);
    PolyaxonError on any problem, before anything is started."""
    op, base, where = load_operation(files, python_module, cli)
    return compile_operation(op, base=base, where=where, params=params, project=project, config=config)


class RunClient:
    """Polyaxon's client, here: ``owner``/``project`` name the hpo project; nothing is remote."""

    def __init__(self, owner: str | None = None, project: str | None = None, **_: Any) -> None:
        self.owner, self.project = owner, project

    def create(self, name: str | None = None, description: str | None = None, tags: list[str] | None = None,
               content: V1Operation | dict[str, Any] | str | None = None, code_directory: str | Path | None = None,
               config: dict[str, Any] | None = None, **_: Any) -> Any:
        """Start ``content`` (a V1Operation or V1Component, its dict, or a polyaxonfile path) in the background
        of this process and return its :class:`hpo.client.Experiment` handle.  ``config``: hpo config keys the
        run does not set itself, e.g. ``{"training_service": {"platform": "kubernetes", ...}}``."""
        from hpo.client import Experiment
        from hpo.experiment import Experiment as _Experiment
        from hpo.polyaxon.component import V1Component

        base = Path(code_directory or Path.cwd()).resolve()
        if isinstance(content, (str, Path)):
            op, base, where = load_operation([content])
        elif isinstance(content, (V1Operation, V1Component, dict)):
            where = "content"
            op = V1Operation.read(operation_dict(content, where, base), where)
        else:
            raise PolyaxonError(f"RunClient.create: content: got {type(content).__name__}, expected a V1Operation, "
                                "V1Component, dict or polyaxonfile path")
        if name:
            op.name = name
        if description:
            op.description = description
        if tags:
            op.tags = list(tags)
        compiled = compile_operation(op, base=base, where=where, project=self.project, config=config)
        for line in compiled.warnings:
            warnings.warn(line, stacklevel=2)
        handle = _Experiment(config=compiled.config)
        handle.start(port=0)
        return Experiment(handle.id, _handle=handle)
