//! Which namespaces the operator watches: the whole cluster, or a list (a namespace-scoped install,
//! whose Roles grant nothing elsewhere). A list is watched one namespace at a time, and the watches
//! are merged into one stream that a single cache (a reflector) reads as if it were one watch.

use futures::stream::{BoxStream, StreamExt};
use kube::api::Api;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

/// The namespaces watched; empty means every namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    namespaces: Vec<String>,
}

impl Scope {
    /// From `CHATSYS_WATCH_NAMESPACES`: names separated by commas; empty for the whole cluster.
    pub fn parse(list: &str) -> Scope {
        let mut namespaces: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .collect();
        namespaces.sort();
        namespaces.dedup();
        Scope { namespaces }
    }

    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// One watch over the scope: the cluster-wide one, or one per namespace merged.
    pub fn watch<K>(
        &self,
        api: impl Fn(Option<&str>) -> Api<K>,
        config: watcher::Config,
    ) -> BoxStream<'static, watcher::Result<Event<K>>>
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        if self.namespaces.is_empty() {
            return watcher(api(None), config).boxed();
        }
        let tagged = self.namespaces.iter().map(|namespace| {
            let namespace = namespace.clone();
            watcher(api(Some(&namespace)), config.clone())
                .map(move |event| (namespace.clone(), event))
                .boxed()
        });
        let mut merge = Merge::new(self.namespaces.iter().cloned());
        let start = futures::stream::iter([Ok(Event::Init)]);
        start
            .chain(
                futures::stream::select_all(tagged).flat_map(move |(namespace, event)| {
                    let events: Vec<watcher::Result<Event<K>>> = match event {
                        Ok(event) => merge.on(&namespace, event).into_iter().map(Ok).collect(),
                        Err(error) => vec![Err(error)],
                    };
                    futures::stream::iter(events)
                }),
            )
            .boxed()
    }
}

/// Turns the events of one watch per namespace into those of a single watch: one `Init` (sent
/// first by [`Scope::watch`]), the first listing of every namespace, one `InitDone` once all have
/// listed (changes arriving meanwhile wait for it), and afterwards a namespace's re-listing as the
/// changes it brings (what is listed is applied, what is no longer there is deleted), so a re-list of
/// one namespace never empties the others from the cache.
pub struct Merge<K> {
    /// Namespaces whose first listing has not ended.
    first_listing: BTreeSet<String>,
    /// Changes from namespaces already listed, held until every namespace has.
    held: Vec<Event<K>>,
    /// What each namespace holds, by name.
    known: BTreeMap<String, BTreeMap<String, K>>,
    /// A later listing of a namespace, as it arrives.
    relisting: BTreeMap<String, BTreeMap<String, K>>,
}

impl<K: Resource + Clone> Merge<K> {
    pub fn new(namespaces: impl IntoIterator<Item = String>) -> Self {
        Merge {
            first_listing: namespaces.into_iter().collect(),
            held: Vec::new(),
            known: BTreeMap::new(),
            relisting: BTreeMap::new(),
        }
    }

    /// What one namespace's event becomes in the merged watch.
    pub fn on(&mut self, namespace: &str, event: Event<K>) -> Vec<Event<K>> {
        let listing_first = self.first_listing.contains(namespace);
        let known = self.known.entry(namespace.to_string()).or_default();
        match event {
            Event::Init if listing_first => Vec::new(),
            Event::Init => {
                self.relisting
                    .insert(namespace.to_string(), BTreeMap::new());
                Vec::new()
            }
            Event::InitApply(object) if listing_first => {
                known.insert(object.name_any(), object.clone());
                vec![Event::InitApply(object)]
            }
            Event::InitApply(object) => {
                self.relisting
                    .entry(namespace.to_string())
                    .or_default()
                    .insert(object.name_any(), object);
                Vec::new()
            }
            Event::InitDone if listing_first => {
                self.first_listing.remove(namespace);
                if self.first_listing.is_empty() {
                    let mut events = vec![Event::InitDone];
                    events.append(&mut self.held);
                    events
                } else {
                    Vec::new()
                }
            }
            Event::InitDone => {
                let listed = self.relisting.remove(namespace).unwrap_or_default();
                let mut events: Vec<Event<K>> = known
                    .iter()
                    .filter(|(name, _)| !listed.contains_key(*name))
                    .map(|(_, gone)| Event::Delete(gone.clone()))
                    .collect();
                events.extend(listed.values().cloned().map(Event::Apply));
                *known = listed;
                self.release(events)
            }
            Event::Apply(object) => {
                known.insert(object.name_any(), object.clone());
                self.release(vec![Event::Apply(object)])
            }
            Event::Delete(object) => {
                known.remove(&object.name_any());
                self.release(vec![Event::Delete(object)])
            }
        }
    }

    /// Changes pass once every namespace has listed, and wait until then.
    fn release(&mut self, events: Vec<Event<K>>) -> Vec<Event<K>> {
        if self.first_listing.is_empty() {
            events
        } else {
            self.held.extend(events);
            Vec::new()
        }
    }
}
