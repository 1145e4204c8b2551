//! Settling state after a daemon (re)start.
//!
//! The store says what each sandbox was doing; the driver says which VMs
//! still run. Every non-terminal row ends up either adopted by a new actor
//! (its VM is alive and in a state we can continue from) or failed with a
//! reason; every live VM without a row is shut down. Nothing is left
//! half-known: no orphan VMs, taps or disks, no row that silently vanishes.

use std::collections::HashMap;

use lelantos_core::SandboxState;
use tokio::sync::mpsc;

use super::actor;
use super::{Error, Sandboxes, parse_state, state_name};
use crate::store::{self, sandboxes::SandboxFilter};
use crate::vmm::qemu::QemuVm;
use crate::vmm::{VmBackend as _, VmState};

pub(super) async fn run(owner: &Sandboxes) -> Result<String, Error> {
    let qemu = owner.inner().qemu().clone();
    let (vms, cleaned) = qemu.recover().await?;
    let mut vms: HashMap<String, QemuVm> = vms.into_iter().map(|vm| (vm.id.clone(), vm)).collect();
    let active: Vec<String> = SandboxState::ALL
        .iter()
        .filter(|s| !s.is_terminal())
        .map(|s| s.as_str().to_owned())
        .collect();
    let rows = owner
        .with_store(|s| {
            store::sandboxes::list(
                s.conn(),
                &SandboxFilter {
                    states: active,
                    ..SandboxFilter::default()
                },
            )
        })?
        .rows;

    let (mut adopted, mut failed, mut stopped) = (0, 0, 0);
    for row in rows {
        let state = parse_state(&row.state);
        let vm = vms.remove(&row.lifecycle_id);
        // Where the sandbox can continue from, given what its VM is doing.
        let settled = match (state, vm) {
            (
                Some(
                    SandboxState::Running
                    | SandboxState::Resuming
                    | SandboxState::Pausing
                    | SandboxState::Paused,
                ),
                Some(mut vm),
            ) => {
                match (state, vm.state) {
                    (Some(SandboxState::Running | SandboxState::Resuming), VmState::Running) => {
                        Ok((SandboxState::Running, vm))
                    }
                    (Some(SandboxState::Paused | SandboxState::Pausing), VmState::Paused) => {
                        Ok((SandboxState::Paused, vm))
                    }
                    // A pause or resume was cut short: finish it.
                    (Some(SandboxState::Pausing), VmState::Running) => qemu
                        .pause(&mut vm)
                        .await
                        .map(|()| (SandboxState::Paused, vm))
                        .map_err(|e| e.to_string()),
                    (Some(SandboxState::Resuming), VmState::Paused) => qemu
                        .resume(&mut vm)
                        .await
                        .map(|()| (SandboxState::Running, vm))
                        .map_err(|e| e.to_string()),
                    (_, vm_state) => {
                        let _ = qemu.shutdown(&mut vm).await;
                        Err(format!(
                            "its VM was {vm_state:?} after the daemon restarted"
                        ))
                    }
                }
            }
            (Some(SandboxState::Stopping), vm) => {
                // A kill was in progress: finish it.
                if let Some(mut vm) = vm {
                    let _ = qemu.shutdown(&mut vm).await;
                }
                stopped += 1;
                record(
                    owner,
                    &row,
                    SandboxState::Stopped,
                    "stop finished after a daemon restart",
                )?;
                continue;
            }
            (_, Some(mut vm)) => {
                let _ = qemu.shutdown(&mut vm).await;
                Err("the daemon restarted while it was being created".to_owned())
            }
            (_, None) => Err("its VM was gone when the daemon restarted".to_owned()),
        };
        match settled {
            Ok((state, vm)) => {
                if state_name(state) != row.state {
                    record(owner, &row, state, "settled after a daemon restart")?;
                }
                let mut row = row;
                row.state = state_name(state).to_owned();
                let (tx, rx) = mpsc::channel(16);
                owner.register(&row.sandbox_id, tx);
                actor::spawn_adopted(owner.clone(), row, state, vm, rx);
                adopted += 1;
            }
            Err(reason) => {
                tracing::warn!(sandbox = %row.sandbox_id, %reason, "sandbox failed at restart");
                record(owner, &row, SandboxState::Failed, &reason)?;
                failed += 1;
            }
        }
    }
    let orphans = vms.len();
    for (id, mut vm) in vms {
        tracing::warn!(vm = %id, "shutting down a VM no sandbox owns");
        let _ = qemu.shutdown(&mut vm).await;
    }
    Ok(format!(
        "adopted {adopted} sandbox(es), failed {failed}, finished {stopped} stop(s), shut down {orphans} orphan VM(s), cleaned {cleaned} dead VM dir(s)"
    ))
}

/// Writes a settled state directly: the actor does not exist yet, and these
/// moves (e.g. Provisioning → Failed at restart) are the table's own
/// transitions or their completion.
fn record(
    owner: &Sandboxes,
    row: &store::sandboxes::SandboxRow,
    state: SandboxState,
    reason: &str,
) -> Result<(), Error> {
    owner.with_store(|s| {
        store::sandboxes::update_state(
            s.conn(),
            &row.sandbox_id,
            state_name(state),
            Some(reason),
            store::now_ms(),
        )?;
        store::events::append(
            s.conn(),
            &store::events::NewEvent {
                sandbox_id: &row.sandbox_id,
                lifecycle_id: &row.lifecycle_id,
                ts_ms: store::now_ms(),
                kind: state_name(state),
                message: reason,
            },
        )
        .map(drop)
    })
}
