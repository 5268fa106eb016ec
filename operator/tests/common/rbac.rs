//! Authorization as kube-apiserver decides it for the operator's ServiceAccount, from the RBAC objects
//! the Helm chart renders (`helm template`, so what is checked is what a cluster would be given, not a
//! copy of `operator/src/rbac.rs`). Each rule names the kubernetes/kubernetes source it follows.

use http::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

/// What one request asks to do, as the API server's `RequestInfo` names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attributes {
    pub verb: &'static str,
    pub api_group: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl Attributes {
    /// The attributes of a resource request; `None` for a non-resource path (discovery, `/version`).
    ///
    /// staging/src/k8s.io/apiserver/pkg/endpoints/request/requestinfo.go, `NewRequestInfo`: the verb
    /// comes from the method (POST → create, PUT → update, PATCH → patch, also on `/status`; DELETE
    /// → delete, or deletecollection without a name; GET → get, or without a name list, or watch
    /// when `watch` is a true value: a named GET stays `get`), and
    /// `/api/v1/namespaces/{ns}/{resource}/{name}/{subresource}` or `/apis/{group}/{version}/...`
    /// give the rest. Paths with fewer parts are non-resource requests.
    pub fn of(method: &Method, path: &str, query: &BTreeMap<String, String>) -> Option<Self> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (api_group, rest) = match parts.as_slice() {
            ["api", _version, rest @ ..] => (String::new(), rest),
            ["apis", group, _version, rest @ ..] => (group.to_string(), rest),
            _ => return None,
        };
        let (namespace, rest) = match rest {
            // `/namespaces/{name}` alone is the namespace object itself.
            ["namespaces", namespace, rest @ ..] if !rest.is_empty() => {
                (Some(namespace.to_string()), rest)
            }
            rest => (None, rest),
        };
        let (resource, name, subresource) = match rest {
            [resource] => (*resource, None, None),
            [resource, name] => (*resource, Some(name.to_string()), None),
            [resource, name, subresource] => (
                *resource,
                Some(name.to_string()),
                Some(subresource.to_string()),
            ),
            _ => return None,
        };
        // `watch` is read with strconv.ParseBool: "true", "1", "t" and their capitals.
        let watch = query
            .get("watch")
            .is_some_and(|w| matches!(w.as_str(), "true" | "1" | "t" | "T" | "TRUE" | "True"));
        let verb = match (method, name.is_some()) {
            (&Method::GET, false) if watch => "watch",
            (&Method::GET, true) => "get",
            (&Method::GET, false) => "list",
            (&Method::POST, _) => "create",
            (&Method::PUT, _) => "update",
            (&Method::PATCH, _) => "patch",
            (&Method::DELETE, true) => "delete",
            (&Method::DELETE, false) => "deletecollection",
            _ => return None,
        };
        Some(Attributes {
            verb,
            api_group,
            resource: resource.to_string(),
            subresource,
            namespace,
            name,
        })
    }

    /// The same request under another verb: an apply that creates is also a `create`.
    pub fn with_verb(&self, verb: &'static str) -> Self {
        Attributes {
            verb,
            ..self.clone()
        }
    }
}

/// One rule of a ClusterRole or Role.
#[derive(Clone, Debug)]
struct PolicyRule {
    api_groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
    resource_names: Vec<String>,
}

impl PolicyRule {
    /// pkg/apis/rbac/v1/evaluation_helpers.go: `VerbMatches`, `APIGroupMatches`, `ResourceMatches`
    /// (a rule's resource is `*`, the requested `resource/subresource`, or `*/subresource`), and
    /// `ResourceNameMatches` (no names allows every name).
    fn allows(&self, request: &Attributes) -> bool {
        let any = |list: &[String], wanted: &str| list.iter().any(|v| v == "*" || v == wanted);
        let requested = match &request.subresource {
            Some(sub) => format!("{}/{sub}", request.resource),
            None => request.resource.clone(),
        };
        let resource = self.resources.iter().any(|r| {
            r == "*"
                || *r == requested
                || request
                    .subresource
                    .as_ref()
                    .is_some_and(|sub| *r == format!("*/{sub}"))
        });
        let name = self.resource_names.is_empty()
            || request
                .name
                .as_ref()
                .is_some_and(|name| self.resource_names.contains(name));
        any(&self.verbs, request.verb)
            && any(&self.api_groups, &request.api_group)
            && resource
            && name
    }
}

/// Rules that apply in one namespace, or everywhere.
#[derive(Clone, Debug)]
struct Grant {
    namespace: Option<String>,
    rules: Vec<PolicyRule>,
}

/// The operator's permissions, as bound by the chart.
#[derive(Clone, Debug)]
pub struct Authorizer {
    /// `system:serviceaccount:<namespace>:<name>`, as the API server names a ServiceAccount's user.
    user: String,
    grants: Vec<Grant>,
}

/// The namespace the chart is rendered into: the leader election tests' Lease lives there too.
pub const RELEASE_NAMESPACE: &str = "ops";

impl Authorizer {
    /// The chart with its default values, rendered once per test binary.
    pub fn chart_defaults() -> Arc<Authorizer> {
        static DEFAULTS: OnceLock<Arc<Authorizer>> = OnceLock::new();
        DEFAULTS
            .get_or_init(|| Arc::new(Authorizer::from_chart(&[])))
            .clone()
    }

    /// The chart rendered with `--set` values.
    pub fn from_chart(values: &[&str]) -> Authorizer {
        Authorizer::from_manifests(&helm_template(values))
    }

