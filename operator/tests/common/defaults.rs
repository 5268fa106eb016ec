//! The defaults kube-apiserver fills in on every write of the kinds the operator applies, and the
//! canonical form it gives quantities, so that what the operator reads back is what a cluster would
//! show it (its no-op detection compares its configuration with exactly this). Each rule names the
//! kubernetes/kubernetes source it follows.

use serde_json::{Value, json};

/// Sets `object[field]` when it is absent.
fn default(object: &mut Value, field: &str, value: Value) {
    if object.is_object() && object[field].is_null() {
        object[field] = value;
    }
}

/// The defaults of one kind, applied to a whole object.
pub fn apply(kind: &str, object: &mut Value) {
    match kind {
        // pkg/apis/apps/v1/defaults.go, `SetDefaults_Deployment`.
        "Deployment" => {
            let spec = &mut object["spec"];
            default(spec, "replicas", json!(1));
            default(spec, "revisionHistoryLimit", json!(10));
            default(spec, "progressDeadlineSeconds", json!(600));
            default(spec, "strategy", json!({ "type": "RollingUpdate" }));
            if spec["strategy"]["type"] == "RollingUpdate" {
                default(&mut spec["strategy"], "rollingUpdate", json!({}));
                let rolling = &mut spec["strategy"]["rollingUpdate"];
                default(rolling, "maxUnavailable", json!("25%"));
                default(rolling, "maxSurge", json!("25%"));
            }
            pod_template(&mut spec["template"]);
        }
        // pkg/apis/apps/v1/defaults.go, `SetDefaults_StatefulSet`: `rollingUpdate` only when the
        // strategy's type was left out.
        "StatefulSet" => {
            let spec = &mut object["spec"];
            default(spec, "replicas", json!(1));
            default(spec, "revisionHistoryLimit", json!(10));
            default(spec, "podManagementPolicy", json!("OrderedReady"));
            default(
                spec,
                "updateStrategy",
                json!({ "type": "RollingUpdate", "rollingUpdate": { "partition": 0 } }),
            );
            default(
                spec,
                "persistentVolumeClaimRetentionPolicy",
                json!({ "whenDeleted": "Retain", "whenScaled": "Retain" }),
            );
            pod_template(&mut spec["template"]);
            for claim in spec["volumeClaimTemplates"]
                .as_array_mut()
                .into_iter()
                .flatten()
            {
                claim_spec(&mut claim["spec"]);
            }
        }
        // pkg/apis/batch/v1/defaults.go, `SetDefaults_Job`: completions and parallelism become 1
        // only when both are unset.
        "Job" => {
            let spec = &mut object["spec"];
            if spec["completions"].is_null() && spec["parallelism"].is_null() {
                spec["completions"] = json!(1);
            }
            default(spec, "parallelism", json!(1));
            default(spec, "backoffLimit", json!(6));
            default(spec, "completionMode", json!("NonIndexed"));
            default(spec, "suspend", json!(false));
            default(spec, "manualSelector", json!(false));
            default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
            pod_template(&mut spec["template"]);
        }
        // pkg/apis/core/v1/defaults.go, `SetDefaults_Service` (the cluster IP is the allocator's, in
        // pkg/registry/core/service/storage/storage.go).
        "Service" => {
            let spec = &mut object["spec"];
            default(spec, "type", json!("ClusterIP"));
            default(spec, "sessionAffinity", json!("None"));
            default(spec, "internalTrafficPolicy", json!("Cluster"));
            default(spec, "clusterIP", json!("10.96.0.10"));
            for port in spec["ports"].as_array_mut().into_iter().flatten() {
                default(port, "protocol", json!("TCP"));
                if port["targetPort"].is_null() {
                    port["targetPort"] = port["port"].clone();
                }
            }
        }
        // pkg/apis/core/v1/defaults.go: a Secret's `type` is Opaque.
        "Secret" => default(object, "type", json!("Opaque")),
        // pkg/apis/core/v1/defaults.go, `SetDefaults_PersistentVolumeClaimSpec`.
        "PersistentVolumeClaim" => claim_spec(&mut object["spec"]),
        _ => {}
    }
}

/// pkg/apis/core/v1/defaults.go, `SetDefaults_PodSpec`, `SetDefaults_Container`, `SetDefaults_Probe`
/// and `SetDefaults_ResourceList` (through the quantities' canonical form).
fn pod_template(template: &mut Value) {
    let pod = &mut template["spec"];
    if !pod.is_object() {
        return;
    }
    default(pod, "restartPolicy", json!("Always"));
    default(pod, "dnsPolicy", json!("ClusterFirst"));
    default(pod, "schedulerName", json!("default-scheduler"));
    default(pod, "terminationGracePeriodSeconds", json!(30));
    default(pod, "securityContext", json!({}));
    for field in ["initContainers", "containers"] {
        for container in pod[field].as_array_mut().into_iter().flatten() {
            let image = container["image"].as_str().unwrap_or_default().to_string();
            // pkg/util/parsers/parsers.go: an untagged image is `latest`, which is pulled always.
            let latest = image.ends_with(":latest")
                || !image.rsplit('/').next().unwrap_or_default().contains(':');
            let policy = if latest && !image.contains('@') {
                "Always"
            } else {
                "IfNotPresent"
            };
            default(container, "imagePullPolicy", json!(policy));
            default(
                container,
                "terminationMessagePath",
                json!("/dev/termination-log"),
            );
            default(container, "terminationMessagePolicy", json!("File"));
            for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                let probe = &mut container[probe];
                if probe.is_object() {
                    default(probe, "timeoutSeconds", json!(1));
                    default(probe, "periodSeconds", json!(10));
                    default(probe, "successThreshold", json!(1));
                    default(probe, "failureThreshold", json!(3));
                }
            }
            for port in container["ports"].as_array_mut().into_iter().flatten() {
                default(port, "protocol", json!("TCP"));
            }
            for list in ["requests", "limits"] {
                canonical_quantities(&mut container["resources"][list]);
            }
        }
    }
}

