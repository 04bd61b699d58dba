#!/usr/bin/env bash
# Installs the independent FHIR R4 validator the tests use (tests/fhir/validate.py): the
# Python package fhir.resources 6.2.2, whose models are FHIR 4.0.1 (R4), with pydantic 1, in a
# virtual environment (default ~/.cache/carnet-fhir-venv, or $CARNET_FHIR_VENV). Idempotent:
# quick and silent when it is there already. Prints the environment's python on success.
set -euo pipefail
venv="${CARNET_FHIR_VENV:-$HOME/.cache/carnet-fhir-venv}"
check() { "$venv/bin/python" -c 'import fhir.resources as f; assert f.__fhir_version__ == "4.0.1"' 2>/dev/null; }
if ! check; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check 'fhir.resources==6.2.2' 'pydantic>=1.10,<2' >&2
  check
fi
echo "$venv/bin/python"
