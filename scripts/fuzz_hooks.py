"""Schemathesis hooks for scripts/fuzz-api.sh (loaded through SCHEMATHESIS_HOOKS).

Every create takes an `Idempotency-Key`, and the same key with another body is answered 422
`idempotency_key_reused`, as it must be. Hypothesis draws small keys ("0", "A") again and again, so
generated creates would reuse each other's keys and the positive-data check would take those 422s for
refused valid requests. A usable key is therefore made unique per request; malformed keys (the negative
cases) are left as drawn. Retries with a key are the conformance suite's to check.
"""

import re
import uuid

import schemathesis

USABLE_KEY = re.compile(r"^[!-~]{1,255}$")


@schemathesis.hook
def map_headers(context, headers):
    if headers:
        for name in list(headers):
            value = headers[name]
            if name.lower() == "idempotency-key" and isinstance(value, str) and USABLE_KEY.match(value):
                headers[name] = f"{value[:200]}-{uuid.uuid4().hex}"
    return headers
