//! What both kinds of watch share: checking the directory, starting an
//! inotify watcher (via `notify`), and turning its raw events into
//! `FilesystemEvent`s with E2B's semantics.
//!
//! Mapping (the same as Go's fsnotify, which E2B's envd uses):
//!
//! | inotify                   | notify kind             | event  |
//! |---------------------------|-------------------------|--------|
//! | IN_CREATE, IN_MOVED_TO    | Create, Name(To)        | CREATE |
//! | IN_MOVED_FROM, MOVE_SELF  | Name(From)              | RENAME |
//! | IN_ATTRIB                 | Metadata                | CHMOD  |
//! | IN_MODIFY                 | Data                    | WRITE  |
//! | IN_DELETE, DELETE_SELF    | Remove                  | REMOVE |
//! | IN_OPEN, IN_CLOSE_*       | Access                  | —      |
//!
//! IN_CLOSE_WRITE is deliberately not a WRITE: an upload (create, fchown,
//! write, close) must show exactly CREATE, CHMOD, WRITE, and the SDK tests
//! count them.

use std::path::{Path, PathBuf};

use envd_protocol::filesystem::{EventType, FilesystemEvent};
use notify::event::{EventKind, ModifyKind, RenameMode};
use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};

use super::{Error, accounts, io};

/// What a watch looks at and reports.
#[derive(Debug, Clone)]
pub(super) struct WatchSpec {
    /// The resolved directory; event names are relative to it.
    pub root: PathBuf,
    /// Include subdirectories (also ones created later).
    pub recursive: bool,
    /// Attach `EntryInfo` to CREATE/WRITE/CHMOD events.
    pub include_entry: bool,
}

/// Refuses what E2B refuses: a missing path, a non-directory, and (unless
/// allowed) a network filesystem, where inotify misses remote changes.
pub(super) fn validate(root: &Path, allow_network_mounts: bool) -> Result<(), Error> {
    super::require_dir(root)?;
    if !allow_network_mounts && is_network_mount(root)? {
        return Err(Error::NetworkMount(root.to_path_buf()));
    }
    Ok(())
}

/// statfs `f_type` magics (linux/magic.h) of filesystems whose changes can
/// come from elsewhere: NFS, SMB, CIFS, SMB2, FUSE.
const NETWORK_FS_MAGICS: [i128; 5] = [0x6969, 0x517B, 0xFF53_4D42, 0xFE53_4D42, 0x6573_5546];

fn is_network_mount(path: &Path) -> Result<bool, Error> {
    let stat = nix::sys::statfs::statfs(path).map_err(|errno| io("statfs", path)(errno.into()))?;
    // f_type's width and signedness differ between libcs; the magics all
    // fit in 32 bits, so compare on the low 32.
    let magic = i128::from(stat.filesystem_type().0) & 0xFFFF_FFFF;
    Ok(NETWORK_FS_MAGICS.contains(&magic))
}

/// One delivery from the watcher thread.
pub(super) type Batch = Result<Vec<FilesystemEvent>, Error>;

/// Starts watching `spec.root`; `deliver` runs on notify's thread with each
/// translated batch (never an empty `Ok`). Dropping the returned watcher
/// closes the inotify instance and ends the thread.
pub(super) fn start(
    spec: WatchSpec,
    mut deliver: impl FnMut(Batch) + Send + 'static,
) -> Result<RecommendedWatcher, Error> {
    let root = spec.root.clone();
    let recursive = spec.recursive;
    let handler = move |res: notify::Result<notify::Event>| match res {
        Err(source) => deliver(Err(Error::Watch {
            path: spec.root.clone(),
            source,
        })),
        Ok(event) if event.need_rescan() => deliver(Err(Error::WatchOverflow(spec.root.clone()))),
        Ok(event) => {
            let events = translate(&event, &spec);
            if !events.is_empty() {
                deliver(Ok(events));
            }
        }
    };
    let watch_err = |source| Error::Watch {
        path: root.clone(),
        source,
    };
    let mut watcher = notify::recommended_watcher(handler).map_err(watch_err)?;
    let mode = if recursive {
        RecursiveMode::Recursive
    } else {
        RecursiveMode::NonRecursive
    };
    watcher.watch(&root, mode).map_err(watch_err)?;
    Ok(watcher)
}

