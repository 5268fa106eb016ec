"""Reading a CustomResourceDefinition's schema as the API server applies it, for the offline checks of
validate-manifests.sh and validate-kinds.sh."""


def refuse_unknown_fields(schema):
    """Makes every object with declared properties refuse undeclared ones, except where the schema
    keeps unknown fields (x-kubernetes-preserve-unknown-fields), as the API server's pruning does."""
    if isinstance(schema, dict):
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        for value in schema.values():
            refuse_unknown_fields(value)
    elif isinstance(schema, list):
        for value in schema:
            refuse_unknown_fields(value)
