"""What NNI 3.0's trial runtime reads, so that an unchanged ``import nni`` trial runs under hpo.

NNI's runtime picks its trial command channel from ``NNI_TRIAL_COMMAND_CHANNEL``; an ``import://module.Class``
value makes it load that class.  hpo names :class:`hpo.nni_channel.HpoTrialCommandChannel`, which hands
parameters and reports to hpo's own trial API (the inherited pipe, the report file on SSH, printed lines on
Kubernetes): no port, no file that NNI polls.  ``REUSE_MODE`` keeps NNI's trial logging on stdout (NNI's
``local`` mode would otherwise swap ``sys.stdout`` for its ``trial.log``, hiding printed reports and logs).

Without NNI installed, ``import nni`` finds hpo's stand-in (``hpo/nni_stub/nni``, shipped as ``lib/nni``),
which defers to a real installation further along ``sys.path`` whenever there is one.
"""
from __future__ import annotations

from pathlib import Path

import hpo

__all__ = ["NNI_CHANNEL", "NNI_STUB_DIR", "nni_environment"]

NNI_CHANNEL = "import://hpo.nni_channel.HpoTrialCommandChannel"
NNI_STUB_DIR = str(Path(hpo.__file__).resolve().parent / "nni_stub")
_PLATFORMS = {"local": "local", "remote": "remote", "kubernetes": "kubernetes"}


def nni_environment(platform: str, experiment_id: str, trial_id: str, sequence_id: int,
                    trial_dir: str) -> dict[str, str]:
    """NNI's trial environment variables for one trial of ``platform`` whose folder is ``trial_dir``."""
    return {"NNI_PLATFORM": _PLATFORMS.get(platform, platform), "NNI_EXP_ID": experiment_id,
            "NNI_TRIAL_JOB_ID": trial_id, "NNI_TRIAL_SEQ_ID": str(sequence_id), "NNI_SYS_DIR": trial_dir,
            "NNI_OUTPUT_DIR": trial_dir, "NNI_TRIAL_COMMAND_CHANNEL": NNI_CHANNEL, "REUSE_MODE": "true"}
