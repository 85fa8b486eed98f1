"""SAMMedSlicerLib: the Qt-free logic of the SAMMed Slicer module.

client (HTTP to the worker; its errors in client_errors, its answers in client_results, arrays on the wire
in wire), server_process (run the local worker), worker_install (which Python, its environment,
installing sammed-server), worker (get a worker three ways without blocking), background (threads → main thread),
session_status (the timer's status requests), placing (place mode), placement (markups → placed prompts), volume (voxels + LPS geometry),
prompts (RAS → slice pixels), segments (write a slice as the Segment Editor would, undo),
parameters (scene-saved state), session (prompts → worker → segment), workflows (jobs, previews), batch (cohort
runs: start, progress, finished cases).
"""

import sys


def forget_modules() -> list:
    """Drop this package from ``sys.modules`` so that the module's Reload imports every submodule afresh
    (``slicer.util.reloadScriptedModule`` re-runs only the module file). Returns the names dropped."""
    names = [name for name in sys.modules if name == __name__ or name.startswith(__name__ + ".")]
    for name in names:
        del sys.modules[name]
    return names
