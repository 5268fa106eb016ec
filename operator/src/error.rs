//! Every way the operator fails: why a reconcile failed, which of those failures go away by
//! themselves (and are retried soon) and which wait for a change to the resource, and the label each
//! counts under in the error metric.

/// Why a reconcile failed; each variant is a label of the error metric.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("Kubernetes client configuration: {0}")]
    Config(#[from] kube::config::InferConfigError),
    #[error("{} object(s) not applied: {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Children(Vec<ChildFailure>),
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

/// What the controller does after a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// The failure may pass by itself (the API server, a refused child, a cache not listed yet):
    /// retried soon, with the resource's backoff.
    Soon,
    /// The resource as it is cannot be carried out: only a change to it helps, which the watches see.
    AfterChange,
}

impl Error {
    /// Whether retrying helps before the resource changes. Only `InvalidSpec` waits: a ChatSystem
    /// without a namespace cannot exist in a cluster, and backs off like a transient failure.
    pub fn retry(&self) -> Retry {
        match self {
            Error::InvalidSpec(_) => Retry::AfterChange,
            Error::Kube(_)
            | Error::Config(_)
            | Error::Children(_)
            | Error::MissingNamespace(_)
            | Error::ReadFile { .. }
            | Error::ParseYaml { .. }
            | Error::NotAChatSystem { .. }
            | Error::Schema { .. }
            | Error::Decode { .. }
            | Error::WriteYaml(_)
            | Error::Serve(_)
            | Error::Metrics(_)
            | Error::NotSynced(_)
            | Error::LostLease(_)
            | Error::LeaseCallTimedOut(_) => Retry::Soon,
        }
    }

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

/// A spec the schema accepted but the operator cannot carry out; reported in status, nothing applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct InvalidSpec(pub Vec<String>);

impl InvalidSpec {
    pub fn retry(&self) -> Retry {
        Retry::AfterChange
    }
}

/// A child the API server refused or could not be reached for.
#[derive(Debug)]
pub struct ChildFailure {
    pub kind: &'static str,
    pub name: String,
    pub error: kube::Error,
}

impl std::fmt::Display for ChildFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.error {
            // The API server's message names the object and the field.
            kube::Error::Api(status) => {
                write!(f, "{} {}: {}", self.kind, self.name, status.message)
            }
            error => write!(f, "{} {}: {error}", self.kind, self.name),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
