//! switchyard's control plane: turns cluster state into dataplane configuration.
//!
//! - [`ClusterState::load_dir`] reads a directory of Kubernetes manifests (NADs, VMIs,
//!   NNCPs, Nodes) into an indexed model, collecting what is wrong as [`Problem`]s.
//! - [`plan()`] translates that state into the [`Config`] one node gets, plus what it
//!   skipped and why. docs/cluster-state.md states every mapping rule.
//! - [`runtime::Runtime`] runs the switch and applies a configuration as a diff
//!   ([`reconcile`]); [`controller::Controller`] watches a state directory and reconciles on
//!   every change, keeping last good versions of bad objects ([`lastgood`]); [`ctl`] is the
//!   control socket; [`health`] serves `/metrics` ([`metrics`]), `/healthz` and `/readyz`.
//! - [`api_source`] takes the same objects from the Kubernetes API (`run --kube`) and posts
//!   the problems found as Events on the objects they concern.

#![forbid(unsafe_code)]

pub mod api_source;
pub mod cni;
pub mod cni_subject;
pub mod controller;
pub mod ctl;
pub mod delta;
pub mod health;
pub mod k8s;
pub mod lastgood;
pub mod metrics;
pub mod nad;
pub mod overlay;
pub mod phases;
pub mod plan;
pub mod policy;
pub mod reconcile;
pub mod runtime;

pub use k8s::ClusterState;
pub use plan::{plan, Plan, PlanOptions};
pub use switchyard_dataplane::config::Config;

use serde::Serialize;
use std::fmt;

/// Names one Kubernetes object: kind, namespace (for namespaced kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjRef {
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjRef {
    pub fn new(kind: &str, namespace: Option<&str>, name: &str) -> ObjRef {
        ObjRef { kind: kind.into(), namespace: namespace.map(Into::into), name: name.into() }
    }
}

impl fmt::Display for ObjRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind, ns, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// Something wrong in the input: the file, the object (when one was identified), the field
/// (when one is to blame) and what is wrong. The object it names was skipped (or, for
/// conflicts between objects, the part of it that conflicts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<ObjRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

impl Problem {
    pub fn file(file: &str, message: impl Into<String>) -> Problem {
        Problem { file: file.into(), object: None, field: None, message: message.into() }
    }

    pub fn object(src: &k8s::Source, object: &ObjRef, field: &str, message: &str) -> Problem {
        Problem {
            file: src.file.to_string(),
            object: Some(object.clone()),
            field: (!field.is_empty()).then(|| field.to_string()),
            message: message.into(),
        }
    }

    pub fn duplicate(src: &k8s::Source, object: &ObjRef, first: &k8s::Source) -> Problem {
        Problem::object(
            src,
            object,
            "metadata.name",
            &format!("defined twice; the first one (in {}, document {}) is used", first.file, first.doc + 1),
        )
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(o) = &self.object {
            write!(f, ": {o}")?;
        }
        if let Some(fl) = &self.field {
            write!(f, ": {fl}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Something deliberately not turned into a switch port (or bridge), and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub object: ObjRef,
    /// The part of the object: `interface eth1`, `bridge br1`, ... (empty: the whole object).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub item: String,
    pub reason: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.object)?;
        if !self.item.is_empty() {
            write!(f, " {}", self.item)?;
        }
        write!(f, ": {}", self.reason)
    }
}
