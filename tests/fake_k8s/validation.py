"""Admission validation answering 422 Invalid like the apiserver (the subset a trial runner hits).

Contract: ``validate(resource, obj)`` raises ``ApiError(422, "Invalid")`` whose
``details.causes`` lists ``{"reason": "FieldValueInvalid"|..., "message", "field"}``.
"""
from __future__ import annotations

import re
from typing import Any

from .store import RESOURCES, ApiError

_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_LABEL_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
CONFIGMAP_MAX_BYTES = 1024 * 1024


def _cause(field: str, message: str, reason: str = "FieldValueInvalid") -> dict[str, str]:
    return {"reason": reason, "message": message, "field": field}


def _check_name(name: str, field: str, dns1035: bool = False) -> list[dict]:
    if dns1035:
        if len(name) > 63 or not _LABEL_1035.fullmatch(name):
            return [_cause(field, f'Invalid value: "{name}": a DNS-1035 label must consist of lower '
                           "case alphanumeric characters or '-', start with an alphabetic character, "
                           "and end with an alphanumeric character")]
        return []
    if len(name) > 253 or not _SUBDOMAIN.fullmatch(name):
        return [_cause(field, f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist '
                       "of lower case alphanumeric characters, '-' or '.', and must start and end "
                       "with an alphanumeric character")]
    return []


def _check_labels(labels: Any, field: str) -> list[dict]:
    causes: list[dict] = []
    if labels is None:
        return causes
    if not isinstance(labels, dict):
        return [_cause(field, "Invalid value: must be a map of strings", "FieldValueTypeInvalid")]
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        if (prefix and (len(prefix) > 253 or not _SUBDOMAIN.fullmatch(prefix))) or \
                len(name) > 63 or not _QUALIFIED_NAME.fullmatch(name):
            causes.append(_cause(f"{field}", f'Invalid value: "{key}": name part must consist of '
                                 "alphanumeric characters, '-', '_' or '.'"))
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
            causes.append(_cause(f"{field}", f'Invalid value: "{value}": a valid label must be an '
                                 "empty string or consist of alphanumeric characters, '-', '_' or "
                                 "'.', and must start and end with an alphanumeric character"))
    return causes


def _check_pod_spec(spec: Any, field: str) -> list[dict]:
    if not isinstance(spec, dict):
        return [_cause(field, "Required value", "FieldValueRequired")]
    causes: list[dict] = []
    containers = spec.get("containers")
    if not containers:
        causes.append(_cause(f"{field}.containers", "Required value", "FieldValueRequired"))
    names: set[str] = set()
    for kind in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(kind) or []):
            cname = c.get("name") if isinstance(c, dict) else None
            if not cname:
                causes.append(_cause(f"{field}.{kind}[{i}].name", "Required value",
                                     "FieldValueRequired"))
            elif not _LABEL_1123.fullmatch(cname) or len(cname) > 63:
                causes.append(_cause(f"{field}.{kind}[{i}].name", f'Invalid value: "{cname}"'))
            elif cname in names:
                causes.append(_cause(f"{field}.{kind}[{i}].name", f'Duplicate value: "{cname}"',
                                     "FieldValueDuplicate"))
            else:
                names.add(cname)
            if isinstance(c, dict) and not c.get("image"):
                causes.append(_cause(f"{field}.{kind}[{i}].image", "Required value",
                                     "FieldValueRequired"))
    policy = spec.get("restartPolicy", "Always")
    if policy not in ("Always", "OnFailure", "Never"):
        causes.append(_cause(f"{field}.restartPolicy", f'Unsupported value: "{policy}"',
                             "FieldValueNotSupported"))
    return causes


def _check_job(obj: dict) -> list[dict]:
    spec = obj.get("spec") or {}
    causes: list[dict] = []
    template = spec.get("template") or {}
    tspec = template.get("spec")
    causes += _check_labels((template.get("metadata") or {}).get("labels"),
                            "spec.template.metadata.labels")
    causes += _check_pod_spec(tspec, "spec.template.spec")
    policy = (tspec or {}).get("restartPolicy", "Always")
    if policy not in ("OnFailure", "Never"):
        causes.append(_cause("spec.template.spec.restartPolicy",
                             f'Unsupported value: "{policy}": supported values: "OnFailure", "Never"',
                             "FieldValueNotSupported"))
    if spec.get("podFailurePolicy") and policy != "Never":
        causes.append(_cause("spec.template.spec.restartPolicy",
                             'Invalid value: "%s": only "Never" is supported when podFailurePolicy '
                             "is specified" % policy))
    for key in ("parallelism", "completions", "backoffLimit", "activeDeadlineSeconds",
                "ttlSecondsAfterFinished"):
        value = spec.get(key)
        if value is not None and (not isinstance(value, int) or value < 0 or
                                  (key == "activeDeadlineSeconds" and value == 0)):
            causes.append(_cause(f"spec.{key}", f"Invalid value: {value}: must be greater than or "
                                 "equal to 0"))
    mode = spec.get("completionMode", "NonIndexed")
    if mode not in ("NonIndexed", "Indexed"):
        causes.append(_cause("spec.completionMode", f'Unsupported value: "{mode}"',
                             "FieldValueNotSupported"))
    if mode == "Indexed" and spec.get("completions") is None:
        causes.append(_cause("spec.completions", "Required value: when completionMode is Indexed",
                             "FieldValueRequired"))
    for i, rule in enumerate((spec.get("podFailurePolicy") or {}).get("rules") or []):
        if rule.get("action") not in ("FailJob", "Ignore", "Count", "FailIndex"):
            causes.append(_cause(f"spec.podFailurePolicy.rules[{i}].action",
                                 f'Unsupported value: "{rule.get("action")}"',
                                 "FieldValueNotSupported"))
    return causes


def validate(resource: str, obj: dict[str, Any]) -> None:
    """Raise 422 Invalid when ``obj`` would be rejected by a real apiserver (subset)."""
    if not isinstance(obj, dict):
        raise ApiError(400, "BadRequest", "the object must be a JSON object")
    meta = obj.get("metadata") or {}
    name = meta.get("name") or ""
    causes: list[dict] = []
    if not name:
        causes.append(_cause("metadata.name", "Required value: name or generateName is required",
                             "FieldValueRequired"))
    else:
        causes += _check_name(name, "metadata.name", dns1035=resource == "services")
    causes += _check_labels(meta.get("labels"), "metadata.labels")
    if resource == "pods":
        causes += _check_pod_spec(obj.get("spec"), "spec")
    elif resource == "jobs":
        causes += _check_job(obj)
    elif resource == "configmaps":
        size = sum(len(k) + len(v) for part in ("data", "binaryData")
                   for k, v in (obj.get(part) or {}).items())
        if size > CONFIGMAP_MAX_BYTES:
            causes.append(_cause("[]", "Too long: must have at most 1048576 bytes",
                                 "FieldValueTooLong"))
    if causes:
        res = RESOURCES[resource]
        kind = res.kind
        details = {"name": name, "kind": kind, "causes": causes}
        if res.group:
            details["group"] = res.group
        summary = ", ".join(f"{c['field']}: {c['message']}" for c in causes)
        qualified = f"{kind}.{res.group}" if res.group else kind
        raise ApiError(422, "Invalid", f'{qualified} "{name}" is invalid: {summary}', details)
