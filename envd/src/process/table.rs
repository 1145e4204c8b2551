//! The registry of processes envd started, by pid and tag.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use envd_protocol::process::__buffa::oneof::process_selector::Selector;
use envd_protocol::process::ProcessSelector;

use super::handle::ProcessHandle;

/// All processes envd knows about (running, and recently exited).
#[derive(Debug, Default)]
pub struct Table {
    procs: Mutex<HashMap<u32, Arc<ProcessHandle>>>,
}

impl Table {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Arc<ProcessHandle>>> {
        match self.procs.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Registers a new process (a reused pid replaces the old entry).
    pub fn insert(&self, handle: Arc<ProcessHandle>) {
        self.lock().insert(handle.pid, handle);
    }

    /// Forgets `handle`, unless its pid was reused by a newer process.
    pub fn remove(&self, handle: &Arc<ProcessHandle>) {
        let mut procs = self.lock();
        if procs
            .get(&handle.pid)
            .is_some_and(|h| Arc::ptr_eq(h, handle))
        {
            procs.remove(&handle.pid);
        }
    }

    /// Finds a process by selector; a tag matches running processes only.
    pub fn find(&self, selector: Option<&ProcessSelector>) -> Option<Arc<ProcessHandle>> {
        let procs = self.lock();
        match selector.and_then(|s| s.selector.as_ref())? {
            Selector::Pid(pid) => procs.get(pid).cloned(),
            Selector::Tag(tag) => procs
                .values()
                .filter(|h| h.is_running() && h.tag.as_deref() == Some(tag.as_str()))
                .max_by_key(|h| h.pid)
                .cloned(),
        }
    }

    /// Running processes, ordered by pid.
    pub fn running(&self) -> Vec<Arc<ProcessHandle>> {
        let mut v: Vec<_> = self
            .lock()
            .values()
            .filter(|h| h.is_running())
            .cloned()
            .collect();
        v.sort_by_key(|h| h.pid);
        v
    }
}

/// Text naming a selector, for error messages.
pub fn describe(selector: Option<&ProcessSelector>) -> String {
    match selector.and_then(|s| s.selector.as_ref()) {
        Some(Selector::Pid(pid)) => format!("process with pid {pid}"),
        Some(Selector::Tag(tag)) => format!("process with tag {tag}"),
        None => "process (no selector given)".to_owned(),
    }
}