    /// The ServiceAccount's grants among a YAML stream of manifests.
    ///
    /// plugin/pkg/auth/authorizer/rbac/rbac.go, `Authorize` through
    /// pkg/registry/rbac/validation/rule.go, `VisitRulesFor` and `appliesToUser`: a
    /// ClusterRoleBinding grants its ClusterRole's rules in every namespace and at the cluster scope;
    /// a RoleBinding grants its Role's (or ClusterRole's) rules in the binding's own namespace only,
    /// to a ServiceAccount subject matched as `system:serviceaccount:<namespace>:<name>`.
    pub fn from_manifests(stream: &str) -> Authorizer {
        let documents = documents(stream);
        let of_kind = |kind: &str| {
            documents
                .iter()
                .filter(move |d| d["kind"] == kind)
                .collect::<Vec<_>>()
        };
        let account = of_kind("ServiceAccount")
            .first()
            .map(|sa| {
                sa["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .expect("the chart renders a ServiceAccount");
        let user = format!("system:serviceaccount:{RELEASE_NAMESPACE}:{account}");
        let binds_account = |binding: &Value| {
            binding["subjects"].as_array().is_some_and(|subjects| {
                subjects.iter().any(|s| {
                    s["kind"] == "ServiceAccount"
                        && s["name"] == account.as_str()
                        && s["namespace"] == RELEASE_NAMESPACE
                })
            })
        };
        let role_rules = |kind: &str, name: &Value| -> Vec<PolicyRule> {
            of_kind(kind)
                .into_iter()
                .filter(|role| role["metadata"]["name"] == *name)
                .flat_map(|role| role["rules"].as_array().cloned().unwrap_or_default())
                .map(|rule| PolicyRule {
                    api_groups: strings(&rule["apiGroups"]),
                    resources: strings(&rule["resources"]),
                    verbs: strings(&rule["verbs"]),
                    resource_names: strings(&rule["resourceNames"]),
                })
                .collect()
        };
        let mut grants = Vec::new();
        for binding in of_kind("ClusterRoleBinding")
            .into_iter()
            .filter(|b| binds_account(b))
        {
            grants.push(Grant {
                namespace: None,
                rules: role_rules("ClusterRole", &binding["roleRef"]["name"]),
            });
        }
        for binding in of_kind("RoleBinding")
            .into_iter()
            .filter(|b| binds_account(b))
        {
            let namespace = binding["metadata"]["namespace"]
                .as_str()
                .unwrap_or(RELEASE_NAMESPACE)
                .to_string();
            let kind = binding["roleRef"]["kind"].as_str().unwrap_or("Role");
            grants.push(Grant {
                namespace: Some(namespace),
                rules: role_rules(kind, &binding["roleRef"]["name"]),
            });
        }
        Authorizer { user, grants }
    }

    pub fn allows(&self, request: &Attributes) -> bool {
        self.grants.iter().any(|grant| {
            let in_scope = grant.namespace.is_none() || grant.namespace == request.namespace;
            in_scope && grant.rules.iter().any(|rule| rule.allows(request))
        })
    }

    /// The 403 a denied request gets.
    ///
    /// staging/src/k8s.io/apiserver/pkg/endpoints/handlers/responsewriters/errors.go, `Forbidden`
    /// and `forbiddenMessage`, through staging/src/k8s.io/apimachinery/pkg/api/errors/errors.go,
    /// `NewForbidden`: `<resource>.<group> "<name>" is forbidden: User "<user>" cannot <verb>
    /// resource "<resource>[/<subresource>]" in API group "<group>" in the namespace "<ns>"` (or
    /// `at the cluster scope`); without a name the quoted name is left out.
    pub fn forbidden(&self, request: &Attributes) -> (StatusCode, Value) {
        let resource = match &request.subresource {
            Some(sub) => format!("{}/{sub}", request.resource),
            None => request.resource.clone(),
        };
        let scope = match &request.namespace {
            Some(namespace) => format!("in the namespace \"{namespace}\""),
            None => "at the cluster scope".to_string(),
        };
        let reason = format!(
            "User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
            self.user, request.verb, request.api_group
        );
        let qualified = if request.api_group.is_empty() {
            request.resource.clone()
        } else {
            format!("{}.{}", request.resource, request.api_group)
        };
        let message = match &request.name {
            Some(name) => format!("{qualified} \"{name}\" is forbidden: {reason}"),
            None => format!("{qualified} is forbidden: {reason}"),
        };
        (
            StatusCode::FORBIDDEN,
            json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": "Forbidden", "code": 403,
                "details": { "name": request.name.clone().unwrap_or_default(),
                             "group": request.api_group, "kind": request.resource },
            }),
        )
    }
}

/// `helm template` of the chart, released as `chatsys-operator` into [`RELEASE_NAMESPACE`].
pub fn helm_template(values: &[&str]) -> String {
    let chart = repo_root().join("charts/chatsys-operator");
    let mut command = Command::new(helm());
    command
        .args(["template", "chatsys-operator"])
        .arg(&chart)
        .args(["--namespace", RELEASE_NAMESPACE]);
    for value in values {
        command.args(["--set", value]);
    }
    let output = command.output().unwrap_or_else(|e| {
        panic!("running helm ({e}): install it with .ci/tools.sh, or set HELM to its path")
    });
    assert!(
        output.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

/// The objects of a YAML stream.
pub fn documents(stream: &str) -> Vec<Value> {
    stream
        .split("\n---")
        .filter_map(|document| serde_saphyr::from_str::<Value>(document).ok())
        .filter(|document| document.is_object())
        .collect()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the operator is one level below the repository")
        .to_path_buf()
}

/// `$HELM`, else the one `.ci/tools.sh` installs, else `helm` on the PATH.
fn helm() -> PathBuf {
    if let Some(path) = std::env::var_os("HELM") {
        return PathBuf::from(path);
    }
    let installed = repo_root().join(".tools/bin/helm");
    if installed.exists() {
        installed
    } else {
        PathBuf::from("helm")
    }
}