/// The event types one notify event stands for, in E2B's order (CREATE,
/// RENAME, CHMOD, WRITE, REMOVE).
fn event_types(kind: &EventKind) -> &'static [EventType] {
    match kind {
        EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
            &[EventType::EVENT_TYPE_CREATE]
        }
        // notify also sends a paired Both after From and To; those two
        // already said everything.
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => &[],
        EventKind::Modify(ModifyKind::Name(_)) => &[EventType::EVENT_TYPE_RENAME],
        EventKind::Modify(ModifyKind::Metadata(_)) => &[EventType::EVENT_TYPE_CHMOD],
        EventKind::Modify(_) => &[EventType::EVENT_TYPE_WRITE],
        EventKind::Remove(_) => &[EventType::EVENT_TYPE_REMOVE],
        EventKind::Access(_) | EventKind::Any | EventKind::Other => &[],
    }
}

/// Translates one notify event into protocol events, one per type and path.
pub(super) fn translate(event: &notify::Event, spec: &WatchSpec) -> Vec<FilesystemEvent> {
    let types = event_types(&event.kind);
    let mut out = Vec::new();
    // Read the account files at most once per event, and only if needed.
    let mut names: Option<crate::users::Accounts> = None;
    for path in &event.paths {
        let name = match path.strip_prefix(&spec.root) {
            Ok(rel) if rel.as_os_str().is_empty() => ".".to_owned(),
            Ok(rel) => rel.display().to_string(),
            // notify builds every path from the root we gave it.
            Err(_) => path.display().to_string(),
        };
        for ty in types {
            let mut ev = FilesystemEvent {
                name: name.clone(),
                ..FilesystemEvent::default()
            };
            ev.r#type = (*ty).into();
            let wants_entry = matches!(
                ty,
                EventType::EVENT_TYPE_CREATE
                    | EventType::EVENT_TYPE_WRITE
                    | EventType::EVENT_TYPE_CHMOD
            );
            if spec.include_entry
                && wants_entry
                // Gone already (e.g. a temp file): the event still counts.
                && let Ok(entry) = crate::entry::entry_info(path, names.get_or_insert_with(accounts))
            {
                ev.entry = entry.into();
            }
            out.push(ev);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, MetadataKind, RemoveKind};

    fn spec(root: &str) -> WatchSpec {
        WatchSpec {
            root: PathBuf::from(root),
            recursive: true,
            include_entry: false,
        }
    }

    fn kinds(kind: EventKind) -> Vec<(String, EventType)> {
        let ev = notify::Event::new(kind).add_path(PathBuf::from("/w/sub/f.txt"));
        translate(&ev, &spec("/w"))
            .into_iter()
            .map(|e| (e.name, e.r#type.as_known().unwrap()))
            .collect()
    }

    #[test]
    fn upload_sequence_maps_to_create_chmod_write() {
        let seq = [
            EventKind::Create(CreateKind::File),
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
        ];
        let got: Vec<_> = seq.into_iter().flat_map(kinds).collect();
        let name = "sub/f.txt".to_owned();
        assert_eq!(
            got,
            [
                (name.clone(), EventType::EVENT_TYPE_CREATE),
                (name.clone(), EventType::EVENT_TYPE_CHMOD),
                (name, EventType::EVENT_TYPE_WRITE),
            ]
        );
    }

    #[test]
    fn renames_and_removes() {
        assert_eq!(
            kinds(EventKind::Modify(ModifyKind::Name(RenameMode::From)))[0].1,
            EventType::EVENT_TYPE_RENAME
        );
        assert_eq!(
            kinds(EventKind::Modify(ModifyKind::Name(RenameMode::To)))[0].1,
            EventType::EVENT_TYPE_CREATE
        );
        assert!(kinds(EventKind::Modify(ModifyKind::Name(RenameMode::Both))).is_empty());
        assert_eq!(
            kinds(EventKind::Remove(RemoveKind::File))[0].1,
            EventType::EVENT_TYPE_REMOVE
        );
    }
}