fn claim_spec(spec: &mut Value) {
    if spec.is_object() {
        default(spec, "volumeMode", json!("Filesystem"));
        canonical_quantities(&mut spec["resources"]["requests"]);
    }
}

fn canonical_quantities(list: &mut Value) {
    for quantity in list
        .as_object_mut()
        .into_iter()
        .flat_map(|l| l.values_mut())
    {
        if let Some(canonical) = quantity.as_str().and_then(canonical) {
            *quantity = json!(canonical);
        }
    }
}

/// A quantity as the API server writes it back: staging/src/k8s.io/apimachinery/pkg/api/resource/
/// quantity.go, `MarshalJSON` through `CanonicalizeBytes`. The largest suffix that leaves an integer
/// in the same family (`0.5` → `500m`, `1000m` → `1`, `1024Mi` → `1Gi`, `1.5Gi` → `1536Mi`); a
/// binary quantity below 1024 or with a fraction is written in decimal (`0.5Ki` → `512`). Values
/// finer than a nano are rounded up. Custom resources' quantities are never rewritten.
pub fn canonical(quantity: &str) -> Option<String> {
    const BINARY: [(&str, u32); 6] = [
        ("Ki", 1),
        ("Mi", 2),
        ("Gi", 3),
        ("Ti", 4),
        ("Pi", 5),
        ("Ei", 6),
    ];
    const DECIMAL: [(&str, i32); 9] = [
        ("n", -9),
        ("u", -6),
        ("m", -3),
        ("", 0),
        ("k", 3),
        ("M", 6),
        ("G", 9),
        ("T", 12),
        ("P", 15),
    ];
    let split = quantity
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(split);
    let negative = number.starts_with('-');
    let digits = number.trim_start_matches(['+', '-']);
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    // The value as an integer count of 10^-fraction_len units.
    let mantissa: i128 = format!("{whole}{fraction}").parse().ok()?;
    let scale = fraction.len() as i32;
    if let Some((_, power)) = BINARY.iter().find(|(s, _)| *s == suffix) {
        let bytes_scaled = mantissa * 1024_i128.pow(*power);
        let unit = 10_i128.pow(scale as u32);
        if bytes_scaled % unit == 0 {
            let bytes = bytes_scaled / unit;
            if bytes.abs() >= 1024 {
                let (name, power) = BINARY
                    .iter()
                    .rev()
                    .find(|(_, p)| bytes % 1024_i128.pow(*p) == 0)
                    .expect("divisible by 1024^1 at least once above 1024, or none");
                let sign = if negative { "-" } else { "" };
                return Some(format!(
                    "{sign}{}{name}",
                    bytes.abs() / 1024_i128.pow(*power)
                ));
            }
        }
        return decimal(bytes_scaled, scale, negative, &DECIMAL);
    }
    let exponent = match suffix {
        s if s.starts_with(['e', 'E']) => s[1..].parse::<i32>().ok()?,
        s => DECIMAL.iter().find(|(name, _)| *name == s)?.1,
    };
    let value = mantissa
        * if exponent - scale >= 0 {
            10_i128.pow((exponent - scale) as u32)
        } else {
            1
        };
    let scale = if exponent - scale >= 0 {
        0
    } else {
        scale - exponent
    };
    decimal(value, scale, negative, &DECIMAL)
}

/// `value × 10^-scale` in the largest decimal suffix that leaves an integer, rounded up to a nano.
fn decimal(value: i128, scale: i32, negative: bool, suffixes: &[(&str, i32)]) -> Option<String> {
    let nanos = if scale <= 9 {
        value.checked_mul(10_i128.pow((9 - scale) as u32))?
    } else {
        let unit = 10_i128.pow((scale - 9) as u32);
        (value + unit - 1) / unit
    };
    if nanos == 0 {
        return Some("0".to_string());
    }
    let (name, exponent) = suffixes
        .iter()
        .rev()
        .find(|(_, e)| nanos % 10_i128.pow((e + 9) as u32) == 0)?;
    let sign = if negative { "-" } else { "" };
    Some(format!(
        "{sign}{}{name}",
        nanos / 10_i128.pow((exponent + 9) as u32)
    ))
}
