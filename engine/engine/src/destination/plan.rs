//! The plan stage: the cycle's decisions (`vsync_core::cycle`) through the destination's
//! filters and transformers. Plugin calls block, so planning runs on the blocking pool, and it
//! is interruptible: the cycle's deadline and dropping the cycle's future stop it between paths.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tracing::error;
use vsync_core::cycle::{self, CycleFlags, CyclePlan};
use vsync_core::{DestInfo, DestinationMapper, DestinationSpec, OriginInfo, PathMapper};

use super::parts::{Destination, Loaded};
use crate::fault::{FatalCause, Fault};

/// Guards plugin calls while planning runs on a blocking thread: once the cycle is abandoned
/// (timeout, signal: its future is dropped, which sets `cancel`) or its deadline passes, every
/// further path fails at once instead of calling a plugin, so planning ends within one call.
struct PlanningGate<'m> {
    inner: &'m mut dyn PathMapper,
    cancel: &'m AtomicBool,
    deadline: Instant,
    stopped: bool,
}

impl PathMapper for PlanningGate<'_> {
    fn map_path(&mut self, path: &str, context: &vsync_core::PathContext) -> Result<Option<String>, vsync_core::MapError> {
        if self.stopped || self.cancel.load(Ordering::Relaxed) || Instant::now() >= self.deadline {
            self.stopped = true;
            return Err(vsync_core::MapError::Cancelled);
        }
        self.inner.map_path(path, context)
    }
}

/// Sets its flag when dropped: the cycle's future went away.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Plans a cycle of `spec` (decisions in `vsync_core::cycle`), logging paths whose mapping
/// failed.
pub(super) fn plan<'a>(
    spec: &'a DestinationSpec,
    paths: Option<&'a mut dyn PathMapper>,
    origin: &OriginInfo,
    dest: &DestInfo,
    flags: CycleFlags,
) -> Result<CyclePlan, Fault> {
    if spec.uses_plugins && paths.is_none() {
        return Err(Fault::fatal(
            FatalCause::Config,
            format!("destination `{}`: transforms or filters configured but no plugin stack given", spec.name),
        ));
    }
    let mut mapper = DestinationMapper::new(&spec.name, &spec.labels, &spec.mounts, paths);
    let planned = cycle::plan_cycle(origin, dest, spec.rules(), flags, &mut mapper).map_err(Fault::refusal)?;
    for (key, e) in &planned.mapping_failures {
        error!(destination = %spec.name, secret = %key, error = %e, "mapping the path failed; the secret is left as it is this cycle");
    }
    Ok(planned)
}

impl Destination {
    /// The plan stage: plans on the blocking pool, within the cycle's `timeout`. The loaded
    /// info travels to the planning thread and back.
    pub(super) async fn plan_stage(&self, loaded: Loaded, origin: &Arc<OriginInfo>, flags: CycleFlags) -> Result<(Loaded, CyclePlan), Fault> {
        let name = &self.spec.name;
        let cancel = Arc::new(AtomicBool::new(false));
        let _cancel_on_drop = CancelOnDrop(cancel.clone());
        let deadline = Instant::now() + self.spec.timeout;
        let (spec, mapper, shared_origin) = (self.spec.clone(), self.mapper.clone(), origin.clone());
        let (returned, result) = tokio::task::spawn_blocking(move || {
            // A previous cycle's abandoned planning holds the lock until its next path.
            let mut held = mapper.as_ref().map(|m| m.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
            let mut gate = held.as_deref_mut().map(|m| PlanningGate { inner: &mut **m, cancel: &cancel, deadline, stopped: false });
            let result = plan(&spec, gate.as_mut().map(|g| g as &mut dyn PathMapper), &shared_origin, &loaded.dest, flags);
            let stopped = gate.is_some_and(|g| g.stopped);
            (loaded, if stopped { Err(None) } else { result.map_err(Some) })
        })
        .await
        .map_err(|e| Fault::transient(format!("destination `{name}`: planning task failed: {e}")))?;
        match result {
            Ok(planned) => Ok((returned, planned)),
            Err(Some(fault)) => Err(fault),
            Err(None) => Err(Fault::transient(format!(
                "destination `{name}`: planning ran past the cycle timeout ({:?}) and was cancelled; nothing committed",
                self.spec.timeout
            ))),
        }
    }
}
