//! A ChatSystem checked against the CRD's structural schema as kube-apiserver checks a custom
//! resource, for `render`, which has no API server: fields the schema does not declare are refused
//! (the server's strict field validation, which `kubectl apply` asks for: staging/src/k8s.io/
//! apiextensions-apiserver/pkg/apiserver/schema/pruning/algorithm.go finds them, and the server answers
//! `strict decoding error: unknown field "spec.api.replica"`), and so are values of the wrong type,
//! outside an enum or a range (the OpenAPI validation of staging/src/k8s.io/apiextensions-apiserver/
//! pkg/apiserver/validation, whose messages read `spec.api.replicas in body must be of type integer`).
//! Patterns and CEL rules are left to `validate_cel` and the builders' own checks.

use serde_json::Value;

/// Every problem of `value` against `schema`, each naming its field's path.
pub fn problems(value: &Value, schema: &Value) -> Vec<String> {
    let mut found = Vec::new();
    check(value, schema, "", &mut found);
    found
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn check(value: &Value, schema: &Value, path: &str, found: &mut Vec<String>) {
    if value.is_null() && schema["nullable"] == true {
        return;
    }
    let int_or_string = schema["x-kubernetes-int-or-string"] == true;
    if int_or_string {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            found.push(format!("{path} in body must be of type int-or-string"));
        }
        return;
    }
    if let Some(wanted) = schema["type"].as_str() {
        let fits = match wanted {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            _ => true,
        };
        if !fits {
            found.push(format!(
                "{path} in body must be of type {wanted}: {}",
                type_name(value)
            ));
            return;
        }
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        let allowed: Vec<String> = allowed.iter().map(Value::to_string).collect();
        found.push(format!(
            "{path} in body should be one of [{}]: {value}",
            allowed.join(" ")
        ));
    }
    if let Some(number) = value.as_f64() {
        if let Some(minimum) = schema["minimum"].as_f64()
            && number < minimum
        {
            found.push(format!(
                "{path} in body should be greater than or equal to {minimum}"
            ));
        }
        if let Some(maximum) = schema["maximum"].as_f64()
            && number > maximum
        {
            found.push(format!(
                "{path} in body should be less than or equal to {maximum}"
            ));
        }
    }
    match value {
        Value::Object(fields) => {
            if schema["x-kubernetes-preserve-unknown-fields"] == true
                && schema["properties"].is_null()
            {
                return;
            }
            let properties = schema["properties"].as_object();
            let additional = &schema["additionalProperties"];
            for (field, child) in fields {
                let child_path = join(path, field);
                match properties.and_then(|p| p.get(field)) {
                    Some(child_schema) => check(child, child_schema, &child_path, found),
                    None if additional.is_object() => check(child, additional, &child_path, found),
                    None if additional == true
                        || schema["x-kubernetes-preserve-unknown-fields"] == true => {}
                    // Every object's own: ObjectMeta is checked by the server's rules, not the CRD's.
                    None if path.is_empty()
                        && matches!(field.as_str(), "apiVersion" | "kind" | "metadata") => {}
                    None => found.push(format!("unknown field \"{child_path}\"")),
                }
            }
            for required in schema["required"].as_array().into_iter().flatten() {
                if let Some(field) = required.as_str()
                    && !fields.contains_key(field)
                {
                    found.push(format!("{} in body is required", join(path, field)));
                }
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                check(item, &schema["items"], &format!("{path}[{index}]"), found);
            }
        }
        _ => {}
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}
