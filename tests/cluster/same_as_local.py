"""Comparing a cluster result with a local one: everything but what depends on the moment."""

import re

import evalbox

VARYING = ("wall_time", "cpu_time", "max_rss")  # measured, so never equal between two runs


def normalised(data):
    """An Output's dict without what differs between two runs of the same plan on one host: the
    per-sandbox uid of a root host, a non-root caller's RLIMIT_NPROC (its other processes plus
    max_pids), and the workspace's name in messages."""
    data = {k: v for k, v in data.items() if k not in VARYING}
    for key in ("stdout", "stderr"):
        if isinstance(data.get(key), str):
            data[key] = re.sub(r"/evalbox-\d+-\w+/", "/WORKSPACE/", data[key])
    if data.get("protections"):
        protections = dict(data["protections"])
        protections["identity"] = re.sub(r"\d{6,}", "N", protections["identity"])
        protections["rlimits"] = [re.sub(r"^nproc=\d+", "nproc=N", r) for r in protections["rlimits"]]
        data["protections"] = protections
    return data


def comparable(result):
    if isinstance(result, evalbox.SandboxError):
        return (type(result), re.sub(r"/evalbox-\d+-\w+/", "/WORKSPACE/", str(result)))
    return normalised(result.as_dict(protections=True))
