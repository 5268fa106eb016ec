//! The kinds of object a ChatSystem owns, each declared once: its Kubernetes type, where it stands in
//! the apply order, and what sets it apart (the optional API that serves it, whether it outlives the
//! need for it, whether it scales a workload). Everything per kind (the watches and caches, the typed
//! [`Child`], the apply, orphan deletion) is derived from that one line.

use crate::apis::{
    Backup, MariaDB, OpenSearchCluster, OptionalApi, PodMonitor, PrometheusRule, RabbitmqCluster,
    ScaledObject, Served, ServiceMonitor, TriggerAuthentication,
};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::core::ApiResource;
use serde_json::Value;

/// What sets one kind apart from the others.
struct Traits {
    /// The optional API that serves it; `None` for Kubernetes' own kinds.
    optional_api: Option<OptionalApi>,
    /// Whether an object the resource no longer needs is kept rather than deleted.
    kept_when_orphaned: bool,
    /// Whether its objects set a workload's replica count.
    autoscaler: bool,
}

const KUBERNETES: Traits = Traits {
    optional_api: None,
    kept_when_orphaned: false,
    autoscaler: false,
};
const KEDA: Traits = Traits {
    optional_api: Some(OptionalApi::Keda),
    ..KUBERNETES
};
const PROMETHEUS_OPERATOR: Traits = Traits {
    optional_api: Some(OptionalApi::PrometheusOperator),
    ..KUBERNETES
};
/// A backing service another operator runs holds the data: the operator never deletes one it no
/// longer needs (a provider cannot change, so only a deleted ChatSystem lets it go, through the
/// garbage collector).
const fn holding_data(api: OptionalApi) -> Traits {
    Traits {
        optional_api: Some(api),
        kept_when_orphaned: true,
        ..KUBERNETES
    }
}

/// Declares every owned kind, named as its type is: [`ChildKind`] with its variants in the order
/// given, and [`Child`], which holds an object of any of them.
macro_rules! owned_kinds {
    ($(#[$doc:meta])* $($kind:ident: $traits:expr,)+) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum ChildKind {
            $($kind,)+
        }

        impl ChildKind {
            pub const ALL: [ChildKind; [$(stringify!($kind)),+].len()] = [$(ChildKind::$kind),+];

            /// The Kubernetes kind, as `kubectl` shows it.
            pub fn name(self) -> &'static str {
                match self {
                    $(ChildKind::$kind => stringify!($kind),)+
                }
            }

            pub fn api_resource(self) -> ApiResource {
                match self {
                    $(ChildKind::$kind => ApiResource::erase::<$kind>(&()),)+
                }
            }

            fn traits(self) -> Traits {
                match self {
                    $(ChildKind::$kind => $traits,)+
                }
            }
        }

        /// One object a ChatSystem owns, typed as Kubernetes (or the project that adds the kind)
        /// defines it.
        #[derive(Clone, Debug, PartialEq)]
        #[expect(
            clippy::large_enum_variant,
            reason = "a plan holds a few dozen, most of them of the large kinds: boxing would save little"
        )]
        pub enum Child {
            $($kind($kind),)+
        }

        impl Child {
            pub fn kind(&self) -> ChildKind {
                match self {
                    $(Child::$kind(_) => ChildKind::$kind,)+
                }
            }

            pub fn meta(&self) -> &ObjectMeta {
                match self {
                    $(Child::$kind(object) => object.meta(),)+
                }
            }

            /// The object as JSON, with its `apiVersion` and `kind`: what the apply sends and
            /// `render` shows.
            pub fn to_json(&self) -> Value {
                let json = match self {
                    $(Child::$kind(object) => serde_json::to_value(object),)+
                };
                json.expect("a Kubernetes object serialises")
            }
        }
    };
}

owned_kinds! {
    /// Every kind of object the operator creates, in the order it applies them: the NetworkPolicies
    /// before the databases they guard, the databases (its own or another operator's) before the
    /// migration that waits for them, a TriggerAuthentication before the ScaledObject that reads it.
    // Credentials are kept: the volume they unlock is kept too, so turning a service back to managed
    // finds both again.
    Secret: Traits { kept_when_orphaned: true, ..KUBERNETES },
    ConfigMap: KUBERNETES,
    // The backups' claim outlives the need for it, and the ChatSystem: a new one starts from it.
    PersistentVolumeClaim: Traits { kept_when_orphaned: true, ..KUBERNETES },
    NetworkPolicy: KUBERNETES,
    Service: KUBERNETES,
    StatefulSet: KUBERNETES,
    MariaDB: holding_data(OptionalApi::MariadbOperator),
    Backup: Traits { optional_api: Some(OptionalApi::MariadbOperator), ..KUBERNETES },
    RabbitmqCluster: holding_data(OptionalApi::RabbitmqClusterOperator),
    OpenSearchCluster: holding_data(OptionalApi::OpensearchOperator),
    Job: KUBERNETES,
    CronJob: KUBERNETES,
    Deployment: KUBERNETES,
    HorizontalPodAutoscaler: Traits { autoscaler: true, ..KUBERNETES },
    TriggerAuthentication: KEDA,
    ScaledObject: Traits { autoscaler: true, ..KEDA },
    PodDisruptionBudget: KUBERNETES,
    Ingress: KUBERNETES,
    ServiceMonitor: PROMETHEUS_OPERATOR,
    PodMonitor: PROMETHEUS_OPERATOR,
    PrometheusRule: PROMETHEUS_OPERATOR,
}

impl ChildKind {
    /// The optional API that serves this kind; `None` for Kubernetes' own kinds.
    pub fn optional_api(self) -> Option<OptionalApi> {
        self.traits().optional_api
    }

    /// Whether the cluster serves this kind.
    pub fn is_served(self, served: &Served) -> bool {
        self.optional_api().is_none_or(|api| served.contains(&api))
    }

    /// Whether an object of this kind that the resource no longer needs is deleted.
    pub fn deleted_when_orphaned(self) -> bool {
        !self.traits().kept_when_orphaned
    }

    /// Whether objects of this kind set a workload's replica count.
    pub fn is_autoscaler(self) -> bool {
        self.traits().autoscaler
    }
}

impl Child {
    pub fn name(&self) -> &str {
        self.meta().name.as_deref().unwrap_or_default()
    }
}
