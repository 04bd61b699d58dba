"""Validates a FHIR R4 Bundle (JSON file given as argument) independently of Carnet.

The structure, cardinalities, required elements and primitive formats are checked by the
models of fhir.resources 6.2.2 (FHIR 4.0.1); then the rules of R4 those models leave out, which
Carnet's export promises: no empty value (null, "", [] or {}), a `system` on every coding,
`urn:uuid:` full URLs that are RFC 4122 UUIDs, each one once, references within the Bundle that
resolve, AuditEvent `action` and `outcome` in their R4 value sets. Prints each problem and exits
1 when there is one, 0 otherwise.
"""
import json
import re
import sys

import fhir.resources
from fhir.resources.bundle import Bundle

assert fhir.resources.__fhir_version__ == "4.0.1", fhir.resources.__fhir_version__

UUID = re.compile(r"^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[1-5][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
problems = []


def walk(v, path):
    if v is None or v == "" or v == [] or v == {}:
        problems.append(f"{path}: empty value")
    if isinstance(v, dict):
        for k, x in v.items():
            # Codings: in a CodeableConcept's `coding`, and AuditEvent's type and subtype.
            coded = k == "coding" or (v.get("resourceType") == "AuditEvent" and k in ("type", "subtype"))
            for c in (x if isinstance(x, list) else [x]) if coded else []:
                if isinstance(c, dict) and "system" not in c:
                    problems.append(f"{path}.{k}: a coding without a system")
            walk(x, f"{path}.{k}")
    elif isinstance(v, list):
        for i, x in enumerate(v):
            walk(x, f"{path}[{i}]")


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        data = json.load(f)
    try:
        Bundle.parse_obj(data)
    except Exception as e:  # pydantic's ValidationError, with every problem in it
        problems.append(f"fhir.resources (R4 4.0.1): {e}")
    walk(data, "Bundle")
    urls = [e.get("fullUrl") for e in data.get("entry", [])]
    for i, u in enumerate(urls):
        if not isinstance(u, str) or not UUID.match(u):
            problems.append(f"Bundle.entry[{i}].fullUrl: not a urn:uuid RFC 4122 UUID: {u!r}")
    if len(set(urls)) != len(urls):
        problems.append("Bundle.entry.fullUrl: the same full URL twice")

    def refs(v, path):
        if isinstance(v, dict):
            r = v.get("reference")
            if isinstance(r, str) and r.startswith("urn:uuid:") and r not in urls:
                problems.append(f"{path}.reference: {r} is not in the Bundle")
            for k, x in v.items():
                refs(x, f"{path}.{k}")
        elif isinstance(v, list):
            for i, x in enumerate(v):
                refs(x, f"{path}[{i}]")

    for i, e in enumerate(data.get("entry", [])):
        r = e.get("resource", {})
        at = f"Bundle.entry[{i}].resource({r.get('resourceType')})"
        if r.get("resourceType") == "DocumentReference":
            # A replaced document hidden from the holder is not in the copy: its
            # reference is named by identifier too, and not resolved here.
            refs({k: x for k, x in r.items() if k != "relatesTo"}, at)
        else:
            refs(r, at)
        if r.get("resourceType") == "AuditEvent":
            if r.get("action") not in (None, "C", "R", "U", "D", "E"):
                problems.append(f"{at}.action: {r.get('action')!r} not in audit-event-action")
            if r.get("outcome") not in (None, "0", "4", "8", "12"):
                problems.append(f"{at}.outcome: {r.get('outcome')!r} not in audit-event-outcome")
            if not any(a.get("requestor") is True for a in r.get("agent", [])):
                problems.append(f"{at}.agent: no requestor")
    for p in problems:
        print(p)
    print(f"{len(data.get('entry', []))} entries, {len(problems)} problem(s)")
    sys.exit(1 if problems else 0)


main()
