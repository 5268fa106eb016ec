//! `render`: the manifests the operator would apply for a ChatSystem file, without a cluster.

use crate::apis::OptionalApi;
use crate::crd::ChatSystem;
use crate::error::{Error, InvalidSpec, Result};
use crate::kinds::Child;
use crate::manifests::{self, Credentials, GeneratedSecret, Inputs};
use crate::schema;
use kube::{CustomResourceExt, Resource};
use serde_json::Value;

/// Stands in for the uid a cluster would give, so every owner reference is shown.
const PLACEHOLDER_UID: &str = "00000000-0000-0000-0000-000000000000";

/// The ChatSystems of a YAML file (`-` reads standard input), one per document, each checked as
/// kube-apiserver would check it: its kind, then the CRD's schema (see [`crate::schema`]).
pub fn read(path: &str) -> Result<Vec<ChatSystem>> {
    let read_error = |source| Error::ReadFile {
        path: path.to_string(),
        source,
    };
    let text = if path == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(read_error)?
    } else {
        std::fs::read_to_string(path).map_err(read_error)?
    };
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(&text).map_err(|source| Error::ParseYaml {
            path: path.to_string(),
            source: Box::new(source),
        })?;
    let crd = serde_json::to_value(ChatSystem::crd()).expect("the CRD serialises");
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut systems = Vec::new();
    for (index, document) in documents.into_iter().enumerate() {
        if document.is_null() {
            continue;
        }
        let (api_version, kind) = (
            document["apiVersion"].as_str().unwrap_or_default(),
            document["kind"].as_str().unwrap_or_default(),
        );
        if (api_version, kind) != (&*ChatSystem::api_version(&()), &*ChatSystem::kind(&())) {
            return Err(Error::NotAChatSystem {
                path: path.to_string(),
                document: index + 1,
                found: format!("{api_version} {kind}").trim().to_string(),
            });
        }
        let problems = schema::problems(&document, schema);
        if !problems.is_empty() {
            return Err(Error::Schema {
                path: path.to_string(),
                document: index + 1,
                problems,
            });
        }
        systems.push(
            serde_json::from_value(document).map_err(|source| Error::Decode {
                path: path.to_string(),
                document: index + 1,
                source,
            })?,
        );
    }
    if systems.is_empty() {
        return Err(Error::NotAChatSystem {
            path: path.to_string(),
            document: 1,
            found: "nothing".to_string(),
        });
    }
    Ok(systems)
}

/// What `dereference` would read on a cluster where no credentials exist yet, every external Secret
/// holds its key, and KEDA and prometheus-operator are installed: the best guess with no cluster to ask.
pub fn offline_inputs(cs: &ChatSystem) -> Inputs {
    let mut inputs = Inputs {
        served: OptionalApi::ALL.into_iter().collect(),
        ..Inputs::default()
    };
    for reference in manifests::referenced_secrets(cs) {
        inputs
            .external_secret_keys
            .entry(reference.name.to_string())
            .or_default()
            .insert(reference.key.to_string());
    }
    for secret in GeneratedSecret::needed(cs) {
        inputs
            .credentials
            .insert(secret, Credentials::Generated(secret.generate()));
    }
    inputs
}

/// Every manifest as one YAML stream, written so that YAML 1.1 readers (kubectl) read back the same
/// types. The file's namespace is used, or `default`.
pub fn render(mut cs: ChatSystem) -> Result<String> {
    check_schema_rules(&cs)?;
    cs.metadata
        .namespace
        .get_or_insert_with(|| "default".to_string());
    cs.metadata
        .uid
        .get_or_insert_with(|| PLACEHOLDER_UID.to_string());
    // Everything is shown, as it is once its Jobs (a restore, the migration, a reindex) have run.
    let plan = manifests::build_settled(&cs, &offline_inputs(&cs))?;
    let mut stream = String::new();
    for mut child in plan.children {
        // A credentials Secret is created with its values and then applied for its labels: shown once.
        if let Child::Secret(secret) = &mut child
            && let Some(created) = plan
                .new_credentials
                .iter()
                .find(|c| c.metadata.name == secret.metadata.name)
        {
            secret.type_ = created.type_.clone();
            secret.string_data = created.string_data.clone();
        }
        stream.push_str("---\n");
        stream.push_str(&serde_saphyr::to_string(&child.to_json())?);
    }
    Ok(stream)
}

/// The CRD's CEL rules (`minReplicas <= maxReplicas`, an Ingress host), evaluated as the API server
/// would on create, since no API server is there to do it.
pub fn check_schema_rules(cs: &ChatSystem) -> Result<()> {
    kube::core::cel::validate_cel(cs).map_err(|errors| {
        let problems = errors.into_vec().iter().map(ToString::to_string).collect();
        Error::InvalidSpec(InvalidSpec(problems))
    })
}
