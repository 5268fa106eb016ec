use crate::manifests::InvalidSpec;

/// Why a reconcile failed; each variant is a label of the error metric.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("Kubernetes client configuration: {0}")]
    Config(#[from] kube::config::InferConfigError),
    #[error("{} object(s) not applied: {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Children(Vec<crate::controller::ChildFailure>),
    #[error("invalid spec: {0}")]
    InvalidSpec(#[from] InvalidSpec),
    #[error("ChatSystem {0} has no namespace")]
    MissingNamespace(String),
    #[error("reading {path}: {source}")]
    ReadFile {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    ParseYaml {
        path: String,
        source: Box<serde_saphyr::Error>,
    },
    #[error("{path}: document {document} is {found}, not a chatsys.io/v1alpha1 ChatSystem")]
    NotAChatSystem {
        path: String,
        document: usize,
        found: String,
    },
    #[error("{path}: document {document}: {}", .problems.join("; "))]
    Schema {
        path: String,
        document: usize,
        problems: Vec<String>,
    },
    #[error("{path}: document {document}: {source}")]
    Decode {
        path: String,
        document: usize,
        source: serde_json::Error,
    },
    #[error("serialising YAML: {0}")]
    WriteYaml(#[from] serde_saphyr::SerializeError),
    #[error("serving HTTP: {0}")]
    Serve(std::io::Error),
    #[error("installing the metrics recorder: {0}")]
    Metrics(String),
    #[error("the watch of {0} objects has not listed them yet")]
    NotSynced(&'static str),
    #[error("lost the leader lease to {0}")]
    LostLease(String),
    #[error("the API server did not answer a Lease call within {0:?}")]
    LeaseCallTimedOut(std::time::Duration),
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) | Error::Config(_) | Error::NotSynced(_) => "kube",
            Error::Children(_) => "apply",
            Error::InvalidSpec(_) => "invalid_spec",
            Error::MissingNamespace(_) => "missing_namespace",
            Error::ReadFile { .. }
            | Error::ParseYaml { .. }
            | Error::WriteYaml(_)
            | Error::NotAChatSystem { .. }
            | Error::Schema { .. }
            | Error::Decode { .. } => "io",
            Error::Serve(_) => "serve",
            Error::Metrics(_) => "metrics",
            Error::LostLease(_) | Error::LeaseCallTimedOut(_) => "leader_election",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
