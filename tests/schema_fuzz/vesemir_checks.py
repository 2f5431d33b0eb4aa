"""Schemathesis checks for the vesemir API (loaded with SCHEMATHESIS_HOOKS).

`json_error_shape`: every error response (status >= 400) is JSON of the
shape {"error": {"code": str, "message": str}}: what the CLI and scripts
parse. Every response is also counted, by status, into the file named by
VESEMIR_SCHEMA_FUZZ_LOG (one status per line) so the Rust test that runs
this can check how many requests were made and that none was a 5xx.
"""
import json
import os

import schemathesis

_LOG = os.environ.get("VESEMIR_SCHEMA_FUZZ_LOG")


@schemathesis.check
def json_error_shape(ctx, response, case):
    if _LOG:
        with open(_LOG, "a") as f:
            f.write(f"{response.status_code} {case.method} {case.path}\n")
    if response.status_code < 400:
        return None
    ctype = response.headers.get("content-type", [""])
    ctype = ctype[0] if isinstance(ctype, list) else ctype
    if not ctype.startswith("application/json"):
        raise AssertionError(
            f"error {response.status_code} is {ctype!r}, not application/json: {response.text[:200]!r}"
        )
    try:
        body = json.loads(response.text)
    except ValueError as e:
        raise AssertionError(f"error {response.status_code} body is not JSON: {e}")
    err = body.get("error") if isinstance(body, dict) else None
    if not (
        isinstance(err, dict)
        and isinstance(err.get("code"), str)
        and isinstance(err.get("message"), str)
        and err["code"]
        and err["message"]
    ):
        raise AssertionError(
            f"error {response.status_code} is not {{\"error\": {{\"code\", \"message\"}}}}: {response.text[:200]!r}"
        )
    return None
