//! Secrets the operator generates once and never writes again: each managed service's credentials and
//! RabbitMQ's Erlang cookie. A Secret that exists is reused as it is, whoever made it.

use super::backing::BackingService;
use super::child_name;
use crate::crd::ChatSystem;
use std::collections::BTreeMap;

/// One Secret of generated values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GeneratedSecret {
    /// A managed service's user and passwords.
    Credentials(BackingService),
    /// The shared secret of RabbitMQ's Erlang distribution (the broker and its CLI tools). Kept out of
    /// the broker's volume: the kubelet makes a volume's files group-readable, which Erlang refuses.
    ErlangCookie,
}

impl GeneratedSecret {
    /// Every generated Secret a spec needs: none for a service that is external.
    pub fn needed(cs: &ChatSystem) -> Vec<GeneratedSecret> {
        let mut needed: Vec<GeneratedSecret> = BackingService::ALL
            .into_iter()
            .filter(|s| s.external(&cs.spec).is_none() && !s.credential_keys().is_empty())
            .map(GeneratedSecret::Credentials)
            .collect();
        if BackingService::Rabbitmq.external(&cs.spec).is_none() {
            needed.push(GeneratedSecret::ErlangCookie);
        }
        needed
    }

    pub fn name(self, cs: &ChatSystem) -> String {
        match self {
            GeneratedSecret::Credentials(service) => service.credentials_secret(cs),
            GeneratedSecret::ErlangCookie => child_name(cs, "rabbitmq-cookie"),
        }
    }

    /// The backing service whose volume the values open: they live exactly as long as it.
    pub fn service(self) -> BackingService {
        match self {
            GeneratedSecret::Credentials(service) => service,
            GeneratedSecret::ErlangCookie => BackingService::Rabbitmq,
        }
    }

    pub fn keys(self) -> &'static [&'static str] {
        match self {
            GeneratedSecret::Credentials(service) => service.credential_keys(),
            GeneratedSecret::ErlangCookie => &[ERLANG_COOKIE_KEY],
        }
    }

    /// Fresh values: 32 random alphanumerics each (URL-safe, since credentials go into connection
    /// URLs), and the user name `chatsys`.
    pub fn generate(self) -> BTreeMap<String, String> {
        self.keys()
            .iter()
            .map(|key| {
                let value = if *key == "username" {
                    "chatsys".to_string()
                } else {
                    random_alphanumerics()
                };
                (key.to_string(), value)
            })
            .collect()
    }
}

/// The key of the Erlang cookie's Secret.
pub const ERLANG_COOKIE_KEY: &str = "cookie";

fn random_alphanumerics() -> String {
    use rand::RngExt;
    use rand::distr::Alphanumeric;
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}
