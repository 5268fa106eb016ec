//! Operator upgrades roll the systems that follow its default images one at a time. A new operator
//! version changes the default API and worker images; letting every ChatSystem move at once would
//! migrate and restart them all together, so a bounded number move while the others keep their
//! running images, and the next moves once one is Ready on the new version.

use crate::crd::{ChatSystem, Phase, VERSION};
use kube::runtime::reflector::ObjectRef;
use std::collections::HashSet;
use std::sync::Arc;

/// Systems moving to this version's default images at once.
pub const MAX_IN_FLIGHT: usize = 1;

/// Whether the system runs an image the operator chooses (the API's or the worker's left empty).
pub fn follows_defaults(cs: &ChatSystem) -> bool {
    cs.spec.api.image.is_none() || cs.spec.worker.image.is_none()
}

/// Whether the system runs, or last ran, another version's default images: deployed (it has a
/// status) and not yet on this version.
fn behind(cs: &ChatSystem) -> bool {
    follows_defaults(cs)
        && cs.status.as_ref().is_some_and(|status| {
            status.phase.is_some() && status.version.as_deref() != Some(VERSION)
        })
}

/// Whether the system moved to this version's default images and is not Ready on them yet.
fn moving(cs: &ChatSystem) -> bool {
    follows_defaults(cs)
        && cs.status.as_ref().is_some_and(|status| {
            status.version.as_deref() == Some(VERSION) && status.phase != Some(Phase::Ready)
        })
}

/// What a reconcile of `cs` may do with the default images.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Turn {
    /// Apply this version's default images (or nothing changes for it).
    Go,
    /// Keep the running images: these systems are moving now.
    Wait { moving: usize },
}

/// The systems admitted to move but whose status does not say so yet (written after their
/// apply), so that two reconciles running together cannot both take the last place.
#[derive(Default)]
pub struct Admitted(std::sync::Mutex<HashSet<ObjectRef<ChatSystem>>>);

impl Admitted {
    /// Decides `cs`'s turn among `systems` (every ChatSystem the operator sees), admitting it if it
    /// may go.
    pub fn turn(&self, cs: &ChatSystem, systems: &[Arc<ChatSystem>]) -> Turn {
        if !behind(cs) {
            return Turn::Go;
        }
        let mut admitted = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let this = ObjectRef::from_obj(cs);
        // Admitted systems leave the set once their status shows them on this version.
        admitted.retain(|admitted| {
            systems
                .iter()
                .find(|s| ObjectRef::from_obj(s.as_ref()) == *admitted)
                .is_some_and(|s| behind(s))
        });
        if admitted.contains(&this) {
            return Turn::Go;
        }
        let moving: HashSet<ObjectRef<ChatSystem>> = systems
            .iter()
            .filter(|s| moving(s))
            .map(|s| ObjectRef::from_obj(s.as_ref()))
            .chain(admitted.iter().cloned())
            .collect();
        if moving.len() < MAX_IN_FLIGHT {
            admitted.insert(this);
            Turn::Go
        } else {
            Turn::Wait {
                moving: moving.len(),
            }
        }
    }
}
